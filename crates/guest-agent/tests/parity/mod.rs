//! The cases of the side-by-side tests: one OCI spec each, run by runc on
//! the host (Debian's `runc`) and by our agent in the VM, over the same
//! busybox rootfs (the host directory the VM gets by 9p). A case gives the
//! spec, an optional terminal dialogue, and what the two runs must both
//! show; the runc side lives here, the VM side in `runc_parity.rs`.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{
    LinuxBuilder, LinuxDeviceBuilder, LinuxDeviceType, LinuxIdMappingBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxSeccomp, LinuxSeccompAction,
    LinuxSeccompBuilder, LinuxSyscallBuilder, MountBuilder, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

/// How long one run may take before it is killed.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// What a run showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Its stdout (with a terminal: everything the terminal showed, `\r`
    /// removed).
    pub stdout: String,
    /// Its exit code (128 + the signal when killed).
    pub code: i32,
}

/// A terminal dialogue: wait for `marker` in the output, resize the
/// terminal to `rows` x `cols`, then type `input`.
#[derive(Debug, Clone)]
pub struct TtyDialogue {
    /// The output to wait for before resizing.
    pub marker: &'static str,
    /// The new size.
    pub rows: u16,
    /// The new size.
    pub cols: u16,
    /// What to type after the resize.
    pub input: &'static str,
}

/// One side-by-side case.
pub struct Case {
    /// Its name (container ids derive from it).
    pub name: &'static str,
    /// The spec, for a rootfs at `root`.
    pub spec: fn(root: &str) -> Spec,
    /// A terminal dialogue (`process.terminal` cases).
    pub tty: Option<TtyDialogue>,
    /// What both runs must show.
    pub expect: Outcome,
}

/// Host uid and gid the user-namespace case maps container root to.
pub const MAPPED_ID: u32 = 100_000;

fn ns(types: &[LinuxNamespaceType]) -> Vec<oci_spec::runtime::LinuxNamespace> {
    types
        .iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(*t).build().unwrap())
        .collect()
}

const BASE_NS: [LinuxNamespaceType; 4] = [
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Ipc,
];

/// The spec every case starts from: root in the container, `/proc`, a
/// tmpfs `/dev` with a devpts at `/dev/pts`, mount/pid/uts/ipc namespaces,
/// no capabilities listed (root's), running `args`.
pub fn base_spec(root: &str, args: &[&str]) -> Spec {
    let mount = |dest: &str, typ: &str, opts: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(typ)
            .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    };
    SpecBuilder::default()
        .version("1.0.2")
        .hostname("parity")
        .root(
            RootBuilder::default()
                .path(root)
                .readonly(false)
                .build()
                .unwrap(),
        )
        .process(
            ProcessBuilder::default()
                .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .env(vec!["PATH=/bin".to_string(), "TERM=xterm".into()])
                .cwd("/")
                .user(UserBuilder::default().uid(0u32).gid(0u32).build().unwrap())
                .no_new_privileges(false)
                .build()
                .unwrap(),
        )
        .mounts(vec![
            mount("/proc", "proc", &["nosuid", "noexec", "nodev"]),
            mount(
                "/dev",
                "tmpfs",
                &["nosuid", "strictatime", "mode=755", "size=65536k"],
            ),
            mount(
                "/dev/pts",
                "devpts",
                &[
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            ),
        ])
        .linux(
            LinuxBuilder::default()
                .namespaces(ns(&BASE_NS))
                .masked_paths(Vec::<String>::new())
                .readonly_paths(Vec::<String>::new())
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

fn with_linux(mut spec: Spec, f: impl FnOnce(&mut oci_spec::runtime::Linux)) -> Spec {
    let mut linux = spec.linux().clone().unwrap();
    f(&mut linux);
    spec.set_linux(Some(linux));
    spec
}

fn with_process(mut spec: Spec, f: impl FnOnce(&mut oci_spec::runtime::Process)) -> Spec {
    let mut p = spec.process().clone().unwrap();
    f(&mut p);
    spec.set_process(Some(p));
    spec
}

fn deny(names: &[&str], action: LinuxSeccompAction) -> LinuxSeccomp {
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![
            LinuxSyscallBuilder::default()
                .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .action(action)
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap()
}

fn seccomp_mkdir(root: &str) -> Spec {
    let spec = base_spec(root, &["sh", "-c", "mkdir /x 2>&1; echo \"mkdir: $?\""]);
    with_linux(spec, |l| {
        l.set_seccomp(Some(deny(
            &["mkdir", "mkdirat"],
            LinuxSeccompAction::ScmpActErrno,
        )));
    })
}

fn seccomp_getpid(root: &str) -> Spec {
    // busybox's shell asks for its pid as it starts: it dies at once.
    // SCMP_ACT_KILL_PROCESS, not SCMP_ACT_KILL: runc's own init (Go) calls
    // getpid between loading the filter and exec; with KILL (one thread)
    // runc 1.1.5 then hangs for good, with KILL_PROCESS it reports the
    // same SIGSYS death. The agent's unit tests cover KILL and KILL_THREAD.
    let spec = base_spec(root, &["sh", "-c", "echo never"]);
    let spec = with_process(spec, |p| {
        p.set_no_new_privileges(Some(true));
    });
    with_linux(spec, |l| {
        l.set_seccomp(Some(deny(
            &["getpid"],
            LinuxSeccompAction::ScmpActKillProcess,
        )));
    })
}

fn docker_profile(root: &str) -> Spec {
    let spec = base_spec(
        root,
        &[
            "sh",
            "-c",
            "unshare -U true 2>&1; echo \"unshare: $?\"; echo still here",
        ],
    );
    let caps: oci_spec::runtime::Capabilities = crate::docker_profile::DOCKER_CAPS
        .iter()
        .map(|c| serde_json::from_value(serde_json::json!(c)).unwrap())
        .collect();
    let spec = with_process(spec, |p| {
        let mut lc = oci_spec::runtime::LinuxCapabilities::default();
        lc.set_bounding(Some(caps.clone()));
        lc.set_effective(Some(caps.clone()));
        lc.set_permitted(Some(caps));
        lc.set_inheritable(None);
        lc.set_ambient(None);
        p.set_capabilities(Some(lc));
    });
    with_linux(spec, |l| {
        l.set_seccomp(Some(crate::docker_profile::docker_default()));
    })
}

fn terminal(root: &str) -> Spec {
    let spec = base_spec(root, &["sh", "-c", "tty; stty size; read x; stty size"]);
    with_process(spec, |p| {
        p.set_terminal(Some(true));
        p.set_console_size(Some(
            oci_spec::runtime::BoxBuilder::default()
                .height(24u64)
                .width(80u64)
                .build()
                .unwrap(),
        ));
    })
}

fn user_namespace(root: &str) -> Spec {
    let spec = base_spec(
        root,
        &[
            "sh",
            "-c",
            "id -u; id -g; touch /shared/by-userns && echo touched",
        ],
    );
    with_linux(spec, |l| {
        let map = || {
            vec![
                LinuxIdMappingBuilder::default()
                    .container_id(0u32)
                    .host_id(MAPPED_ID)
                    .size(65_536u32)
                    .build()
                    .unwrap(),
            ]
        };
        let mut namespaces = ns(&BASE_NS);
        namespaces.extend(ns(&[LinuxNamespaceType::User]));
        l.set_namespaces(Some(namespaces));
        l.set_uid_mappings(Some(map()));
        l.set_gid_mappings(Some(map()));
    })
}

fn masked_and_readonly(root: &str) -> Spec {
    let spec = base_spec(
        root,
        &[
            "sh",
            "-c",
            "cat /etc/secret; echo \"cat: $?\"; ls /etc/secrets; echo \"ls: $?\"; \
             touch /etc/ro/x 2>&1; echo \"touch: $?\"; cat /etc/ro/kept",
        ],
    );
    with_linux(spec, |l| {
        l.set_masked_paths(Some(vec![
            "/etc/secret".into(),
            "/etc/secrets".into(),
            "/no/such/path".into(),
        ]));
        l.set_readonly_paths(Some(vec!["/etc/ro".into(), "/no/such/dir".into()]));
    })
}

fn sysctl(root: &str) -> Spec {
    let spec = base_spec(root, &["cat", "/proc/sys/net/ipv4/ip_forward"]);
    with_linux(spec, |l| {
        // runc sets net.* sysctls only in a network namespace of the
        // container's own; in the VM the container shares the sandbox's.
        let mut namespaces = ns(&BASE_NS);
        namespaces.extend(ns(&[LinuxNamespaceType::Network]));
        l.set_namespaces(Some(namespaces));
        l.set_sysctl(Some(
            [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
        ));
    })
}

fn device(root: &str) -> Spec {
    let spec = base_spec(root, &["stat", "-c", "%F %t:%T %a %u:%g", "/dev/fuse"]);
    with_linux(spec, |l| {
        l.set_devices(Some(vec![
            LinuxDeviceBuilder::default()
                .path("/dev/fuse")
                .typ(LinuxDeviceType::C)
                .major(10)
                .minor(229)
                .file_mode(0o666u32)
                .uid(0u32)
                .gid(0u32)
                .build()
                .unwrap(),
        ]));
    })
}

fn outcome(stdout: &str, code: i32) -> Outcome {
    Outcome {
        stdout: stdout.to_owned(),
        code,
    }
}

/// Every case, with what runc shows for it (the agent must show the same).
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "seccomp-mkdir",
            spec: seccomp_mkdir,
            tty: None,
            expect: outcome(
                "mkdir: can't create directory '/x': Operation not permitted\nmkdir: 1\n",
                0,
            ),
        },
        Case {
            name: "seccomp-getpid",
            spec: seccomp_getpid,
            tty: None,
            expect: outcome("", 128 + libc::SIGSYS),
        },
        Case {
            name: "docker-profile",
            spec: docker_profile,
            tty: None,
            expect: outcome(
                "unshare: unshare(0x10000000): Operation not permitted\nunshare: 1\nstill here\n",
                0,
            ),
        },
        Case {
            name: "terminal",
            spec: terminal,
            tty: Some(TtyDialogue {
                marker: "24 80\n",
                rows: 40,
                cols: 100,
                input: "\n",
            }),
            expect: outcome("/dev/pts/0\n24 80\n\n40 100\n", 0),
        },
        Case {
            name: "user-namespace",
            spec: user_namespace,
            tty: None,
            expect: outcome("0\n0\ntouched\n", 0),
        },
        Case {
            name: "masked-readonly",
            spec: masked_and_readonly,
            tty: None,
            expect: outcome(
                "cat: 0\nls: 0\ntouch: /etc/ro/x: Read-only file system\ntouch: 1\nkept\n",
                0,
            ),
        },
        Case {
            name: "sysctl",
            spec: sysctl,
            tty: None,
            expect: outcome("1\n", 0),
        },
        Case {
            name: "device",
            spec: device,
            tty: None,
            expect: outcome("character special file a:e5 666 0:0\n", 0),
        },
    ]
}

/// Prepares the shared rootfs for the cases: a world-writable `/shared`
/// (the user-namespace case writes there as its mapped root), the masked
/// `/etc/secret` and `/etc/secrets/`, the read-only `/etc/ro/`; and makes
/// the way to it traversable by the mapped ids (temp dirs are 0700).
pub fn prepare_rootfs(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    };
    std::fs::create_dir_all(root.join("shared")).unwrap();
    mode(&root.join("shared"), 0o777);
    std::fs::write(root.join("etc/secret"), "do not show\n").unwrap();
    std::fs::create_dir_all(root.join("etc/secrets")).unwrap();
    std::fs::write(root.join("etc/secrets/key"), "hidden\n").unwrap();
    std::fs::create_dir_all(root.join("etc/ro")).unwrap();
    std::fs::write(root.join("etc/ro/kept"), "kept\n").unwrap();
    for dir in root.ancestors().skip(1) {
        if dir.starts_with("/tmp") && dir != Path::new("/tmp") {
            mode(dir, 0o755);
        }
    }
    mode(root, 0o755);
}

/// Fails the test unless runc is installed.
pub fn require_runc() {
    assert!(
        Command::new("runc")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "the side-by-side tests need runc (Debian package runc; scripts/install-prereqs.sh)"
    );
}

fn bundle(dir: &Path, spec: &Spec) {
    std::fs::create_dir_all(dir).unwrap();
    spec.save(dir.join("config.json")).unwrap();
}

fn wait_child(child: &mut std::process::Child, what: &str) -> i32 {
    let deadline = Instant::now() + RUN_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            use std::os::unix::process::ExitStatusExt;
            return status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `spec` with `runc run` in a bundle under `dir`; with a dialogue,
/// on a pty of the test's own (runc copies it to and from the container's).
pub fn run_runc(dir: &Path, id: &str, spec: &Spec, tty: Option<&TtyDialogue>) -> Outcome {
    let bundle_dir = dir.join(id);
    bundle(&bundle_dir, spec);
    let mut cmd = Command::new("runc");
    cmd.args(["run", "--bundle"]).arg(&bundle_dir).arg(id);
    match tty {
        None => {
            let child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("running runc");
            let mut child = child;
            let drain = |mut r: Box<dyn Read + Send>| {
                std::thread::spawn(move || {
                    let mut s = String::new();
                    let _ = r.read_to_string(&mut s);
                    s
                })
            };
            let out = drain(Box::new(child.stdout.take().unwrap()));
            let err = drain(Box::new(child.stderr.take().unwrap()));
            // Bounded: a runc that hangs is killed (its pipes then close).
            let code = wait_child(&mut child, "runc run");
            let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
            if !stderr.is_empty() {
                eprintln!("runc {id} stderr: {stderr}");
            }
            Outcome { stdout, code }
        }
        Some(d) => run_runc_tty(cmd, d),
    }
}

/// A pty: (master, slave), sized 24 x 80.
pub fn pty() -> (File, File) {
    let master = File::options()
        .read(true)
        .write(true)
        .open("/dev/ptmx")
        .expect("opening /dev/ptmx");
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int; the fd is open.
    assert!(unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } == 0);
    // SAFETY: TIOCGPTPEER (0x5441) returns a new fd for the slave.
    let slave = unsafe { libc::ioctl(master.as_raw_fd(), 0x5441, libc::O_RDWR | libc::O_NOCTTY) };
    assert!(
        slave >= 0,
        "TIOCGPTPEER: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `slave` was just opened and is owned by nobody else.
    let slave = File::from(unsafe { OwnedFd::from_raw_fd(slave) });
    resize(&master, 24, 80);
    (master, slave)
}

/// Sets a pty's size through its master.
pub fn resize(master: &File, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(r, 0);
}

/// Reads `master` until `marker` shows (or, with `None`, until the other
/// side is gone), within [`RUN_TIMEOUT`].
fn read_pty(master: &mut File, seen: &mut Vec<u8>, marker: Option<&str>) {
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(m) = marker
            && strip_cr(&String::from_utf8_lossy(seen)).contains(m)
        {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the terminal stayed silent: {seen:?}");
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one valid pollfd.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as libc::c_int) };
        if pfd.revents == 0 {
            continue;
        }
        match master.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            // EIO: every slave descriptor is closed.
            Err(_) => return,
        }
    }
}

/// The output of a terminal without its carriage returns.
pub fn strip_cr(s: &str) -> String {
    s.replace('\r', "")
}

fn run_runc_tty(mut cmd: Command, d: &TtyDialogue) -> Outcome {
    let (mut master, slave) = pty();
    // The command is dropped with its copies of the slave: the master then
    // reads EIO once runc and the container are gone.
    let mut child = {
        cmd.stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        cmd.spawn().expect("running runc")
    };
    drop(cmd);
    let mut seen = Vec::new();
    read_pty(&mut master, &mut seen, Some(d.marker));
    resize(&master, d.rows, d.cols);
    // runc resizes the container's terminal on SIGWINCH (the kernel sends
    // that only to the terminal's foreground group, which runc is not in).
    // SAFETY: kill(2) of our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGWINCH) };
    std::thread::sleep(Duration::from_millis(500));
    master.write_all(d.input.as_bytes()).unwrap();
    let code = {
        let mut reader = master.try_clone().unwrap();
        let handle = std::thread::spawn(move || {
            let mut rest = Vec::new();
            read_pty(&mut reader, &mut rest, None);
            rest
        });
        let code = wait_child(&mut child, "runc run (terminal)");
        drop(master);
        seen.extend(handle.join().unwrap());
        code
    };
    Outcome {
        stdout: strip_cr(&String::from_utf8_lossy(&seen)),
        code,
    }
}
