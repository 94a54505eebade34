//! What a pod costs, end to end on QEMU (TCG here): `Sandbox::overhead`
//! against what the kernel itself says (`/proc/<pid>/smaps_rollup`,
//! the cgroups' `cpuacct.usage` and `memory.usage_in_bytes`), within 5 %;
//! where guest RAM is charged (the overhead by default on cgroup v1, the
//! pod with `charge_guest_memory_to_pod`); the guest's own view.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{Env, cid, logger};
use oci_spec::runtime::{LinuxCpuBuilder, LinuxResourcesBuilder};
use vc_test_support::{ContainerSpec, shared_busybox_rootfs, vm_lock_async};
use virtcontainers::{ChargedTo, FsShareKind, OverheadReport, QemuFactory, create_sandbox};

/// A container spinning on one CPU (its quota).
fn burner(env: &Env) -> virtcontainers::ContainerConfig {
    let cpu = LinuxCpuBuilder::default()
        .quota(100_000i64)
        .period(100_000u64)
        .build()
        .unwrap();
    env.bundle_of(
        "burn",
        ContainerSpec::new(
            shared_busybox_rootfs(),
            &["sh", "-c", "while :; do :; done"],
        )
        .resources(LinuxResourcesBuilder::default().cpu(cpu).build().unwrap()),
    )
}

/// `a` is within 5 % of `b`.
fn close(a: f64, b: f64, what: &str) {
    assert!(
        (a - b).abs() <= 0.05 * b.abs().max(1.0),
        "{what}: {a} and {b} differ by more than 5 %"
    );
}

fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The kernel's own figures for the VMM and the sandbox cgroup.
struct Kernel {
    rss: u64,
    pss: u64,
    sandbox_cpu_ns: u64,
    sandbox_memory: u64,
}

fn kernel(report: &OverheadReport) -> Kernel {
    let vmm = report.processes.iter().find(|p| p.vmm).unwrap();
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", vmm.pid)).unwrap();
    let kib = |key: &str| -> u64 {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(key)?.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let sandbox = report
        .sandbox_cgroup
        .as_ref()
        .unwrap()
        .path
        .trim_start_matches('/')
        .to_owned();
    Kernel {
        rss: kib("Rss:") * 1024,
        pss: kib("Pss:") * 1024,
        sandbox_cpu_ns: read_u64(
            &Path::new("/sys/fs/cgroup/cpuacct")
                .join(&sandbox)
                .join("cpuacct.usage"),
        ),
        sandbox_memory: read_u64(
            &Path::new("/sys/fs/cgroup/memory")
                .join(&sandbox)
                .join("memory.usage_in_bytes"),
        ),
    }
}

async fn run(charge_guest_memory_to_pod: bool) {
    let _serial = vm_lock_async().await;
    let env = Env::new(if charge_guest_memory_to_pod {
        "ovpod"
    } else {
        "ovdef"
    });
    let mut config = env.config(FsShareKind::VirtioFs, vec![burner(&env)]);
    config.cgroups.as_mut().unwrap().charge_guest_memory_to_pod = charge_guest_memory_to_pod;
    let sandbox = create_sandbox(config, Arc::new(QemuFactory::default()), logger())
        .await
        .unwrap();
    sandbox.start_container(&cid("burn")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;

    let first = sandbox.overhead().await.unwrap();
    let k1 = kernel(&first);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let second = sandbox.overhead().await.unwrap();
    let k2 = kernel(&second);
    println!("{second}");

    // Memory: the VMM's figures are smaps_rollup's; the sandbox cgroup's
    // are its own counter's.
    let vmm = second.processes.iter().find(|p| p.vmm).unwrap();
    close(vmm.rss_bytes as f64, k2.rss as f64, "VMM RSS");
    close(vmm.pss_bytes as f64, k2.pss as f64, "VMM PSS");
    let sandbox_cg = second.sandbox_cgroup.as_ref().unwrap();
    close(
        sandbox_cg.memory_bytes.unwrap() as f64,
        k2.sandbox_memory as f64,
        "sandbox memory",
    );
    assert!(
        second.processes.iter().any(|p| !p.vmm),
        "virtiofsd is reported"
    );

    // CPU: what the pod is charged over 3 s of a spinning container is
    // what its cgroup counted, and the spinning vCPU is charged to it.
    assert_eq!(vmm.vcpu_cpu_charged_to, Some(ChargedTo::Pod));
    assert_eq!(vmm.other_cpu_charged_to, ChargedTo::Overhead);
    let pod_cpu = (second.pod.cpu - first.pod.cpu).as_nanos() as f64;
    let cgroup_cpu = (k2.sandbox_cpu_ns - k1.sandbox_cpu_ns) as f64;
    assert!(pod_cpu > 1.0e9, "the spinning container ran: {pod_cpu} ns");
    close(pod_cpu, cgroup_cpu, "pod CPU against cpuacct.usage");
    let total = second.pod.cpu + second.overhead.cpu;
    let processes: Duration = second
        .processes
        .iter()
        .map(|p| p.vcpu_cpu + p.other_cpu)
        .sum();
    assert_eq!(total, processes, "the two sides add up to the processes");

    // Guest RAM: where the VMM's memory cgroup is.
    if charge_guest_memory_to_pod {
        assert_eq!(vmm.memory_charged_to, ChargedTo::Pod);
        assert!(second.pod.rss_bytes >= vmm.rss_bytes);
        // The VMM started in the pod's memory cgroup: guest RAM is there.
        assert!(
            k2.sandbox_memory as f64 >= 0.5 * vmm.rss_bytes as f64,
            "sandbox cgroup {} for a VMM of RSS {}",
            k2.sandbox_memory,
            vmm.rss_bytes
        );
    } else {
        assert_eq!(vmm.memory_charged_to, ChargedTo::Overhead);
        assert_eq!(second.pod.rss_bytes, 0);
        // The figures: the pod's cgroup holds almost nothing of a
        // VMM hundreds of MiB large.
        assert!(
            (k2.sandbox_memory as f64) < 0.05 * vmm.rss_bytes as f64,
            "sandbox cgroup {} for a VMM of RSS {}",
            k2.sandbox_memory,
            vmm.rss_bytes
        );
    }

    // The guest's own view.
    let guest = second.guest.unwrap();
    assert!(
        guest.total_bytes > 128 << 20 && guest.total_bytes <= 256 << 20,
        "{guest:?}"
    );
    assert!(guest.available_bytes < guest.total_bytes);
    sandbox.stop(Duration::from_secs(5)).await.unwrap();
    sandbox.delete().await.unwrap();
    env.assert_clean();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_matches_the_kernel_and_guest_ram_is_overhead_by_default() {
    run(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_ram_can_be_charged_to_the_pod() {
    run(true).await;
}
