//! The network's owner on real namespaces made by CNI's plugins (root,
//! no VM): what it makes, that it removes exactly that, failures at every
//! sub-step, an SDK-made namespace, and a rescan.

use std::path::Path;

use vc_test_support::{CniBridge, NETWORK_HOST, in_netns, netns_snapshot, require, unique};

use super::owner::{SandboxNetwork, no_failure};
use super::plan::{CREATED_NETNS_FILE, NetworkPlan};
use super::record::{Made, RECORD_FILE};
use crate::error::Error;

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn plan_for(netns: &Path) -> NetworkPlan {
    NetworkPlan {
        netns: Some(netns.to_owned()),
        create_netns: false,
        dns: Vec::new(),
    }
}

fn tc(netns: &Path, args: &[&str]) -> String {
    in_netns(netns, "tc", args).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taps_and_redirects_are_made_and_removed_exactly() {
    require(NETWORK_HOST);
    let bridge = CniBridge::new().unwrap();
    let pod = bridge.attach_new(&unique("net-owner")).unwrap();
    let before = netns_snapshot(&pod.netns);
    let state = tempfile::tempdir().unwrap();
    let mut network = SandboxNetwork::create(
        state.path(),
        &plan_for(&pod.netns),
        &logger(),
        &mut no_failure,
    )
    .await
    .unwrap();
    let record = network.record().clone();
    assert_eq!(record.endpoints.len(), 1, "{record:?}");
    let e = &record.endpoints[0];
    assert_eq!(e.interface.name, "eth0");
    assert_eq!(e.interface.mac.to_string(), pod.mac);
    assert_eq!(e.interface.addresses, [(std::net::IpAddr::V4(pod.ip), 24)]);
    assert_eq!(e.tap, "tap0_vc");
    assert_eq!(
        e.made,
        [
            Made::Tap,
            Made::TapIngress,
            Made::VethIngress,
            Made::VethRedirect,
            Made::TapRedirect
        ]
    );
    // The default route through the veth, for the guest.
    assert!(
        record
            .routes
            .iter()
            .any(|r| r.dest.is_none() && r.gateway == Some(pod.gateway.into())),
        "{:?}",
        record.routes
    );
    // The tap: persistent, the veth's MTU, up.
    let tap = in_netns(&pod.netns, "ip", &["-d", "link", "show", "tap0_vc"]).unwrap();
    assert!(tap.contains("tun type tap"), "{tap}");
    assert!(tap.contains(&format!("mtu {}", e.interface.mtu)), "{tap}");
    assert!(tap.contains(",UP"), "{tap}");
    // Ingress qdiscs and redirects both ways.
    let qdiscs = tc(&pod.netns, &["qdisc", "show"]);
    for dev in ["eth0", "tap0_vc"] {
        assert!(
            qdiscs
                .lines()
                .any(|l| l.starts_with("qdisc ingress ffff:") && l.contains(&format!("dev {dev} "))),
            "{qdiscs}"
        );
    }
    for (from, to) in [("eth0", "tap0_vc"), ("tap0_vc", "eth0")] {
        let f = tc(&pod.netns, &["filter", "show", "dev", from, "ingress"]);
        assert!(
            f.contains("protocol all") && f.contains("u32"),
            "{from}: {f}"
        );
        assert!(
            f.contains(&format!("Egress Redirect to device {to}")),
            "{from}: {f}"
        );
    }
    // Loaded from its record by another owner, it removes it all.
    assert!(state.path().join(RECORD_FILE).exists());
    drop(network);
    network = SandboxNetwork::load(state.path()).unwrap().unwrap();
    network.remove(&logger()).await.unwrap();
    assert_eq!(netns_snapshot(&pod.netns), before);
    assert!(!state.path().join(RECORD_FILE).exists());
}

/// A failure injected before each thing the owner makes leaves the
/// namespace exactly as CNI made it (links, qdiscs, filters) and no
/// record; an SDK-made namespace is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_every_sub_step_leaves_the_namespace_as_cni_made_it() {
    require(NETWORK_HOST);
    let bridge = CniBridge::new().unwrap();
    let pod = bridge.attach_new(&unique("net-fail")).unwrap();
    let before = netns_snapshot(&pod.netns);
    let state = tempfile::tempdir().unwrap();
    let mut seen = Vec::new();
    for create_netns in [false, true] {
        let plan = if create_netns {
            NetworkPlan {
                netns: Some(state.path().join(CREATED_NETNS_FILE)),
                create_netns: true,
                dns: Vec::new(),
            }
        } else {
            plan_for(&pod.netns)
        };
        for at in 0.. {
            let mut n = 0;
            let mut step = String::new();
            let mut fail = |name: &'static str| {
                n += 1;
                if n - 1 == at {
                    step = name.to_owned();
                    return Err(Error::Helper {
                        program: "failpoint".into(),
                        reason: name.into(),
                    });
                }
                Ok(())
            };
            let created = SandboxNetwork::create(state.path(), &plan, &logger(), &mut fail).await;
            let done = created.is_ok();
            if let Ok(mut network) = created {
                network.remove(&logger()).await.unwrap();
            } else {
                seen.push(step.clone());
                assert!(
                    matches!(&created, Err(Error::Helper { reason, .. }) if *reason == step),
                    "{created:?}"
                );
            }
            assert_eq!(
                netns_snapshot(&pod.netns),
                before,
                "after a failure at {step:?}"
            );
            assert!(
                !state.path().join(RECORD_FILE).exists(),
                "record left after {step:?}"
            );
            assert!(
                !state.path().join(CREATED_NETNS_FILE).exists(),
                "SDK-made netns left after {step:?}"
            );
            if done {
                break;
            }
        }
    }
    for step in [
        "scan",
        "tap",
        "tap up",
        "tap ingress",
        "veth ingress",
        "veth redirect",
        "tap redirect",
        "netns",
    ] {
        assert!(
            seen.iter().any(|s| s == step),
            "{step} never failed: {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sdk_made_namespace_has_lo_up_and_goes_with_the_network() {
    require(NETWORK_HOST);
    let state = tempfile::tempdir().unwrap();
    let netns = state.path().join(CREATED_NETNS_FILE);
    let plan = NetworkPlan {
        netns: Some(netns.clone()),
        create_netns: true,
        dns: Vec::new(),
    };
    let mut network = SandboxNetwork::create(state.path(), &plan, &logger(), &mut no_failure)
        .await
        .unwrap();
    assert!(network.record().endpoints.is_empty());
    let links = in_netns(&netns, "ip", &["-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo: <LOOPBACK,UP"), "{links}");
    network.remove(&logger()).await.unwrap();
    assert!(!netns.exists());
    assert!(vc_test_support::mounts_under(state.path()).is_empty());
}

/// An interface CNI adds later is carried in by a rescan (its own tap),
/// the first one left as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescan_adds_what_cni_added_since() {
    require(NETWORK_HOST);
    let (first, second) = (CniBridge::new().unwrap(), CniBridge::new().unwrap());
    let pod = first.attach_new(&unique("net-rescan")).unwrap();
    let state = tempfile::tempdir().unwrap();
    let mut network = SandboxNetwork::create(
        state.path(),
        &plan_for(&pod.netns),
        &logger(),
        &mut no_failure,
    )
    .await
    .unwrap();
    assert!(
        network
            .rescan(&logger(), &mut no_failure)
            .await
            .unwrap()
            .is_empty()
    );
    let before_second = netns_snapshot(&pod.netns);
    let eth1 = second.attach(&pod.netns, "eth1").unwrap();
    let before_rescan = netns_snapshot(&pod.netns);
    let added = network.rescan(&logger(), &mut no_failure).await.unwrap();
    assert_eq!(added.len(), 1);
    assert_eq!(added[0].interface.name, "eth1");
    assert_eq!(added[0].interface.mac.to_string(), eth1.mac);
    assert_eq!(added[0].tap, "tap1_vc");
    assert_eq!(added[0].nic_id, "net1");
    assert!(added[0].hotplugged);
    assert_eq!(network.record().endpoints.len(), 2);
    // Undone (as after a failed hot-plug): the second interface as CNI
    // made it, the first still carried.
    network.remove_from(1, &logger()).await.unwrap();
    assert_eq!(netns_snapshot(&pod.netns), before_rescan);
    network.remove(&logger()).await.unwrap();
    drop(eth1);
    assert_ne!(netns_snapshot(&pod.netns), before_rescan);
    assert_eq!(
        netns_snapshot(&pod.netns)
            .lines()
            .filter(|l| l.contains("tap"))
            .count(),
        0
    );
    let _ = before_second;
}
