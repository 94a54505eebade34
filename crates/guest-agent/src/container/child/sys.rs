//! Thin system-call wrappers for the child: no allocation, errno out.

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::ptr;

pub fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

pub fn check(ret: libc::c_int) -> Result<(), i32> {
    if ret < 0 { Err(errno()) } else { Ok(()) }
}

pub fn opt_ptr(s: &Option<std::ffi::CString>) -> *const libc::c_char {
    s.as_ref().map_or(ptr::null(), |s| s.as_ptr())
}

pub fn mount(
    source: *const libc::c_char,
    target: &CStr,
    fstype: *const libc::c_char,
    flags: libc::c_ulong,
    data: *const libc::c_char,
) -> Result<(), i32> {
    // SAFETY: every pointer is null or a NUL-terminated string that outlives the call.
    check(unsafe { libc::mount(source, target.as_ptr(), fstype, flags, data.cast()) })
}

/// `struct open_how` of `openat2(2)` (libc's is `non_exhaustive`).
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// Opens `path` (relative) below the directory `root` as if `root` were
/// `/`: absolute symlinks and `..` stay inside it (`RESOLVE_IN_ROOT`), and
/// `/proc` magic links are refused.
pub fn open_in_root(root: RawFd, path: &CStr, flags: libc::c_int) -> Result<Fd, i32> {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    };
    // The kernel answers EAGAIN when a rename raced with the lookup.
    for _ in 0..16 {
        // SAFETY: `path` is NUL-terminated and `how` is a valid open_how of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                root,
                path.as_ptr(),
                &how,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if fd >= 0 {
            return Ok(Fd(fd as RawFd));
        }
        match errno() {
            libc::EAGAIN | libc::EINTR => continue,
            e => return Err(e),
        }
    }
    Err(libc::EAGAIN)
}

/// A descriptor the child closes when done with it.
pub struct Fd(pub RawFd);

impl Fd {
    /// `/proc/self/fd/<n>`, in `buf`: a path that names exactly what the
    /// descriptor refers to, for calls that take no descriptor (`mount`).
    pub fn proc_path<'b>(&self, buf: &'b mut [u8; 32]) -> &'b CStr {
        const PREFIX: &[u8] = b"/proc/self/fd/";
        buf[..PREFIX.len()].copy_from_slice(PREFIX);
        let mut digits = [0u8; 10];
        let (mut n, mut len) = (self.0.unsigned_abs(), 0);
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            buf[PREFIX.len() + i] = digits[len - 1 - i];
        }
        buf[PREFIX.len() + len] = 0;
        CStr::from_bytes_until_nul(&buf[..]).unwrap_or(c"/proc/self/fd/")
    }
}

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the child owns this descriptor and closes it once.
        unsafe { libc::close(self.0) };
    }
}

/// The locked-in flags of the mount at `path` (`nosuid`, `nodev`,
/// `noexec`, the atime ones, `ro`), which a remount must repeat: in a user
/// namespace the kernel refuses to clear them, as runc knows.
pub fn mount_flags(path: &CStr) -> Result<libc::c_ulong, i32> {
    // SAFETY: statvfs fills the zeroed struct; `path` is NUL-terminated.
    // glibc takes the flags from the kernel's statfs (ST_VALID), reading
    // nothing else, so this is safe in the child.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    // The ST_* bits of f_flags are the MS_* bits for these.
    let keep = libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC
        | libc::MS_NOATIME
        | libc::MS_NODIRATIME
        | libc::MS_RELATIME;
    Ok(st.f_flag as libc::c_ulong & keep)
}

/// Bind-remounts `path` read-only, keeping its locked flags.
pub fn remount_readonly(path: &CStr, extra: libc::c_ulong) -> Result<(), i32> {
    let flags = mount_flags(path)? | extra | libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
    mount(ptr::null(), path, ptr::null(), flags, ptr::null())
}

/// Writes all of `data` to `fd`.
pub fn write_all(fd: RawFd, mut data: &[u8]) -> Result<(), i32> {
    while !data.is_empty() {
        // SAFETY: writes from a valid slice.
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n < 0 {
            match errno() {
                libc::EINTR => continue,
                e => return Err(e),
            }
        }
        data = &data[n as usize..];
    }
    Ok(())
}
