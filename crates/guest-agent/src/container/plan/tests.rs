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

fn id_map(container: u32, host: u32, size: u32) -> oci_spec::runtime::LinuxIdMapping {
    oci_spec::runtime::LinuxIdMappingBuilder::default()
        .container_id(container)
        .host_id(host)
        .size(size)
        .build()
        .unwrap()
}

#[test]
fn id_maps_are_checked_as_the_kernel_would() {
    let ok = linux::id_maps(
        "c",
        &[id_map(0, 100_000, 65_536)],
        &[id_map(0, 100_000, 65_536)],
        0,
        0,
    )
    .unwrap();
    assert_eq!(ok.uid_map, "0 100000 65536\n");
    assert!(ok.root_mapped);
    let two = linux::id_maps(
        "c",
        &[id_map(0, 1000, 1), id_map(1, 100_000, 65_535)],
        &[id_map(0, 1000, 1)],
        5,
        0,
    )
    .unwrap();
    assert_eq!(two.uid_map, "0 1000 1\n1 100000 65535\n");
    for (uids, gids, uid, want) in [
        (
            vec![id_map(0, 1, 0)],
            vec![id_map(0, 1, 1)],
            0,
            "has size 0",
        ),
        (
            vec![id_map(0, 10, 10), id_map(5, 100, 10)],
            vec![id_map(0, 1, 1)],
            0,
            "overlaps",
        ),
        (
            vec![id_map(0, 10, 10), id_map(20, 15, 10)],
            vec![id_map(0, 1, 1)],
            0,
            "overlaps",
        ),
        (
            vec![id_map(0, u32::MAX, 2)],
            vec![id_map(0, 1, 1)],
            0,
            "past id",
        ),
        (vec![id_map(0, 1, 1)], vec![], 0, "needs linux.gidMappings"),
        (
            vec![id_map(0, 1, 1)],
            vec![id_map(0, 1, 1)],
            7,
            "uid 7 is not mapped",
        ),
    ] {
        let err = linux::id_maps("c", &uids, &gids, uid, 0).unwrap_err();
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
}

#[test]
fn devices_sysctls_propagation_personality_and_io_priority() {
    use oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceType};
    let dev = |path: &str, typ, mode: Option<u32>| {
        let mut b = LinuxDeviceBuilder::default()
            .path(path)
            .typ(typ)
            .major(10)
            .minor(229);
        if let Some(m) = mode {
            b = b.file_mode(m);
        }
        b.build().unwrap()
    };
    let nodes = linux::devices(
        "c",
        &[
            dev("/dev/fuse", LinuxDeviceType::C, Some(0o620)),
            dev("/dev/net/tun", LinuxDeviceType::C, None),
            dev("/dev/fifo", LinuxDeviceType::P, None),
        ],
    )
    .unwrap();
    assert_eq!(nodes[0].mode, libc::S_IFCHR | 0o620);
    assert_eq!(nodes[0].dev, libc::makedev(10, 229));
    assert_eq!(nodes[0].dir.as_ref().unwrap().path(), c"dev");
    assert_eq!(nodes[1].mode, libc::S_IFCHR | 0o666, "0666 when unset");
    assert_eq!(nodes[1].dir.as_ref().unwrap().path(), c"dev/net");
    assert_eq!((nodes[2].mode, nodes[2].dev), (libc::S_IFIFO | 0o666, 0));
    for bad in ["/etc/fuse", "/dev/../etc/x"] {
        assert!(
            linux::devices("c", &[dev(bad, LinuxDeviceType::C, None)]).is_err(),
            "{bad}"
        );
    }
    assert!(linux::devices("c", &[dev("/dev/x", LinuxDeviceType::A, None)]).is_err());

    let sysctl = |k: &str| [(k.to_string(), "1".to_string())].into_iter().collect();
    let got = linux::sysctls("c", &sysctl("net.ipv4.ip_forward"), false, false).unwrap();
    assert_eq!(got[0].0.as_c_str(), c"/proc/sys/net/ipv4/ip_forward");
    assert!(linux::sysctls("c", &sysctl("kernel.shmmax"), false, true).is_err());
    assert!(linux::sysctls("c", &sysctl("kernel.shmmax"), true, false).is_ok());
    assert!(linux::sysctls("c", &sysctl("kernel.hostname"), true, false).is_err());
    assert!(linux::sysctls("c", &sysctl("net..x"), true, true).is_err());
    assert!(linux::sysctls("c", &sysctl("net/../../x"), true, true).is_err());

    assert_eq!(linux::propagation("c", None).unwrap(), 0);
    assert_eq!(
        linux::propagation("c", Some("rslave")).unwrap(),
        libc::MS_SLAVE | libc::MS_REC
    );
    assert!(linux::propagation("c", Some("sideways")).is_err());

    let pers = oci_spec::runtime::LinuxPersonalityBuilder::default()
        .domain(oci_spec::runtime::LinuxPersonalityDomain::PerLinux32)
        .flags(vec!["ADDR_NO_RANDOMIZE".to_string()])
        .build()
        .unwrap();
    assert_eq!(linux::personality("c", &pers).unwrap(), 0x8 | 0x004_0000);
    let mut bad = pers.clone();
    bad.set_flags(Some(vec!["NOPE".into()]));
    assert!(linux::personality("c", &bad).is_err());

    use oci_spec::runtime::IOPriorityClass;
    assert_eq!(
        linux::io_priority("c", IOPriorityClass::IoprioClassBe, 6).unwrap(),
        (2 << 13) | 6
    );
    assert!(linux::io_priority("c", IOPriorityClass::IoprioClassRt, 8).is_err());
}

#[test]
fn process_fields_are_checked() {
    let mut p = process(&["sh"]);
    let mut user = p.user().clone();
    user.set_umask(Some(0o1000));
    p.set_user(user);
    assert!(
        plan_process("c", &p)
            .unwrap_err()
            .to_string()
            .contains("umask")
    );
    let mut p = process(&["sh"]);
    p.set_oom_score_adj(Some(1001));
    assert!(
        plan_process("c", &p)
            .unwrap_err()
            .to_string()
            .contains("oomScoreAdj")
    );
    let mut p = process(&["sh"]);
    p.set_terminal(Some(true));
    let plan = plan_process("c", &p).unwrap();
    assert!(plan.terminal);
    assert_eq!(plan.umask, DEFAULT_UMASK);
}
