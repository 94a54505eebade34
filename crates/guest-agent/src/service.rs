//! The ttrpc services (`grpc.AgentService`, `grpc.Health`) over a
//! [`Sandbox`]. Every failure becomes a ttrpc status with a clear message;
//! nothing here panics on a request.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use protobuf::well_known_types::empty::Empty;
use slog::{Logger, info, warn};
use ttrpc::r#async::TtrpcContext;
use vc_agent_protocol::agent as pb;
use vc_agent_protocol::health::{self, health_check_response::ServingStatus};
use vc_agent_protocol::{agent_ttrpc, convert, health_ttrpc, types};

use crate::container::Sandbox;
use crate::error::Error;
use crate::network::{self, GuestNetwork};
use crate::{guest, resources};

/// The agent's services.
pub struct AgentService {
    sandbox: Arc<Sandbox>,
    network: GuestNetwork,
    logger: Logger,
}

impl AgentService {
    /// Serves `sandbox`.
    pub fn new(sandbox: Arc<Sandbox>, logger: Logger) -> Arc<AgentService> {
        Arc::new(AgentService {
            sandbox,
            network: GuestNetwork::new(),
            logger,
        })
    }

    /// The ttrpc service table, for `ttrpc::r#async::Server::register_service`.
    pub fn services(
        self: &Arc<Self>,
    ) -> std::collections::HashMap<String, ttrpc::r#async::Service> {
        let mut all = agent_ttrpc::create_agent_service(self.clone());
        all.extend(health_ttrpc::create_health(self.clone()));
        all
    }

    fn fail(&self, method: &str, e: Error) -> ttrpc::Error {
        warn!(self.logger, "request failed"; "method" => method, "error" => %e);
        e.into()
    }
}

fn convert_error(container_id: &str, e: convert::ConvertError) -> Error {
    Error::InvalidRequest {
        container_id: container_id.to_owned(),
        reason: e.to_string(),
    }
}

type R<T> = ttrpc::Result<T>;

#[async_trait]
impl health_ttrpc::Health for AgentService {
    async fn check(
        &self,
        _: &TtrpcContext,
        _: health::CheckRequest,
    ) -> R<health::HealthCheckResponse> {
        let mut r = health::HealthCheckResponse::new();
        r.status = ServingStatus::SERVING.into();
        Ok(r)
    }

    async fn version(
        &self,
        _: &TtrpcContext,
        _: health::CheckRequest,
    ) -> R<health::VersionCheckResponse> {
        let mut r = health::VersionCheckResponse::new();
        r.agent_version = env!("CARGO_PKG_VERSION").into();
        r.grpc_version = "ttrpc".into();
        Ok(r)
    }
}

#[async_trait]
impl agent_ttrpc::AgentService for AgentService {
    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: pb::CreateContainerRequest,
    ) -> R<Empty> {
        info!(self.logger, "CreateContainer"; "id" => &req.container_id);
        let cid = req.container_id.clone();
        let res = async {
            let spec = req.OCI.as_ref().ok_or_else(|| Error::InvalidRequest {
                container_id: cid.clone(),
                reason: "no OCI spec".into(),
            })?;
            let mut spec = convert::spec_from_proto(spec).map_err(|e| convert_error(&cid, e))?;
            let devices = req.devices.clone();
            let (id, found) = (cid.clone(), spec.clone());
            // Hot-plugged disks may still be probing: wait off the runtime.
            spec = tokio::task::spawn_blocking(move || {
                let mut spec = found;
                crate::devices::apply(
                    &id,
                    &devices,
                    &mut spec,
                    Path::new("/sys"),
                    Path::new("/dev"),
                    crate::storage::DISK_WAIT,
                )
                .map(|()| spec)
            })
            .await
            .map_err(|e| Error::sys("device task")(std::io::Error::other(e)))??;
            self.network.add_dns_mount(&mut spec);
            self.sandbox
                .create_container(&cid, &req.storages, &spec)
                .await
        }
        .await;
        res.map(|()| Empty::new())
            .map_err(|e| self.fail("CreateContainer", e))
    }

    async fn start_container(&self, _: &TtrpcContext, req: pb::StartContainerRequest) -> R<Empty> {
        self.sandbox
            .start_container(&req.container_id)
            .await
            .map(|()| Empty::new())
            .map_err(|e| self.fail("StartContainer", e))
    }

    async fn remove_container(
        &self,
        _: &TtrpcContext,
        req: pb::RemoveContainerRequest,
    ) -> R<Empty> {
        let timeout = (req.timeout != 0).then(|| Duration::from_secs(u64::from(req.timeout)));
        self.sandbox
            .remove_container(&req.container_id, timeout)
            .await
            .map(|()| Empty::new())
            .map_err(|e| self.fail("RemoveContainer", e))
    }

    async fn exec_process(&self, _: &TtrpcContext, req: pb::ExecProcessRequest) -> R<Empty> {
        let res = async {
            let p = req.process.as_ref().ok_or_else(|| Error::InvalidRequest {
                container_id: req.container_id.clone(),
                reason: "no process".into(),
            })?;
            let p =
                convert::process_from_proto(p).map_err(|e| convert_error(&req.container_id, e))?;
            self.sandbox
                .exec_process(&req.container_id, &req.exec_id, &p)
                .await
        }
        .await;
        res.map(|()| Empty::new())
            .map_err(|e| self.fail("ExecProcess", e))
    }

    async fn signal_process(&self, _: &TtrpcContext, req: pb::SignalProcessRequest) -> R<Empty> {
        self.sandbox
            .signal_process(&req.container_id, &req.exec_id, req.signal)
            .map(|()| Empty::new())
            .map_err(|e| self.fail("SignalProcess", e))
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: pb::WaitProcessRequest,
    ) -> R<pb::WaitProcessResponse> {
        let status = self
            .sandbox
            .wait_process(&req.container_id, &req.exec_id)
            .await
            .map_err(|e| self.fail("WaitProcess", e))?;
        let mut r = pb::WaitProcessResponse::new();
        r.status = status;
        Ok(r)
    }

    async fn update_container(
        &self,
        _: &TtrpcContext,
        req: pb::UpdateContainerRequest,
    ) -> R<Empty> {
        let res = req
            .resources
            .as_ref()
            .map(|r| {
                convert::resources_from_proto(r).map_err(|e| convert_error(&req.container_id, e))
            })
            .transpose()
            .and_then(|r| match r {
                Some(r) => self.sandbox.update(&req.container_id, &r),
                None => Ok(()),
            });
        res.map(|()| Empty::new())
            .map_err(|e| self.fail("UpdateContainer", e))
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: pb::StatsContainerRequest,
    ) -> R<pb::StatsContainerResponse> {
        let stats = self
            .sandbox
            .stats(&req.container_id)
            .map_err(|e| self.fail("StatsContainer", e))?;
        let mut r = pb::StatsContainerResponse::new();
        r.cgroup_stats = protobuf::MessageField::some(stats);
        // The containers share the sandbox's interfaces: their counters.
        r.network_stats = network::stats()
            .await
            .map_err(|e| self.fail("StatsContainer", e))?;
        Ok(r)
    }

    async fn pause_container(&self, _: &TtrpcContext, req: pb::PauseContainerRequest) -> R<Empty> {
        self.sandbox
            .freeze(&req.container_id, true)
            .map(|()| Empty::new())
            .map_err(|e| self.fail("PauseContainer", e))
    }

    async fn resume_container(
        &self,
        _: &TtrpcContext,
        req: pb::ResumeContainerRequest,
    ) -> R<Empty> {
        self.sandbox
            .freeze(&req.container_id, false)
            .map(|()| Empty::new())
            .map_err(|e| self.fail("ResumeContainer", e))
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: pb::WriteStreamRequest,
    ) -> R<pb::WriteStreamResponse> {
        let n = self
            .sandbox
            .write_stdin(&req.container_id, &req.exec_id, req.data)
            .await
            .map_err(|e| self.fail("WriteStdin", e))?;
        let mut r = pb::WriteStreamResponse::new();
        r.len = u32::try_from(n).unwrap_or(u32::MAX);
        Ok(r)
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: pb::ReadStreamRequest,
    ) -> R<pb::ReadStreamResponse> {
        let data = self
            .sandbox
            .read_output(&req.container_id, &req.exec_id, req.len, false)
            .await
            .map_err(|e| self.fail("ReadStdout", e))?;
        let mut r = pb::ReadStreamResponse::new();
        r.data = data;
        Ok(r)
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: pb::ReadStreamRequest,
    ) -> R<pb::ReadStreamResponse> {
        let data = self
            .sandbox
            .read_output(&req.container_id, &req.exec_id, req.len, true)
            .await
            .map_err(|e| self.fail("ReadStderr", e))?;
        let mut r = pb::ReadStreamResponse::new();
        r.data = data;
        Ok(r)
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: pb::CloseStdinRequest) -> R<Empty> {
        self.sandbox
            .close_stdin(&req.container_id, &req.exec_id)
            .await
            .map(|()| Empty::new())
            .map_err(|e| self.fail("CloseStdin", e))
    }

    async fn tty_win_resize(&self, _: &TtrpcContext, req: pb::TtyWinResizeRequest) -> R<Empty> {
        self.sandbox
            .resize_tty(&req.container_id, &req.exec_id, req.row, req.column)
            .map(|()| Empty::new())
            .map_err(|e| self.fail("TtyWinResize", e))
    }

    async fn create_sandbox(&self, _: &TtrpcContext, req: pb::CreateSandboxRequest) -> R<Empty> {
        let res = (|| {
            if !req.hostname.is_empty() {
                nix::unistd::sethostname(&req.hostname)
                    .map_err(|e| Error::sys("sethostname")(e.into()))?;
            }
            for m in &req.kernel_modules {
                guest::load_module_by_name(&m.name, &m.parameters.join(" "))?;
            }
            self.network
                .set_dns(&req.dns, std::path::Path::new(network::SANDBOX_DNS_FILE))
        })();
        let res = res.and_then(|()| {
            self.sandbox
                .mount_sandbox_storages(&req.sandbox_id, &req.storages)
        });
        res.map(|()| Empty::new())
            .map_err(|e| self.fail("CreateSandbox", e))
    }

    async fn destroy_sandbox(&self, _: &TtrpcContext, _: pb::DestroySandboxRequest) -> R<Empty> {
        info!(self.logger, "DestroySandbox");
        let done = self.sandbox.remove_all().await;
        info!(self.logger, "DestroySandbox done"; "ok" => done.is_ok());
        done.map(|()| Empty::new())
            .map_err(|e| self.fail("DestroySandbox", e))
    }

    async fn online_cpu_mem(&self, _: &TtrpcContext, req: pb::OnlineCPUMemRequest) -> R<Empty> {
        info!(self.logger, "OnlineCPUMem"; "nb_cpus" => req.nb_cpus, "cpu_only" => req.cpu_only);
        // It sleeps between looks for CPUs still on their way.
        let done = tokio::task::spawn_blocking(move || {
            resources::online_cpu_mem(std::path::Path::new("/sys"), req.nb_cpus, req.cpu_only)
        })
        .await
        .unwrap_or_else(|e| {
            Err(Error::Sys {
                operation: "onlining CPUs and memory",
                source: std::io::Error::other(e.to_string()),
            })
        });
        done.map(|()| Empty::new())
            .map_err(|e| self.fail("OnlineCPUMem", e))
    }

    async fn get_metrics(&self, _: &TtrpcContext, _: pb::GetMetricsRequest) -> R<pb::Metrics> {
        let meminfo = std::fs::read_to_string("/proc/meminfo")
            .map_err(|e| self.fail("GetMetrics", Error::io("reading", "/proc/meminfo")(e)))?;
        let mut m = pb::Metrics::new();
        m.metrics = resources::meminfo_metrics(&meminfo);
        Ok(m)
    }

    async fn get_guest_details(
        &self,
        _: &TtrpcContext,
        req: pb::GuestDetailsRequest,
    ) -> R<pb::GuestDetailsResponse> {
        Ok(guest::details(std::path::Path::new("/sys"), &req))
    }

    async fn get_oom_event(&self, _: &TtrpcContext, _: pb::GetOOMEventRequest) -> R<pb::OOMEvent> {
        let mut event = pb::OOMEvent::new();
        event.container_id = self.sandbox.next_oom_event().await;
        info!(self.logger, "OOM kill"; "id" => &event.container_id);
        Ok(event)
    }

    async fn copy_file(&self, _: &TtrpcContext, req: pb::CopyFileRequest) -> R<Empty> {
        guest::copy_file(std::path::Path::new("/run"), &req)
            .map(|()| Empty::new())
            .map_err(|e| self.fail("CopyFile", e))
    }

    async fn update_interface(
        &self,
        _: &TtrpcContext,
        req: pb::UpdateInterfaceRequest,
    ) -> R<types::Interface> {
        let Some(interface) = req.interface.as_ref() else {
            let e = Error::InvalidNetwork {
                reason: "UpdateInterface without an interface".into(),
            };
            return Err(self.fail("UpdateInterface", e));
        };
        info!(self.logger, "UpdateInterface"; "mac" => &interface.hwAddr, "name" => &interface.name);
        network::update_interface(interface)
            .await
            .map_err(|e| self.fail("UpdateInterface", e))
    }

    async fn update_routes(&self, _: &TtrpcContext, req: pb::UpdateRoutesRequest) -> R<pb::Routes> {
        let routes = req
            .routes
            .as_ref()
            .map(|r| r.Routes.clone())
            .unwrap_or_default();
        let mut out = pb::Routes::new();
        out.Routes = network::update_routes(&routes)
            .await
            .map_err(|e| self.fail("UpdateRoutes", e))?;
        Ok(out)
    }

    async fn list_interfaces(
        &self,
        _: &TtrpcContext,
        _: pb::ListInterfacesRequest,
    ) -> R<pb::Interfaces> {
        let mut out = pb::Interfaces::new();
        out.Interfaces = network::list_interfaces()
            .await
            .map_err(|e| self.fail("ListInterfaces", e))?;
        Ok(out)
    }

    async fn list_routes(&self, _: &TtrpcContext, _: pb::ListRoutesRequest) -> R<pb::Routes> {
        let mut out = pb::Routes::new();
        out.Routes = network::list_routes()
            .await
            .map_err(|e| self.fail("ListRoutes", e))?;
        Ok(out)
    }

    async fn add_arp_neighbors(
        &self,
        _: &TtrpcContext,
        req: pb::AddARPNeighborsRequest,
    ) -> R<Empty> {
        let neighbors = req
            .neighbors
            .as_ref()
            .map(|n| n.ARPNeighbors.clone())
            .unwrap_or_default();
        network::add_neighbors(&neighbors)
            .await
            .map(|()| Empty::new())
            .map_err(|e| self.fail("AddARPNeighbors", e))
    }
}
