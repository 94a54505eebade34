//! The process's terminal, made as runc makes it: a pty from the
//! container's own `/dev/ptmx` (its devpts instance, so `tty` names a
//! `/dev/pts/N` that exists in the container), the master sent to the
//! agent over a unix socket (`SCM_RIGHTS`), the slave kept as stdio.

use std::os::fd::RawFd;

use super::sys::{check, errno};

/// `TIOCGPTPEER`: opens the slave of a master without a path lookup
/// (Linux 4.13).
const TIOCGPTPEER: libc::c_ulong = 0x5441;

/// Opens a pty in the container, sends its master on `socket` and returns
/// the slave (close-on-exec; dup it onto stdio).
pub fn open_console(socket: RawFd) -> Result<RawFd, i32> {
    // SAFETY: NUL-terminated literal; the fd is closed below or kept.
    let master = unsafe {
        libc::open(
            c"/dev/ptmx".as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if master < 0 {
        return Err(errno());
    }
    let res = (|| {
        let unlock: libc::c_int = 0;
        // SAFETY: TIOCSPTLCK reads one int.
        check(unsafe { libc::ioctl(master, libc::TIOCSPTLCK, &unlock) })?;
        // SAFETY: TIOCGPTPEER takes open flags and returns a new fd.
        let slave = unsafe {
            libc::ioctl(
                master,
                TIOCGPTPEER as _,
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        if slave < 0 {
            return Err(errno());
        }
        if let Err(e) = send_fd(socket, master) {
            // SAFETY: `slave` was just opened here.
            unsafe { libc::close(slave) };
            return Err(e);
        }
        Ok(slave)
    })();
    // SAFETY: the agent has its own copy now (or the call failed).
    unsafe { libc::close(master) };
    res
}

/// Sends `fd` on the unix socket `socket`, with one data byte.
fn send_fd(socket: RawFd, fd: RawFd) -> Result<(), i32> {
    // Room for one int of ancillary data, aligned for cmsghdr.
    #[repr(C, align(8))]
    struct Control([u8; 64]);
    let mut control = Control([0; 64]);
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = space.min(control.0.len()) as _;
    // SAFETY: `msg` has a control buffer of at least CMSG_SPACE(int) bytes,
    // so the first header and its data fit.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null() {
            return Err(libc::EINVAL);
        }
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    loop {
        // SAFETY: `msg` is fully set up above.
        let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(());
        }
        match errno() {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}
