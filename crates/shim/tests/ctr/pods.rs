//! Scenarios of our shim alone: its configuration, pods (CRI
//! annotations), and the death of a shim.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use vc_test_support::unique;

use crate::common::image::IMAGE;
use crate::common::{Env, VC, pids_with};

const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// `--runtime-config-path` names the shim's configuration: its VM size
/// (memory, and no memory hot-plug headroom) shows in the guest; a file that does not exist fails the task's
/// creation, naming the file, and leaves nothing behind.
pub fn config_path(env: &Env) -> Result<()> {
    let dir = env.containerd.scratch("config");
    let config = dir.join("configuration.toml");
    std::fs::write(
        &config,
        "[hypervisor.qemu]\ndefault_memory = 512\ndefault_maxmemory = 512\n",
    )?;
    let config = config.display().to_string();
    let id = unique("v-config");
    let out = env.leak_checked(&[&id], || {
        env.run_rm(
            VC,
            &id,
            &["--runtime-config-path", &config],
            IMAGE,
            &["sh", "-c", "grep MemTotal /proc/meminfo"],
        )
    })?;
    let kib: u64 = out
        .stdout
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no MemTotal in {out:?}"))?;
    // The kernel keeps part of it. Default memory (256 MiB) would show
    // less than 256 MiB, and hot-plug headroom (default_maxmemory above
    // default_memory) about 393 MiB of these 512.
    ensure!(
        (440 * 1024..=512 * 1024).contains(&kib),
        "MemTotal {kib} kB: the guest does not have the configured 512 MiB without headroom"
    );

    let id = unique("v-noconfig");
    let missing = dir.join("missing.toml").display().to_string();
    env.leak_checked(&[&id], || {
        let args = [
            "run",
            "--rm",
            "--runtime",
            VC,
            "--runtime-config-path",
            &missing,
            IMAGE,
            &id,
            "true",
        ];
        let out = env.containerd.ctr(&args)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            !out.status.success(),
            "a missing configuration was accepted"
        );
        ensure!(
            stderr.contains(&missing),
            "the error does not name the file: {stderr}"
        );
        Ok(())
    })
}

/// A pod: its sandbox container (not run in the guest) makes the VM, its
/// containers join it: one QEMU, one shim; a container's output and exit
/// are its own; deleting the sandbox container stops the VM.
pub fn pod(env: &Env) -> Result<()> {
    let pod = unique("v-pod");
    let (app, sleeper) = (unique("v-app"), unique("v-sleeper"));
    let c = &env.containerd;
    env.leak_checked(&[&pod, &app, &sleeper], || {
        let sandbox_type = format!("{CONTAINER_TYPE}=sandbox");
        let container_type = format!("{CONTAINER_TYPE}=container");
        let in_pod = format!("{SANDBOX_ID}={pod}");
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            VC,
            "--annotation",
            &sandbox_type,
            "--annotation",
            &in_pod,
            IMAGE,
            &pod,
            "sleep",
            "600",
        ])?;
        c.ctr_ok(&[
            "run",
            "-d",
            "--runtime",
            VC,
            "--annotation",
            &container_type,
            "--annotation",
            &in_pod,
            IMAGE,
            &sleeper,
            "sleep",
            "600",
        ])?;
        let out = env.run_rm(
            VC,
            &app,
            &["--annotation", &container_type, "--annotation", &in_pod],
            IMAGE,
            &["sh", "-c", "echo in the pod; exit 4"],
        )?;
        ensure!(out.stdout == "in the pod\n" && out.code == 4, "{out:?}");
        env.wait_status(&sleeper, "RUNNING")?;
        let qemus = pids_with(&["qemu-system", &format!("-name {pod}")]);
        ensure!(qemus.len() == 1, "QEMUs of the pod: {qemus:?}");
        let shims = pids_with(&["containerd-shim-vc-v2"]);
        let ours: Vec<_> = shims
            .iter()
            .filter(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(pod.as_str()))
                    .unwrap_or(false)
            })
            .collect();
        ensure!(ours.len() == 1, "shims of the pod: {ours:?}");
        ensure!(
            !shims.iter().any(|p| {
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(sleeper.as_str()))
                    .unwrap_or(false)
            }),
            "a pod container got a shim of its own"
        );
        c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", &sleeper])?;
        env.wait_status(&sleeper, "STOPPED")?;
        c.ctr_ok(&["task", "delete", &sleeper])?;
        c.ctr_ok(&["containers", "delete", &sleeper])?;
        ensure!(
            qemus
                .iter()
                .all(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        );
        c.ctr_ok(&["task", "kill", &pod])?;
        env.wait_status(&pod, "STOPPED")?;
        c.ctr_ok(&["task", "delete", &pod])?;
        c.ctr_ok(&["containers", "delete", &pod])?;
        crate::gone(&["qemu-system", &format!("-name {pod}")])
    })
}

/// kill -9 of a shim with a running container: its VM dies with it, and
/// containerd's cleanup (the shim binary's `delete`) frees the rest.
pub fn killed_shim(env: &Env) -> Result<()> {
    let id = unique("v-killed");
    let c = &env.containerd;
    env.leak_checked(&[&id], || {
        c.ctr_ok(&["run", "-d", "--runtime", VC, IMAGE, &id, "sleep", "600"])?;
        env.wait_status(&id, "RUNNING")?;
        let shim = pids_with(&["containerd-shim-vc-v2", &format!("-id {id}")]);
        ensure!(shim.len() == 1, "the task's shim: {shim:?}");
        let qemu = pids_with(&["qemu-system", &format!("-name {id}")]);
        ensure!(qemu.len() == 1, "the task's QEMU: {qemu:?}");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(shim[0] as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        crate::gone(&["qemu-system", &format!("-name {id}")])?;
        // containerd notices, runs `delete`, and reports the task stopped.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while env.task_status(&id)?.as_deref() == Some("RUNNING") {
            ensure!(std::time::Instant::now() < deadline, "still RUNNING");
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = c.ctr(&["task", "delete", &id]);
        c.ctr_ok(&["containers", "delete", &id])?;
        Ok(())
    })
}
