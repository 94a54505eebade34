//! The container's filesystem, built in the child: the spec's mounts below
//! the rootfs (each target resolved inside it), device nodes, links,
//! `pivot_root`; then, inside, what runc does after it (propagation,
//! read-only root, hostname, sysctls, read-only and masked paths).

use std::ffi::CStr;
use std::os::fd::RawFd;
use std::ptr;

use super::sys::{Fd, check, errno, mount, open_in_root, opt_ptr, remount_readonly, write_all};
use super::{Step, set_item};
use crate::container::plan::{ContainerPlan, DeviceNode, InRoot, MountOp, Target};

/// Opens `target` below `root`, creating what is missing (directories on
/// the way, then a directory or an empty file as `kind` says), each
/// creation in its parent as resolved inside `root`.
fn ensure_target(root: RawFd, target: &InRoot, kind: Target) -> Result<Fd, i32> {
    match open_in_root(root, target.path(), libc::O_PATH) {
        Err(libc::ENOENT) => {}
        other => return other,
    }
    let last = target.components.len().saturating_sub(1);
    for (i, c) in target.components.iter().enumerate() {
        match open_in_root(root, &c.path, libc::O_PATH) {
            Ok(_) => continue,
            Err(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let parent = open_in_root(root, &c.parent, libc::O_PATH | libc::O_DIRECTORY)?;
        let made = if i == last && kind == Target::File {
            // SAFETY: `parent` is an open directory and `name` NUL-terminated;
            // O_NOFOLLOW|O_EXCL never follows or truncates anything there.
            let fd = unsafe {
                libc::openat(
                    parent.0,
                    c.name.as_ptr(),
                    libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_WRONLY
                        | libc::O_CLOEXEC,
                    0o644,
                )
            };
            if fd < 0 {
                Err(errno())
            } else {
                // SAFETY: `fd` was just opened here.
                unsafe { libc::close(fd) };
                Ok(())
            }
        } else {
            // SAFETY: as above.
            check(unsafe { libc::mkdirat(parent.0, c.name.as_ptr(), 0o755) })
        };
        match made {
            // A dangling symlink there: the open below reports ENOENT.
            Ok(()) | Err(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    open_in_root(root, target.path(), libc::O_PATH)
}

/// Mounts `m` on its target resolved inside `root`: through
/// `/proc/self/fd/<n>` of the resolved target, so the mount lands on the
/// very directory that was checked, whatever symlinks say.
fn mount_in_root(root: RawFd, m: &MountOp) -> Result<(), (Step, i32)> {
    let mut buf = [0u8; 32];
    {
        let target = ensure_target(root, &m.target, m.kind).map_err(|e| (Step::MountTarget, e))?;
        mount(
            opt_ptr(&m.source),
            target.proc_path(&mut buf),
            opt_ptr(&m.fstype),
            m.flags,
            opt_ptr(&m.data),
        )
        .map_err(|e| (Step::Mount, e))?;
    }
    if m.propagation == 0 && !m.remount_ro {
        return Ok(());
    }
    // The same path again, now the root of the new mount.
    let mounted =
        open_in_root(root, m.target.path(), libc::O_PATH).map_err(|e| (Step::Mount, e))?;
    let path = mounted.proc_path(&mut buf);
    if m.propagation != 0 {
        mount(ptr::null(), path, ptr::null(), m.propagation, ptr::null())
            .map_err(|e| (Step::Propagation, e))?;
    }
    if m.remount_ro {
        remount_readonly(path, m.flags & !(libc::MS_REC | libc::MS_BIND))
            .map_err(|e| (Step::RemountReadonly, e))?;
    }
    Ok(())
}

/// Creates the symlink `link` -> `contents` in `link`'s parent as
/// resolved inside `root`.
fn symlink_in_root(root: RawFd, contents: &CStr, link: &InRoot) -> Result<(), i32> {
    let Some(last) = link.components.last() else {
        return Err(libc::EINVAL);
    };
    let parent = open_in_root(root, &last.parent, libc::O_PATH | libc::O_DIRECTORY)?;
    // SAFETY: both strings are NUL-terminated; `parent` is an open directory.
    match check(unsafe { libc::symlinkat(contents.as_ptr(), parent.0, last.name.as_ptr()) }) {
        Ok(()) | Err(libc::EEXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes one `linux.devices` node below `root`: `mknod` and `chown`, or
/// in a user namespace (where `mknod` is refused) a bind of the guest's
/// node, as runc does. An existing node is kept.
fn make_device(root: RawFd, d: &DeviceNode, user_ns: bool) -> Result<(), i32> {
    if user_ns {
        let mut buf = [0u8; 32];
        let target = ensure_target(root, &d.target, Target::File)?;
        return mount(
            d.guest_path.as_ptr(),
            target.proc_path(&mut buf),
            ptr::null(),
            libc::MS_BIND,
            ptr::null(),
        );
    }
    let Some(last) = d.target.components.last() else {
        return Err(libc::EINVAL);
    };
    if let Some(dir) = &d.dir {
        drop(ensure_target(root, dir, Target::Dir)?);
    }
    let parent = open_in_root(root, &last.parent, libc::O_PATH | libc::O_DIRECTORY)?;
    // SAFETY: `parent` is an open directory, `name` NUL-terminated.
    match check(unsafe { libc::mknodat(parent.0, last.name.as_ptr(), d.mode, d.dev) }) {
        Ok(()) => {}
        Err(libc::EEXIST) => return Ok(()),
        Err(e) => return Err(e),
    }
    // SAFETY: as above; the node was just made, no symlink is followed.
    check(unsafe {
        libc::fchownat(
            parent.0,
            last.name.as_ptr(),
            d.uid,
            d.gid,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })
}

/// Everything below the rootfs, then `pivot_root` into it.
pub fn setup_rootfs(plan: &ContainerPlan) -> Result<(), (Step, i32)> {
    let root = plan.rootfs.as_c_str();
    mount(
        ptr::null(),
        c"/",
        ptr::null(),
        libc::MS_REC | libc::MS_PRIVATE,
        ptr::null(),
    )
    .map_err(|e| (Step::MakePrivate, e))?;
    mount(
        root.as_ptr(),
        root,
        ptr::null(),
        libc::MS_BIND | libc::MS_REC,
        ptr::null(),
    )
    .map_err(|e| (Step::BindRootfs, e))?;
    {
        // Opened after the bind: the mounts below go into the bind mount
        // that becomes the container's `/`.
        // SAFETY: `root` is NUL-terminated; the agent made this path, so a
        // plain open is right here.
        let fd = unsafe {
            libc::open(
                root.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err((Step::BindRootfs, errno()));
        }
        let root_fd = Fd(fd);
        for (i, m) in plan.mounts.iter().enumerate() {
            set_item(i);
            mount_in_root(root_fd.0, m)?;
        }
        // Device nodes get exactly the spec's mode.
        // SAFETY: umask(2) cannot fail; the process's own umask is set last.
        unsafe { libc::umask(0) };
        for (i, d) in plan.devices.iter().enumerate() {
            set_item(i);
            make_device(root_fd.0, d, plan.user_ns.is_some()).map_err(|e| (Step::Device, e))?;
        }
        for (contents, link) in &plan.symlinks {
            symlink_in_root(root_fd.0, contents, link).map_err(|e| (Step::Symlink, e))?;
        }
    }
    pivot(root)
}

fn pivot(root: &CStr) -> Result<(), (Step, i32)> {
    // SAFETY: `root` is NUL-terminated.
    check(unsafe { libc::chdir(root.as_ptr()) }).map_err(|e| (Step::PivotRoot, e))?;
    // SAFETY: pivot_root(".", ".") with both arguments NUL-terminated
    // literals; stacks the old root under the new one.
    let pivoted = check(unsafe {
        libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int
    });
    // No chroot fallback: the agent made its root pivotable at boot
    // (`guest::make_root_pivotable`), and a chroot is escapable.
    pivoted.map_err(|e| (Step::PivotRoot, e))?;
    // SAFETY: "." is a NUL-terminated literal; detaches the old root, and
    // with it every mount of the agent's from this namespace.
    check(unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) })
        .map_err(|e| (Step::PivotRoot, e))?;
    // SAFETY: "/" is a NUL-terminated literal.
    check(unsafe { libc::chdir(c"/".as_ptr()) }).map_err(|e| (Step::PivotRoot, e))?;
    Ok(())
}

/// Writes one sysctl through the container's `/proc/sys`.
fn write_sysctl(path: &CStr, value: &CStr) -> Result<(), i32> {
    // SAFETY: `path` is NUL-terminated.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    let fd = Fd(fd);
    write_all(fd.0, value.to_bytes())
}

/// runc's `readonlyPath`: bind the path onto itself and remount it
/// read-only; a path the container lacks is skipped.
fn readonly_path(path: &CStr) -> Result<(), i32> {
    match mount(
        path.as_ptr(),
        path,
        ptr::null(),
        libc::MS_BIND | libc::MS_REC,
        ptr::null(),
    ) {
        Ok(()) => {}
        Err(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    }
    remount_readonly(path, libc::MS_REC)
}

/// runc's `maskPath`: `/dev/null` over a file, an empty read-only tmpfs
/// over a directory; a path the container lacks is skipped.
fn mask_path(path: &CStr) -> Result<(), i32> {
    match mount(
        c"/dev/null".as_ptr(),
        path,
        ptr::null(),
        libc::MS_BIND,
        ptr::null(),
    ) {
        Ok(()) | Err(libc::ENOENT) => Ok(()),
        Err(libc::ENOTDIR) => mount(
            c"tmpfs".as_ptr(),
            path,
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY,
            ptr::null(),
        ),
        Err(e) => Err(e),
    }
}

/// What runc does inside the new root, in its order: root propagation,
/// read-only root, hostname, sysctls, read-only paths, masked paths.
pub fn finalize_rootfs(plan: &ContainerPlan) -> Result<(), (Step, i32)> {
    // MS_PRIVATE is what the rootfs has already.
    if plan.rootfs_propagation & !(libc::MS_PRIVATE | libc::MS_REC) != 0 {
        mount(
            ptr::null(),
            c"/",
            ptr::null(),
            plan.rootfs_propagation,
            ptr::null(),
        )
        .map_err(|e| (Step::RootPropagation, e))?;
    }
    if plan.readonly_root {
        remount_readonly(c"/", 0).map_err(|e| (Step::ReadonlyRoot, e))?;
    }
    if let Some(h) = &plan.hostname {
        // SAFETY: `h` points to `h.len()` valid bytes.
        check(unsafe { libc::sethostname(h.as_ptr(), h.as_bytes().len()) })
            .map_err(|e| (Step::Hostname, e))?;
    }
    for (i, (path, value)) in plan.sysctls.iter().enumerate() {
        set_item(i);
        write_sysctl(path, value).map_err(|e| (Step::Sysctl, e))?;
    }
    for (i, path) in plan.readonly_paths.iter().enumerate() {
        set_item(i);
        readonly_path(path).map_err(|e| (Step::ReadonlyPath, e))?;
    }
    for (i, path) in plan.masked_paths.iter().enumerate() {
        set_item(i);
        mask_path(path).map_err(|e| (Step::MaskPath, e))?;
    }
    Ok(())
}

/// Enters a running container (exec): its namespaces (`(fd, CLONE_NEW*)`,
/// user first, mount last), then its root.
pub fn join(namespaces: &[(RawFd, libc::c_int)], root: RawFd) -> Result<(), (Step, i32)> {
    for &(fd, nstype) in namespaces {
        // SAFETY: `fd` is an open namespace fd owned by the parent.
        check(unsafe { libc::setns(fd, nstype) }).map_err(|e| (Step::JoinNamespace, e))?;
    }
    // SAFETY: `root` is an open directory fd; "." is a NUL-terminated literal.
    check(unsafe { libc::fchdir(root) }).map_err(|e| (Step::EnterRoot, e))?;
    // SAFETY: as above.
    check(unsafe { libc::chroot(c".".as_ptr()) }).map_err(|e| (Step::EnterRoot, e))?;
    Ok(())
}
