//! A pool VM's warm-up ([`super::PoolConfig::warm_up`]): before the VM
//! joins the pool, a container the embedder names runs in it to its end,
//! through the same guest calls a sandbox makes (its share mounted by
//! `CreateSandbox`, `CreateContainer`, `StartContainer`, `WaitProcess`,
//! `DestroySandbox`).
//!
//! Why: under TCG the guest's code is translated on first use, so a VM's
//! first container costs about twice its next ones (the factory bench:
//! ~200 ms vs ~105 ms here). A pool VM is idle until taken; the warm-up
//! moves that first-use cost out of the sandbox start. Nothing of the
//! container stays: the guest removes it and unmounts the share, the
//! host's bind mounts are undone and the slot's share directory is empty
//! again before the VM can be handed over (a bind mount left by a pool
//! killed meanwhile is undone when its slot is removed).

use std::path::{Path, PathBuf};
use std::time::Duration;

use slog::{Logger, debug, warn};
use vc_agent_client::protocol::agent as pb;
use vc_agent_client::{Agent, AgentConfig, TtrpcAgent};
use vc_hypervisor::AgentEndpoint;

use crate::config::ContainerConfig;
use crate::container_spec::layout;
use crate::devices::ContainerDevices;
use crate::error::Error;
use crate::fs_share::{FsShare, NinePShare};

/// The guest sandbox id the warm-up runs under.
const WARM_UP_SANDBOX: &str = "vc-pool-warm-up";

/// Runs `container` in the VM whose agent is at `endpoint` and whose 9p
/// share exports `share`, within `timeout`; every host mount it made is
/// undone whatever happens.
pub(crate) async fn warm_up(
    endpoint: &AgentEndpoint,
    share: &Path,
    container: &ContainerConfig,
    timeout: Duration,
    logger: &Logger,
) -> Result<(), Error> {
    let host_mounts = crate::host_mounts::mount_table()?;
    let layout = layout(container, share, &host_mounts, &ContainerDevices::default())?;
    let targets: Vec<PathBuf> = layout.binds.iter().map(|b| b.target.clone()).collect();
    let ran = tokio::time::timeout(timeout, async {
        let config = AgentConfig {
            connect_timeout: timeout,
            ..AgentConfig::default()
        };
        let agent = TtrpcAgent::connect(crate::factory::transport_for(endpoint), config, logger)
            .await
            .map_err(Error::agent("connect to a pool VM's agent"))?;
        let request = pb::CreateSandboxRequest {
            sandbox_id: WARM_UP_SANDBOX.into(),
            storages: vec![NinePShare::new(share.to_owned()).guest_storage()],
            ..Default::default()
        };
        agent
            .create_sandbox(request)
            .await
            .map_err(Error::agent("CreateSandbox (pool warm-up)"))?;
        let ran = run(&agent, container, &layout).await;
        // Removes the container too, and unmounts the share in the guest.
        let destroyed = agent
            .destroy_sandbox()
            .await
            .map_err(Error::agent("DestroySandbox (pool warm-up)"));
        // The container's failure first: it says why the teardown failed.
        match (ran, destroyed) {
            (Err(e), _) | (Ok(_), Err(e)) => Err(e),
            (Ok(code), Ok(())) => Ok(code),
        }
    })
    .await
    .unwrap_or(Err(Error::Timeout {
        operation: "pool VM warm-up",
        timeout,
    }));
    let unbound = crate::sandbox::unbind_all(&targets);
    let code = ran?;
    unbound?;
    if std::fs::read_dir(share).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(Error::HostIo {
            operation: "empty the share after a pool VM warm-up",
            path: share.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::DirectoryNotEmpty),
        });
    }
    match code {
        0 => debug!(logger, "pool VM warmed up"; "container" => %container.id),
        code => warn!(logger, "the pool's warm-up container failed (the VM is warm all the same)";
            "container" => %container.id, "exit_code" => code),
    }
    Ok(())
}

/// The container's host binds, its creation, start and end (its output
/// read and dropped, so that it never blocks on a full pipe); its exit
/// code.
async fn run(
    agent: &TtrpcAgent,
    container: &ContainerConfig,
    layout: &crate::container_spec::ContainerLayout,
) -> Result<i32, Error> {
    crate::sandbox::create_from_layout(agent, &container.id, layout).await?;
    let id = container.id.as_str();
    agent
        .start_container(id)
        .await
        .map_err(Error::agent("StartContainer (pool warm-up)"))?;
    let drain = |stderr: bool| async move {
        loop {
            let read = match stderr {
                false => agent.read_stdout(id, "", 64 << 10).await,
                true => agent.read_stderr(id, "", 64 << 10).await,
            };
            if !matches!(read, Ok(data) if !data.is_empty()) {
                return;
            }
        }
    };
    let (_, _, code) = tokio::join!(drain(false), drain(true), agent.wait_process(id, ""));
    code.map_err(Error::agent("WaitProcess (pool warm-up)"))
}
