//! Tap devices by name, in this or another network namespace: the
//! `TUNSETIFF` and `TUNSETPERSIST` ioctls through rust-vmm's
//! `vmm-sys-util` (netlink cannot create a tap).
//!
//! A VM's NIC is backed by a tap that usually lives in the pod's network
//! namespace while the VMM runs in the host's (Kata's `tcfilter` model):
//! the VMM gets an open file of the tap ([`open`]), made in that
//! namespace, and never needs the namespace itself.

use std::ffi::c_int;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vmm_sys_util::ioctl::ioctl_with_val;

/// The tun driver's ioctl numbers (`linux/if_tun.h`).
mod ioctls {
    #![allow(missing_docs)]
    use std::ffi::c_int;
    vmm_sys_util::ioctl_iow_nr!(TUNSETIFF, 0x54, 202, c_int);
    vmm_sys_util::ioctl_iow_nr!(TUNSETPERSIST, 0x54, 203, c_int);
}
use ioctls::{TUNSETIFF, TUNSETPERSIST};

/// The tun/tap character device.
pub const TUN_DEVICE: &str = "/dev/net/tun";
/// Flags of every tap the SDK makes or opens: an Ethernet tap, no packet
/// info header, with the virtio-net header (what QEMU's `vnet_hdr` wants).
pub const TAP_FLAGS: c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
/// Longest interface name (`IFNAMSIZ` less the NUL).
pub const MAX_NAME_LEN: usize = 15;

/// Runs `f` on a thread that entered the network namespace `netns` (a
/// bind-mounted nsfs file or `/proc/<pid>/ns/net`); `None` runs it here.
/// Sockets and taps opened by `f` stay in that namespace.
pub fn in_netns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> io::Result<T> + Send,
) -> io::Result<T> {
    let Some(netns) = netns else {
        return f();
    };
    let ns = File::open(netns)?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                // Only this thread changes namespace; it ends right after.
                // SAFETY: setns on an open fd; it changes only this thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the netns thread panicked")))
    })
}

fn ifreq(name: &str, flags: c_int) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains(['/', ' ', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name"),
        ));
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    Ok(req)
}

fn attach(name: &str) -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(TUN_DEVICE)?;
    let req = ifreq(name, TAP_FLAGS)?;
    // SAFETY: TUNSETIFF reads and writes one ifreq, which `req` is.
    let r = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(&file, TUNSETIFF(), &req) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file.into())
}

/// Opens tap `name` in `netns` (creating it, owned by nobody and gone with
/// its last file, if it does not exist), for a VMM to read and write its
/// frames.
pub fn open(name: &str, netns: Option<&Path>) -> io::Result<OwnedFd> {
    in_netns(netns, || attach(name))
}

/// Creates tap `name` in `netns`, persistent: it stays after its file is
/// closed, until deleted (by netlink, as any link). An existing tap of
/// that name is an error ([`io::ErrorKind::AlreadyExists`]): the SDK never
/// takes over a tap it did not make.
pub fn create_persistent(name: &str, netns: Option<&Path>) -> io::Result<()> {
    in_netns(netns, || {
        // /sys shows its mounter's namespace: ask this thread's instead.
        let cname = std::ffi::CString::new(name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: a NUL-terminated name; the call only reads it.
        if unsafe { libc::if_nametoindex(cname.as_ptr()) } != 0 {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("a link named {name} exists already"),
            ));
        }
        let fd = attach(name)?;
        // SAFETY: TUNSETPERSIST takes an int by value.
        let r = unsafe { ioctl_with_val(&fd, TUNSETPERSIST(), 1) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_ioctl() {
        for bad in ["", "a-name-longer-than-15", "a/b", "a b"] {
            let e = open(bad, None).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
    }
}
