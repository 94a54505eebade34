//! containerd drives the shim as it drives runc's: the same `ctr`
//! scenarios run under `io.containerd.runc.v2` and under
//! `io.containerd.vc.v2` must print the same and exit the same, and after
//! ours nothing of the sandbox is left on the host (no QEMU, shim,
//! cgroup, mount, SDK state or socket).
//!
//! One containerd of its own for the whole binary (a private root, state
//! and sockets), scenarios one after another: they boot VMs on a 2-core
//! host without KVM. Runs as root; a host without containerd, runc,
//! QEMU or the guest image (`make guest-image`) fails it, naming what is
//! missing.

mod common;

use std::process::ExitCode;

use anyhow::{Context, Result, ensure};
use common::containerd::{CTR_TIMEOUT, finish};
use common::harness::{Scenario, run};
use common::image::{IMAGE, USER_IMAGE};
use common::{Env, Outcome, RUNC, VC, on_terminal, pids_with};
use vc_test_support::unique;

#[path = "ctr/factory.rs"]
mod factory;
#[path = "ctr/network.rs"]
mod network;
#[path = "ctr/pods.rs"]
mod pods;

fn main() -> ExitCode {
    run(
        &[
            Scenario {
                name: "echo_prints_the_same",
                run: echo,
            },
            Scenario {
                name: "an_exit_code_is_the_tasks",
                run: exit_code,
            },
            Scenario {
                name: "env_and_cwd_come_from_the_image",
                run: env_and_cwd,
            },
            Scenario {
                name: "the_images_user_runs_the_process",
                run: image_user,
            },
            Scenario {
                name: "a_running_task_execs_pauses_reports_and_dies_by_sigkill",
                run: running_task,
            },
            Scenario {
                name: "a_terminal_is_the_processes",
                run: terminal,
            },
            Scenario {
                name: "ctr_run_cni_reaches_a_peer",
                run: network::cni_run,
            },
            Scenario {
                name: "a_netns_given_in_the_spec_is_used_and_left_as_cni_made_it",
                run: network::given_netns,
            },
            Scenario {
                name: "the_runtime_config_path_is_honoured",
                run: pods::config_path,
            },
            Scenario {
                name: "a_pods_containers_share_one_vm_and_one_shim",
                run: pods::pod,
            },
            Scenario {
                name: "a_template_made_by_factory_init_is_cloned_then_destroyed",
                run: factory::template,
            },
            Scenario {
                name: "a_killed_shims_sandbox_is_freed_by_containerds_delete",
                run: pods::killed_shim,
            },
        ],
        Env::setup,
    )
}

/// Runs `cmd` in a fresh container under runc's shim, then ours; both
/// outcomes must be equal. Returns ours.
fn same(env: &Env, tag: &str, image: &str, cmd: &[&str]) -> Result<Outcome> {
    let runc = env.run_rm(RUNC, &unique(&format!("r-{tag}")), &[], image, cmd)?;
    let id = unique(&format!("v-{tag}"));
    let vc = env.leak_checked(&[&id], || env.run_rm(VC, &id, &[], image, cmd))?;
    ensure!(runc == vc, "runc: {runc:?}\nvc:   {vc:?}");
    Ok(vc)
}

fn echo(env: &Env) -> Result<()> {
    let out = same(env, "echo", IMAGE, &["echo", "hello", "world"])?;
    ensure!(out.stdout == "hello world\n" && out.code == 0, "{out:?}");
    Ok(())
}

fn exit_code(env: &Env) -> Result<()> {
    let out = same(
        env,
        "exit",
        IMAGE,
        &["sh", "-c", "echo out; echo err >&2; exit 7"],
    )?;
    ensure!(out.stdout == "out\n" && out.code == 7, "{out:?}");
    Ok(())
}

fn env_and_cwd(env: &Env) -> Result<()> {
    let out = same(env, "envcwd", IMAGE, &["sh", "-c", "echo $FOO; pwd"])?;
    ensure!(out.stdout == "bar\n/work\n", "{out:?}");
    Ok(())
}

fn image_user(env: &Env) -> Result<()> {
    let out = same(env, "user", USER_IMAGE, &["id"])?;
    ensure!(
        out.stdout.starts_with("uid=1000(vcuser) gid=1000(vcuser)"),
        "{out:?}"
    );
    Ok(())
}

/// What a scenario on a running task saw.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    exec: Outcome,
    exec_user: Outcome,
    ps_rows: usize,
    statuses: Vec<String>,
    metric_names: Vec<String>,
    exit: Option<i32>,
}

fn running_task(env: &Env) -> Result<()> {
    let runc = on_running_task(env, RUNC, &unique("r-running"))?;
    let id = unique("v-running");
    let vc = env.leak_checked(&[&id], || on_running_task(env, VC, &id))?;
    ensure!(runc == vc, "runc: {runc:?}\nvc:   {vc:?}");
    ensure!(vc.exec.stdout == "in exec\n" && vc.exec.code == 3, "{vc:?}");
    ensure!(vc.exec_user.stdout == "1000\n", "{vc:?}");
    ensure!(vc.statuses == ["PAUSED", "RUNNING"], "{vc:?}");
    ensure!(vc.exit == Some(137), "{vc:?}");
    Ok(())
}

/// `ctr run` of a sleeping task; exec, ps, pause/resume and metrics on
/// it; SIGKILL ends it and `ctr run` exits with 137.
fn on_running_task(env: &Env, runtime: &str, id: &str) -> Result<Seen> {
    let c = &env.containerd;
    let child = env.spawn_run(runtime, id, IMAGE, &["sleep", "600"])?;
    let seen = (|| -> Result<Seen> {
        env.wait_status(id, "RUNNING")?;
        let exec_args = [
            "task",
            "exec",
            "--exec-id",
            "e1",
            id,
            "sh",
            "-c",
            "echo in exec; exit 3",
        ];
        let exec = common::outcome(&c.ctr(&exec_args)?, &exec_args)?;
        let user_args = [
            "task",
            "exec",
            "--exec-id",
            "e2",
            "--user",
            "1000",
            id,
            "id",
            "-u",
        ];
        let exec_user = common::outcome(&c.ctr(&user_args)?, &user_args)?;
        let ps = c.ctr_ok(&["task", "ps", id])?;
        let ps_rows = ps.lines().skip(1).filter(|l| !l.trim().is_empty()).count();
        let mut statuses = Vec::new();
        c.ctr_ok(&["task", "pause", id])?;
        statuses.push(env.task_status(id)?.unwrap_or_default());
        c.ctr_ok(&["task", "resume", id])?;
        statuses.push(env.task_status(id)?.unwrap_or_default());
        let metrics = c.ctr_ok(&["task", "metrics", id])?;
        let metric_names = metrics
            .lines()
            .skip_while(|l| !l.starts_with("METRIC"))
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
            .collect();
        c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", id])?;
        Ok(Seen {
            exec,
            exec_user,
            ps_rows,
            statuses,
            metric_names,
            exit: None,
        })
    })();
    let out = finish(child, CTR_TIMEOUT).context("the background ctr run")?;
    let mut seen = seen?;
    seen.exit = out.status.code();
    Ok(seen)
}

fn terminal(env: &Env) -> Result<()> {
    let cmd = ["sh", "-c", "tty; echo on a terminal; exit 5"];
    let on = |runtime: &str, id: &str| {
        let mut args = vec!["run", "--rm", "-t", "--runtime", runtime, IMAGE, id];
        args.extend_from_slice(&cmd);
        on_terminal(&env.containerd, &args)
    };
    let runc = on(RUNC, &unique("r-tty"))?;
    let id = unique("v-tty");
    let vc = env.leak_checked(&[&id], || on(VC, &id))?;
    ensure!(runc == vc, "runc: {runc:?}\nvc:   {vc:?}");
    ensure!(
        vc.stdout.contains("/dev/pts/") && vc.stdout.contains("on a terminal") && vc.code == 5,
        "{vc:?}"
    );
    Ok(())
}

/// Waits until no process has all of `parts` in its command line.
pub(crate) fn gone(parts: &[&str]) -> Result<()> {
    common::settle(|| {
        let left = pids_with(parts);
        ensure!(left.is_empty(), "still running {parts:?}: {left:?}");
        Ok(())
    })
}
