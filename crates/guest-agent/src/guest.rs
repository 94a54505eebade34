//! What the agent does for the guest as a whole: PID-1 mounts, kernel
//! modules, kernel parameters, guest details, file
//! copies. Paths are parameters so the logic is tested on temp dirs.

use std::ffi::CString;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::{Component, Path, PathBuf};

use nix::mount::{MsFlags, mount};
use vc_agent_protocol::agent as pb;

use crate::error::{Error, Result};

/// The directory of the bundled modules in the initramfs (the guest-image contract).
pub const MODULES_DIR: &str = "/lib/modules/vc";

/// The agent's `agent.*` kernel parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentParams {
    /// `agent.log=<level>`: `error`, `warn`, `info` (default), `debug`.
    pub log_level: String,
    /// `agent.channel=<name>`: the virtio-serial port name (default `agent.channel.0`).
    pub channel: String,
    /// `agent.cgroups=0`: run containers without cgroups.
    pub cgroups: bool,
}

impl Default for AgentParams {
    fn default() -> Self {
        AgentParams {
            log_level: "info".into(),
            channel: "agent.channel.0".into(),
            cgroups: true,
        }
    }
}

/// Parses `/proc/cmdline`; unknown `agent.*` keys are ignored.
pub fn parse_cmdline(cmdline: &str) -> AgentParams {
    let mut p = AgentParams::default();
    for word in cmdline.split_whitespace() {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "agent.log" => p.log_level = value.to_owned(),
            "agent.channel" => p.channel = value.to_owned(),
            "agent.cgroups" => p.cgroups = !matches!(value, "0" | "false" | "off"),
            _ => {}
        }
    }
    p
}

/// Where [`make_root_pivotable`] binds `/` on its way.
pub const ROOT_BIND: &str = "/.vc-root";

/// Makes `/` a mount that `pivot_root(2)` can leave, so containers get
/// `pivot_root` (and the agent's mounts detached from their namespace)
/// rather than a `chroot`, which a process with `CAP_SYS_CHROOT` escapes.
///
/// The initramfs is the kernel's first mount, which has no parent, and
/// `pivot_root` refuses to move such a root. So, as PID 1 before mounting
/// anything: bind `/` at [`ROOT_BIND`], move that bind over `/` and
/// `chroot` into it (what `switch_root` does, without copying): the root
/// is then a mount with a parent. Harmless when `/` already is one.
pub fn make_root_pivotable() -> Result<()> {
    let step = |operation: &'static str| {
        move |e: nix::errno::Errno| Error::Io {
            operation,
            path: ROOT_BIND.into(),
            source: e.into(),
        }
    };
    match fs::create_dir(ROOT_BIND) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(Error::io("creating", ROOT_BIND)(e)),
    }
    mount(
        Some("/"),
        ROOT_BIND,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(step("binding / at"))?;
    nix::unistd::chdir(ROOT_BIND).map_err(step("entering"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(step("moving over / the bind at"))?;
    nix::unistd::chroot(".").map_err(step("chroot into"))?;
    nix::unistd::chdir("/").map_err(step("entering / after"))?;
    // The same directory, no longer a mount point.
    let _ = fs::remove_dir(ROOT_BIND);
    Ok(())
}

/// Mounts what an init must: proc, sys, dev, dev/pts, dev/shm, run, tmp,
/// and cgroup2. Each failure is returned after trying the rest.
pub fn mount_pseudo_filesystems() -> Vec<Error> {
    let nosuid_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let table: [(&str, &str, &str, MsFlags, Option<&str>); 8] = [
        ("proc", "/proc", "proc", nosuid_noexec, None),
        ("sysfs", "/sys", "sysfs", nosuid_noexec, None),
        (
            "devtmpfs",
            "/dev",
            "devtmpfs",
            MsFlags::MS_NOSUID,
            Some("mode=0755"),
        ),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        ("shm", "/dev/shm", "tmpfs", nosuid_noexec, Some("mode=1777")),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        ),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid_noexec, None),
    ];
    let mut errors = Vec::new();
    for (source, target, fstype, flags, data) in table {
        let _ = fs::create_dir_all(target);
        if let Err(e) = mount(Some(source), target, Some(fstype), flags, data) {
            errors.push(Error::Io {
                operation: "mounting",
                path: target.into(),
                source: e.into(),
            });
        }
    }
    errors
}

/// Enables the cgroup v2 controllers the agent uses for the containers'
/// cgroups (memory, pids, cpu where present) below `root`; returns the
/// directory containers go in.
pub fn setup_cgroups(root: &Path) -> Result<PathBuf> {
    let available = fs::read_to_string(root.join("cgroup.controllers"))
        .map_err(Error::io("reading", root.join("cgroup.controllers")))?;
    let wanted: Vec<String> = ["cpu", "memory", "pids"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .map(|c| format!("+{c}"))
        .collect();
    let dir = root.join("vc");
    fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
    for (d, what) in [(root, "root"), (dir.as_path(), "vc")] {
        let path = d.join("cgroup.subtree_control");
        fs::write(&path, wanted.join(" ")).map_err(|e| Error::Io {
            operation: if what == "root" {
                "enabling controllers in"
            } else {
                "enabling controllers below"
            },
            path,
            source: e,
        })?;
    }
    Ok(dir)
}

/// Reads a `load-order` file: module file names, one a line.
pub fn parse_load_order(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

fn finit_module(path: &Path, params: &str) -> Result<()> {
    let file = fs::File::open(path).map_err(Error::io("opening module", path))?;
    let params = CString::new(params).map_err(|_| Error::InvalidRequest {
        container_id: String::new(),
        reason: "module parameters contain NUL".into(),
    })?;
    // SAFETY: finit_module(2) with an open fd and a NUL-terminated parameter string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_finit_module,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            params.as_ptr(),
            0,
        )
    };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            // Already loaded (or built in): fine.
            Some(libc::EEXIST) => {}
            // The file opened, so ENOENT is the kernel's "unknown symbol":
            // a module it needs was not loaded before it.
            Some(libc::ENOENT) => {
                return Err(Error::io(
                    "loading module (unknown symbol: a dependency is missing or loaded after it)",
                    path,
                )(e));
            }
            _ => return Err(Error::io("loading module", path)(e)),
        }
    }
    Ok(())
}

/// Loads the bundled modules in `dir` in the order of `dir/load-order`.
/// Returns how many were loaded and the failures (the agent goes on: a
/// missing driver shows up later as a clear error where it is needed).
pub fn load_modules(dir: &Path) -> (usize, Vec<Error>) {
    let order = match fs::read_to_string(dir.join("load-order")) {
        Ok(t) => parse_load_order(&t),
        Err(e) => return (0, vec![Error::io("reading", dir.join("load-order"))(e)]),
    };
    let mut errors = Vec::new();
    let mut loaded = 0;
    for name in order {
        match finit_module(&dir.join(&name), "") {
            Ok(()) => loaded += 1,
            Err(e) => errors.push(e),
        }
    }
    (loaded, errors)
}

/// Loads one bundled module by name (`CreateSandbox.kernel_modules`).
pub fn load_module_by_name(name: &str, params: &str) -> Result<()> {
    if name.contains('/') || name.is_empty() {
        return Err(Error::InvalidRequest {
            container_id: String::new(),
            reason: format!("kernel module name {name:?}"),
        });
    }
    let file = if name.ends_with(".ko") {
        name.to_owned()
    } else {
        format!("{name}.ko")
    };
    finit_module(&Path::new(MODULES_DIR).join(file), params)
}

/// The guest details the host asks for.
pub fn details(sys: &Path, req: &pb::GuestDetailsRequest) -> pb::GuestDetailsResponse {
    let mut r = pb::GuestDetailsResponse::new();
    if req.mem_block_size {
        r.mem_block_size_bytes =
            fs::read_to_string(sys.join("devices/system/memory/block_size_bytes"))
                .ok()
                .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                .unwrap_or(0);
    }
    if req.mem_hotplug_probe {
        r.support_mem_hotplug_probe = sys.join("devices/system/memory/probe").exists();
    }
    let mut a = pb::AgentDetails::new();
    a.version = env!("CARGO_PKG_VERSION").into();
    a.init_daemon = std::process::id() == 1;
    a.storage_handlers = vec![
        "9p".into(),
        "virtio-fs".into(),
        "blk".into(),
        "ephemeral".into(),
        "local".into(),
        "overlayfs".into(),
    ];
    a.supports_seccomp = true;
    r.agent_details = protobuf::MessageField::some(a);
    r
}

/// Writes a chunk of a file below `base` (the guest's `/run`).
pub fn copy_file(base: &Path, req: &pb::CopyFileRequest) -> Result<()> {
    let invalid = |reason: String| Error::InvalidRequest {
        container_id: String::new(),
        reason,
    };
    let path = Path::new(&req.path);
    let clean = path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    let rel = path
        .strip_prefix("/run")
        .ok()
        .filter(|r| clean && !r.as_os_str().is_empty());
    let Some(rel) = rel else {
        return Err(invalid(format!(
            "CopyFile path {:?} must be absolute, canonical and below /run",
            req.path
        )));
    };
    if req.offset < 0 || req.file_size < 0 {
        return Err(invalid("negative offset or size".into()));
    }
    let dest = base.join(rel);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(Error::io("creating", parent))?;
        if req.dir_mode != 0 {
            let _ = fs::set_permissions(parent, fs::Permissions::from_mode(req.dir_mode & 0o7777));
        }
    }
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&dest)
        .map_err(Error::io("opening", &dest))?;
    f.seek(SeekFrom::Start(req.offset as u64))
        .map_err(Error::io("seeking", &dest))?;
    f.write_all(&req.data)
        .map_err(Error::io("writing", &dest))?;
    if req.file_mode != 0 {
        fs::set_permissions(&dest, fs::Permissions::from_mode(req.file_mode & 0o7777))
            .map_err(Error::io("chmod", &dest))?;
    }
    let id = |v: i32| u32::try_from(v).ok();
    if id(req.uid).is_some() || id(req.gid).is_some() {
        chown(&dest, id(req.uid), id(req.gid)).map_err(Error::io("chown", &dest))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_params() {
        let p = parse_cmdline(
            "console=ttyS0 agent.log=debug quiet agent.cgroups=0 agent.channel=ch1 agent.unknown=1\n",
        );
        assert_eq!(
            p,
            AgentParams {
                log_level: "debug".into(),
                channel: "ch1".into(),
                cgroups: false
            }
        );
        assert_eq!(parse_cmdline("root=/dev/vda"), AgentParams::default());
    }

    #[test]
    fn load_order_skips_blanks_and_comments() {
        assert_eq!(
            parse_load_order("virtio_ring.ko\n\n# x\nvirtio.ko \n"),
            vec!["virtio_ring.ko", "virtio.ko"]
        );
    }

    #[test]
    fn copy_file_writes_chunks_below_run_only() {
        let base = tempfile::tempdir().unwrap();
        let mut req = pb::CopyFileRequest::new();
        req.path = "/run/vc/x/f".into();
        req.data = b"hello ".to_vec();
        req.file_mode = 0o640;
        req.uid = -1;
        req.gid = -1;
        copy_file(base.path(), &req).unwrap();
        req.offset = 6;
        req.data = b"world".to_vec();
        copy_file(base.path(), &req).unwrap();
        let dest = base.path().join("vc/x/f");
        assert_eq!(fs::read_to_string(&dest).unwrap(), "hello world");
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o640
        );
        for bad in ["/etc/passwd", "/run/../etc/x", "run/x", "/run"] {
            req.path = bad.into();
            assert!(
                matches!(
                    copy_file(base.path(), &req),
                    Err(Error::InvalidRequest { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn details_report_the_memory_block_size() {
        let sys = tempfile::tempdir().unwrap();
        fs::create_dir_all(sys.path().join("devices/system/memory")).unwrap();
        fs::write(
            sys.path().join("devices/system/memory/block_size_bytes"),
            "8000000\n",
        )
        .unwrap();
        let mut req = pb::GuestDetailsRequest::new();
        req.mem_block_size = true;
        assert_eq!(details(sys.path(), &req).mem_block_size_bytes, 128 << 20);
    }
}
