//! Unit tests of the planner.

use oci_spec::runtime::{
    LinuxBuilder, LinuxNamespaceBuilder, MountBuilder, PosixRlimitBuilder, ProcessBuilder,
    RootBuilder, SpecBuilder, UserBuilder,
};

use super::*;

fn spec_with(process: Process, ns: &[LinuxNamespaceType]) -> Spec {
    SpecBuilder::default()
        .hostname("box")
        .root(RootBuilder::default().path("rootfs").build().unwrap())
        .process(process)
        .mounts(vec![
            MountBuilder::default()
                .destination("/proc")
                .typ("proc")
                .source("proc")
                .build()
                .unwrap(),
            MountBuilder::default()
                .destination("/dev")
                .typ("tmpfs")
                .source("tmpfs")
                .options(vec!["nosuid".to_string(), "mode=755".into()])
                .build()
                .unwrap(),
            MountBuilder::default()
                .destination("/data/in")
                .typ("bind")
                .source("/srv")
                .options(vec!["rbind".to_string(), "ro".into()])
                .build()
                .unwrap(),
        ])
        .linux(
            LinuxBuilder::default()
                .namespaces(
                    ns.iter()
                        .map(|t| LinuxNamespaceBuilder::default().typ(*t).build().unwrap())
                        .collect::<Vec<_>>(),
                )
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
}

fn process(args: &[&str]) -> Process {
    ProcessBuilder::default()
        .args(args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .env(vec!["PATH=/bin:/usr/bin".to_string(), "X=1".into()])
        .cwd("/work")
        .user(
            UserBuilder::default()
                .uid(1000u32)
                .gid(100u32)
                .additional_gids(vec![5u32])
                .build()
                .unwrap(),
        )
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitNofile)
                .soft(512u64)
                .hard(1024u64)
                .build()
                .unwrap(),
        ])
        .build()
        .unwrap()
}

const ALL_NS: [LinuxNamespaceType; 5] = [
    LinuxNamespaceType::Mount,
    LinuxNamespaceType::Pid,
    LinuxNamespaceType::Uts,
    LinuxNamespaceType::Ipc,
    LinuxNamespaceType::Network,
];

#[test]
fn plans_namespaces_mounts_and_process() {
    let spec = spec_with(process(&["sh", "-c", "true"]), &ALL_NS);
    let plan = plan_container("c1", &spec, Path::new("/run/c1/rootfs")).unwrap();
    assert_eq!(
        plan.clone_flags,
        libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC
    );
    assert_eq!(plan.hostname.as_deref(), Some(c"box"));
    assert_eq!(plan.rootfs.as_c_str(), c"/run/c1/rootfs");
    let targets: Vec<_> = plan
        .mounts
        .iter()
        .map(|m| m.target.path().to_str().unwrap())
        .collect();
    // Relative to the rootfs: the child resolves them inside it.
    assert_eq!(&targets[..3], ["proc", "dev", "data/in"]);
    // /dev is a tmpfs: the basic devices are bound in after it.
    assert_eq!(targets[3], "dev/null");
    assert_eq!(plan.symlinks[0].1.path(), c"dev/fd");
    assert_eq!(plan.mounts.len(), 3 + DEFAULT_DEVICES.len());
    let bind = &plan.mounts[2];
    assert_eq!(bind.fstype, None);
    assert!(
        bind.remount_ro && bind.flags & libc::MS_RDONLY == 0 && bind.flags & libc::MS_BIND != 0
    );
    assert_eq!(
        bind.target.components,
        [
            PathComponent {
                path: c"data".to_owned(),
                parent: c".".to_owned(),
                name: c"data".to_owned()
            },
            PathComponent {
                path: c"data/in".to_owned(),
                parent: c"data".to_owned(),
                name: c"in".to_owned()
            },
        ]
    );
    assert_eq!(plan.mounts[1].data.as_deref(), Some(c"mode=755"));

    let p = &plan.process;
    assert_eq!(
        p.exe_candidates,
        vec![c"/bin/sh".to_owned(), c"/usr/bin/sh".to_owned()]
    );
    assert_eq!((p.uid, p.gid, p.groups.clone()), (1000, 100, vec![5]));
    assert_eq!(
        p.rlimits,
        vec![(libc::RLIMIT_NOFILE as libc::c_int, 512, 1024)]
    );
    assert_eq!(p.cwd.as_c_str(), c"/work");
}

#[test]
fn the_default_specs_v1_cgroup_mount_becomes_cgroup2() {
    let mut spec = spec_with(process(&["true"]), &ALL_NS);
    spec.set_mounts(Some(oci_spec::runtime::get_default_mounts()));
    let plan = plan_container("c1", &spec, Path::new("/r")).unwrap();
    let cgroup = plan
        .mounts
        .iter()
        .find(|m| m.target.path() == c"sys/fs/cgroup")
        .unwrap();
    assert_eq!(cgroup.fstype.as_deref(), Some(c"cgroup2"));
    assert!(cgroup.flags & libc::MS_RDONLY != 0);
}

#[test]
fn a_path_program_is_used_as_is() {
    let p = plan_process("c", &process(&["/opt/app", "x"])).unwrap();
    assert_eq!(p.exe_candidates, vec![c"/opt/app".to_owned()]);
}

#[test]
fn bad_specs_are_refused_with_reasons() {
    let err = plan_process("c", &process(&[])).unwrap_err();
    assert!(err.to_string().contains("process.args is empty"), "{err}");

    let spec = spec_with(process(&["sh"]), &[LinuxNamespaceType::Mount]);
    let err = plan_container("c", &spec, Path::new("/r")).unwrap_err();
    assert!(
        err.to_string()
            .contains("hostname set without a uts namespace"),
        "{err}"
    );

    let spec = spec_with(process(&["sh"]), &ALL_NS);
    let err = plan_container("c", &spec, Path::new("relative")).unwrap_err();
    assert!(matches!(err, Error::InvalidRequest { .. }));

    let mut spec = spec_with(process(&["sh"]), &ALL_NS);
    spec.set_mounts(Some(vec![
        MountBuilder::default()
            .destination("/../../etc")
            .typ("tmpfs")
            .build()
            .unwrap(),
    ]));
    let err = plan_container("c", &spec, Path::new("/r")).unwrap_err();
    assert!(err.to_string().contains("'..'"), "{err}");
    spec.set_mounts(Some(vec![
        MountBuilder::default()
            .destination("/./")
            .typ("tmpfs")
            .build()
            .unwrap(),
    ]));
    let err = plan_container("c", &spec, Path::new("/r")).unwrap_err();
    assert!(err.to_string().contains("the rootfs itself"), "{err}");

    let spec = spec_with(
        process(&["sh"]),
        &[LinuxNamespaceType::User, LinuxNamespaceType::Uts],
    );
    let err = plan_container("c", &spec, Path::new("/r")).unwrap_err();
    assert!(err.to_string().contains("needs linux.uidMappings"), "{err}");

    let spec = spec_with(
        process(&["sh"]),
        &[LinuxNamespaceType::Time, LinuxNamespaceType::Uts],
    );
    assert!(matches!(
        plan_container("c", &spec, Path::new("/r")),
        Err(Error::Unsupported(_))
    ));

    let mut p = process(&["sh"]);
    p.set_env(Some(vec!["A=\0".into()]));
    assert!(
        plan_process("c", &p)
            .unwrap_err()
            .to_string()
            .contains("NUL")
    );
}

#[test]
fn capabilities_become_masks() {
    let mut p = process(&["sh"]);
    let caps: oci_spec::runtime::Capabilities = [
        oci_spec::runtime::Capability::Kill,
        oci_spec::runtime::Capability::Chown,
    ]
    .into_iter()
    .collect();
    let mut lc = oci_spec::runtime::LinuxCapabilities::default();
    lc.set_bounding(Some(caps.clone()));
    lc.set_effective(Some(caps));
    lc.set_permitted(None);
    lc.set_inheritable(None);
    lc.set_ambient(None);
    p.set_capabilities(Some(lc));
    let plan = plan_process("c", &p).unwrap();
    let want = caps::Capability::CAP_KILL.bitmask() | caps::Capability::CAP_CHOWN.bitmask();
    let caps = plan.caps.unwrap();
    assert_eq!(caps.bounding, want);
    assert_eq!(caps.effective, want);
    assert_eq!(caps.permitted, 0);
}
