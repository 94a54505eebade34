//! The v2 applier's tests on a genuine cgroup2 hierarchy with every
//! controller, inside a guest VM: this host's cgroup2 mount has none (they
//! are bound to cgroup v1), the Debian guest kernel has them all.
//!
//! The test boots QEMU (TCG here) with a busybox image carrying this very
//! test binary, without its debug info, and the shared libraries it loads;
//! mounts cgroup2 at `/sys/fs/cgroup` in the guest with every controller
//! enabled in the root's `cgroup.subtree_control`; runs the ignored tests
//! of `v2_guest_tests` there; and fails with their output unless every one
//! of them ran and passed.

use std::time::{Duration, Instant};

use vc_test_support::{
    InitMode, ShellVm, VM_HOST, busybox_image_with_files, host_binary_files, require, runtime,
    small_vm_config, small_vm_options, vm_lock,
};

use super::v2_guest_tests::V2_ROOT_ENV;

/// Where the test binary is in the guest.
const GUEST_BINARY: &str = "/bin/vc-cgroups-host-tests";
/// The tests run in the guest.
const SUITE: &str = "apply::v2_guest_tests::";
/// Where the guest mounts cgroup2.
const GUEST_CGROUP2: &str = "/sys/fs/cgroup";

const BOOT: Duration = Duration::from_secs(60);
const RUN: Duration = Duration::from_secs(300);
const STOP: Duration = Duration::from_secs(10);

/// Mounts cgroup2 and enables every controller it has for the root's
/// children; prints what is enabled.
fn mount_cgroup2() -> String {
    format!(
        "mount -t cgroup2 cgroup2 {GUEST_CGROUP2} && \
         for c in $(cat {GUEST_CGROUP2}/cgroup.controllers); do \
           echo +$c > {GUEST_CGROUP2}/cgroup.subtree_control || exit 1; \
         done && cat {GUEST_CGROUP2}/cgroup.subtree_control"
    )
}

/// The names of the tests the guest must run, from this binary's own list.
fn guest_tests(me: &std::path::Path) -> Vec<String> {
    let out = std::process::Command::new(me)
        .args(["--list", "--ignored", SUITE])
        .output()
        .expect("listing this binary's tests");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn v2_applier_on_a_full_cgroup2_hierarchy_in_a_guest_vm() {
    require(VM_HOST);
    let _one_vm_at_a_time = vm_lock();
    let started = Instant::now();
    let me = std::env::current_exe().expect("this test binary");
    let expected = guest_tests(&me);
    assert!(expected.len() >= 6, "guest tests listed: {expected:?}");

    let tmp = tempfile::tempdir().unwrap();
    let files = host_binary_files(&me, GUEST_BINARY, tmp.path()).unwrap();
    let image = busybox_image_with_files(InitMode::Serve, &files, &tmp.path().join("image"));
    let mut config = small_vm_config("vc-cgroups-v2", &image, &tmp.path().join("run"));
    // Two CPUs, so that cpusets have something to choose from.
    config.vcpus.boot = 2;
    config.vcpus.max = 2;
    let built = started.elapsed();

    let (output, booted, ran) = runtime().block_on(async {
        let mut vm = ShellVm::boot(config, small_vm_options(0), BOOT)
            .await
            .unwrap();
        let booted = started.elapsed();
        let enabled = vm.shell.run(&mount_cgroup2()).await.unwrap();
        for c in ["cpu", "cpuset", "memory", "pids"] {
            assert!(
                enabled.split_whitespace().any(|e| e == c),
                "the guest kernel has no {c} controller: {enabled:?}"
            );
        }
        let command = format!(
            "cd /tmp && {V2_ROOT_ENV}={GUEST_CGROUP2} RUST_BACKTRACE=1 \
             {GUEST_BINARY} --ignored --test-threads=2 {SUITE} 2>&1"
        );
        let (output, status) = vm.shell.status_of(&command, RUN).await.unwrap();
        let ran = started.elapsed();
        let console = vm.console();
        vm.stop(STOP).await.unwrap();
        assert_eq!(
            status, 0,
            "the v2 tests failed in the guest:\n{output}\n--- guest console ---\n{console}"
        );
        (output, booted, ran)
    });
    println!("{output}");
    println!(
        "image built in {built:?}, guest booted at {booted:?}, tests done at {ran:?}, total {:?}",
        started.elapsed()
    );
    for test in &expected {
        assert!(
            output.contains(&format!("test {test} ... ok")),
            "{test} did not pass in the guest:\n{output}"
        );
    }
    let summary = format!("test result: ok. {} passed; 0 failed", expected.len());
    assert!(
        output.contains(&summary),
        "expected {summary:?} in:\n{output}"
    );
}
