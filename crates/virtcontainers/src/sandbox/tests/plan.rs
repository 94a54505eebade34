//! Configuration errors, refused by planning before any host change.

use super::*;

#[tokio::test]
async fn bad_ids_and_bundles_are_refused_before_anything_is_made() {
    let fx = Fixture::new("bad");
    // An id is checked where it enters: a bad one is never a SandboxId.
    assert!(matches!(
        "../escape".parse::<SandboxId>(),
        Err(vc_types::IdError {
            rule: vc_types::IdRule::Character('/'),
            ..
        })
    ));
    let mut missing = fx.bundle("c1", None);
    missing.bundle = fx.dir.path().join("no-such-bundle");
    let r = create_sandbox(fx.config(vec![missing]), fx.factory.clone(), logger()).await;
    assert!(
        matches!(&r, Err(Error::Create { source, .. }) if matches!(**source, Error::InvalidBundle { ref reason, .. } if reason == "does not exist")),
        "{r:?}"
    );
    let mut file = fx.bundle("c1", None);
    file.bundle = fx.dir.path().join("images/vmlinux");
    let r = create_sandbox(fx.config(vec![file]), fx.factory.clone(), logger()).await;
    assert!(
        matches!(&r, Err(Error::Create { source, .. }) if matches!(**source, Error::InvalidBundle { ref reason, .. } if reason == "not a directory")),
        "{r:?}"
    );
    let dup = create_sandbox(
        fx.config(vec![fx.bundle("c1", None), fx.bundle("c1", None)]),
        fx.factory.clone(),
        logger(),
    )
    .await;
    assert!(
        matches!(&dup, Err(Error::Create { source, .. }) if matches!(**source, Error::ContainerExists { .. })),
        "{dup:?}"
    );
    assert!(fx.factory.vms().is_empty());
    fx.assert_clean("after refused configs");
}

/// Every kind of configuration error comes back from planning, typed by
/// the layer whose rule it broke, before anything exists on the host: no
/// state directory, no cgroup, no VM or other process.
#[tokio::test]
async fn config_errors_of_every_kind_change_nothing_on_the_host() {
    type Check = fn(&Error) -> bool;
    type Break = Box<dyn Fn(&Fixture, &mut SandboxConfig)>;
    let cases: Vec<(&str, Break, Check)> = vec![
        (
            "bad kernel parameter",
            Box::new(|_, c| c.vm.kernel_params = vec!["console=\"hvc0".into()]),
            |e| {
                matches!(
                    e,
                    Error::InvalidVmConfig {
                        source: vc_hypervisor::ConfigError::InvalidKernelParams { .. }
                    }
                )
            },
        ),
        ("0 vCPUs", Box::new(|_, c| c.vm.default_vcpus = 0), |e| {
            matches!(
                e,
                Error::InvalidVmConfig {
                    source: vc_hypervisor::ConfigError::ZeroVcpus
                }
            )
        }),
        (
            "missing kernel",
            Box::new(|fx, c| c.vm.kernel = fx.dir.path().join("no-such-vmlinux")),
            |e| {
                matches!(
                    e,
                    Error::InvalidVmConfig {
                        source: vc_hypervisor::ConfigError::KernelNotFound { .. }
                    }
                )
            },
        ),
        (
            "socket path too long",
            Box::new(|fx, c| c.paths.runtime_root = fx.dir.path().join("r".repeat(100))),
            |e| {
                matches!(
                    e,
                    Error::InvalidVmConfig {
                        source: vc_hypervisor::ConfigError::SocketPathTooLong { .. }
                    }
                )
            },
        ),
        (
            "missing network namespace",
            Box::new(|fx, c| {
                c.network.netns = crate::NetnsConfig::Path(fx.dir.path().join("no-such-netns"))
            }),
            |e| matches!(e, Error::InvalidNetns { reason, .. } if reason == "does not exist"),
        ),
        (
            "a file that is no network namespace",
            Box::new(|fx, c| {
                let file = fx.dir.path().join("images").join("vmlinux");
                c.network.netns = crate::NetnsConfig::Path(file)
            }),
            |e| matches!(e, Error::InvalidNetns { .. }),
        ),
        (
            "a two-line DNS entry",
            Box::new(|_, c| c.network.dns = vec!["nameserver 1.1.1.1\nsearch x".into()]),
            |e| matches!(e, Error::InvalidDns { .. }),
        ),
        (
            "bad cgroups path",
            Box::new(|_, c| c.cgroups.as_mut().unwrap().cgroups_path = Some("/pod/../../x".into())),
            |e| {
                matches!(
                    e,
                    Error::InvalidCgroupsConfig {
                        source: vc_cgroups_host::Error::InvalidCgroupPath { .. }
                    }
                )
            },
        ),
        (
            "systemd driver",
            Box::new(|_, c| {
                c.cgroups.as_mut().unwrap().driver = vc_cgroups_host::plan::CgroupDriver::Systemd
            }),
            |e| matches!(e, Error::Unsupported(_)),
        ),
        (
            "bad hostname",
            Box::new(|_, c| c.hostname = Some("a b".into())),
            |e| matches!(e, Error::InvalidHostname { .. }),
        ),
        (
            "bad container resources",
            Box::new(|fx, c| {
                let mut bad = fx.bundle("c1", None);
                let cpu = LinuxCpuBuilder::default().quota(-7i64).build().unwrap();
                bad.spec.set_linux(Some(
                    LinuxBuilder::default()
                        .resources(LinuxResourcesBuilder::default().cpu(cpu).build().unwrap())
                        .build()
                        .unwrap(),
                ));
                c.containers = vec![bad];
            }),
            |e| {
                matches!(
                    e,
                    Error::InvalidCgroupsConfig {
                        source: vc_cgroups_host::Error::InvalidCpuQuota { .. }
                    }
                )
            },
        ),
    ];
    // A bad id never becomes a SandboxId or ContainerId, so it cannot
    // reach create_sandbox at all.
    assert!("a/b".parse::<SandboxId>().is_err());
    assert!("-rf".parse::<ContainerId>().is_err());
    for (what, breaks, expected) in cases {
        let fx = Fixture::new("config");
        let mut config = fx.config(vec![fx.bundle("c1", None)]);
        breaks(&fx, &mut config);
        let err = create_sandbox(config, fx.factory.clone(), logger())
            .await
            .unwrap_err();
        match &err {
            Error::Create {
                step: CreateStep::Plan,
                source,
                ..
            } => assert!(expected(source), "{what}: {source:?}"),
            other => panic!("{what}: {other:?}"),
        }
        assert!(
            !fx.paths().state_root.exists(),
            "{what}: the state root was made"
        );
        assert!(fx.factory.vms().is_empty(), "{what}: a VM was made");
        fx.assert_clean(what);
        let mut pod = Vec::new();
        for (_, point) in vc_cgroups_host::CgroupRoots::discover().unwrap().v1.iter() {
            let dir = point.join(format!("{}-pod", fx.id));
            if dir.exists() {
                pod.push(dir);
            }
        }
        assert_eq!(pod, Vec::<PathBuf>::new(), "{what}: cgroups were made");
    }
}

#[test]
fn hot_plug_headroom_keeps_the_guest_from_reserving_a_bounce_buffer() {
    let fx = Fixture::new("swiotlb");
    let mut config = fx.config(Vec::new());
    let swiotlb = |config: &SandboxConfig| {
        let plan = crate::plan_sandbox(config).unwrap();
        plan.vm
            .kernel_params
            .get("swiotlb")
            .map(|v| v.map(str::to_owned))
    };
    config.vm.max_memory_mib = config.vm.default_memory_mib + 1024;
    assert_eq!(swiotlb(&config), Some(Some("noforce".into())));
    // No headroom: no DIMM above 4 GiB, the kernel's default stays.
    config.vm.max_memory_mib = config.vm.default_memory_mib;
    assert_eq!(swiotlb(&config), None);
    // The user's own value wins.
    config.vm.max_memory_mib = config.vm.default_memory_mib + 1024;
    config.vm.kernel_params = vec!["swiotlb=65536".into()];
    assert_eq!(swiotlb(&config), Some(Some("65536".into())));
}
