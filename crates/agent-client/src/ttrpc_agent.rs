//! The real [`Agent`]: ttrpc over one of the [`Transport`]s.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use slog::{Logger, debug, info};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use vc_agent_protocol::agent as pb;
use vc_agent_protocol::agent_ttrpc::AgentServiceClient;
use vc_agent_protocol::health::{self, health_check_response::ServingStatus};
use vc_agent_protocol::health_ttrpc::HealthClient;
use vc_agent_protocol::types;

use vc_types::Signal;

use crate::transport::{AgentStream, Transport};
use crate::{Agent, AgentError, AgentMethod, Result};

/// Timeouts of a [`TtrpcAgent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// How long [`TtrpcAgent::connect`] keeps trying until the agent answers
    /// a health check (the guest is booting meanwhile).
    pub connect_timeout: Duration,
    /// The time one health check attempt may take while connecting.
    ///
    /// It does not set how soon a booting guest is noticed: on
    /// virtio-serial QEMU holds the pending request in the socket until the
    /// agent opens its port, and the agent answers it at once (measured:
    /// ~25 ms from the port opening to `connect` returning, under TCG); on
    /// vsock a refused dial is retried after `retry_interval`.
    pub check_attempt_timeout: Duration,
    /// The pause between two connection attempts.
    pub retry_interval: Duration,
    /// The limit for each call, except the waiting ones (`WaitProcess`,
    /// `ReadStdout`, `ReadStderr`), which end with the process or the
    /// connection.
    pub call_timeout: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            connect_timeout: Duration::from_secs(60),
            check_attempt_timeout: Duration::from_secs(1),
            retry_interval: Duration::from_millis(20),
            call_timeout: Duration::from_secs(30),
        }
    }
}

/// A stream that reports when it closes: end of file or an I/O error on
/// either direction flips the watch, and every pending call fails at once
/// with [`AgentError::Disconnected`] instead of waiting for its timeout.
struct Watched {
    inner: AgentStream,
    closed: watch::Sender<bool>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &res {
            Poll::Ready(Ok(())) if buf.filled().len() == before && buf.remaining() > 0 => {
                self.closed.send_replace(true);
            }
            Poll::Ready(Err(_)) => {
                self.closed.send_replace(true);
            }
            _ => {}
        }
        res
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, data);
        if let Poll::Ready(Err(_)) = &res {
            self.closed.send_replace(true);
        }
        res
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One ttrpc connection: the clients and the closed flag of its stream.
struct Session {
    agent: AgentServiceClient,
    health: HealthClient,
    closed: watch::Receiver<bool>,
}

impl Session {
    fn open(stream: AgentStream) -> Session {
        let (tx, rx) = watch::channel(false);
        let socket = ttrpc::r#async::transport::Socket::new(Watched {
            inner: stream,
            closed: tx,
        });
        let client = ttrpc::r#async::Client::new(socket);
        Session {
            agent: AgentServiceClient::new(client.clone()),
            health: HealthClient::new(client),
            closed: rx,
        }
    }
}

/// The guest agent over ttrpc.
///
/// Cheap to share behind an `Arc`: calls may run concurrently on the one
/// connection. Dropping it closes the connection.
pub struct TtrpcAgent {
    transport: Transport,
    config: AgentConfig,
    session: Session,
}

impl std::fmt::Debug for TtrpcAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtrpcAgent")
            .field("transport", &self.transport)
            .field("config", &self.config)
            .field("closed", &*self.session.closed.borrow())
            .finish()
    }
}

fn map_ttrpc_error(method: AgentMethod, timeout: Option<Duration>, e: ttrpc::Error) -> AgentError {
    match e {
        ttrpc::Error::RpcStatus(status) => {
            let code = status.code();
            if code == ttrpc::Code::DEADLINE_EXCEEDED
                && let Some(timeout) = timeout
            {
                return AgentError::Timeout { method, timeout };
            }
            AgentError::Rpc {
                method,
                code,
                message: status.message().to_owned(),
            }
        }
        ttrpc::Error::RemoteClosed | ttrpc::Error::LocalClosed | ttrpc::Error::Socket(_) => {
            AgentError::Disconnected { method }
        }
        source => AgentError::Ttrpc { method, source },
    }
}

/// How much later than our own timer ttrpc's deadline is: our timer
/// always fires first, so a call that runs out of time is told by which
/// timer fired, never by the text of ttrpc's own timeout error (which
/// carries no code); the agent still gets a deadline to give up by.
const TTRPC_DEADLINE_SLACK: Duration = Duration::from_millis(500);

/// Runs one call on `session`: bounded by `timeout` (when given) and cut
/// short by the connection closing.
async fn guarded<T, F>(
    session: &Session,
    method: AgentMethod,
    timeout: Option<Duration>,
    call: impl FnOnce(ttrpc::context::Context) -> F,
) -> Result<T>
where
    F: Future<Output = ttrpc::Result<T>>,
{
    let mut closed = session.closed.clone();
    if *closed.borrow() {
        return Err(AgentError::Disconnected { method });
    }
    let ctx = match timeout {
        Some(t) => ttrpc::context::with_duration(t + TTRPC_DEADLINE_SLACK),
        None => ttrpc::context::Context::default(),
    };
    let fut = call(ctx);
    let raced = async {
        tokio::select! {
            res = fut => res.map_err(|e| map_ttrpc_error(method, timeout, e)),
            _ = closed.wait_for(|c| *c) => Err(AgentError::Disconnected { method }),
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, raced)
            .await
            .map_err(|_| AgentError::Timeout { method, timeout: t })?,
        None => raced.await,
    }
}

async fn check_on(session: &Session, timeout: Duration) -> Result<()> {
    let resp = guarded(session, AgentMethod::Check, Some(timeout), |ctx| {
        let req = health::CheckRequest::new();
        let h = session.health.clone();
        async move { h.check(ctx, &req).await }
    })
    .await?;
    match resp.status.enum_value() {
        Ok(ServingStatus::SERVING) => Ok(()),
        _ => Err(AgentError::NotServing),
    }
}

impl TtrpcAgent {
    /// Connects to the agent and waits until it answers a health check,
    /// retrying (new connections when the transport refuses or closes, new
    /// checks when it stays silent) until `config.connect_timeout`.
    pub async fn connect(
        transport: Transport,
        config: AgentConfig,
        logger: &Logger,
    ) -> Result<TtrpcAgent> {
        let started = Instant::now();
        let deadline = started + config.connect_timeout;
        let mut last = String::from("no attempt");
        let mut session: Option<Session> = None;
        let mut attempts = 0u32;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(AgentError::ConnectTimeout {
                    target: transport.to_string(),
                    waited: started.elapsed(),
                    last,
                });
            }
            attempts += 1;
            if session.as_ref().is_none_or(|s| *s.closed.borrow()) {
                session = None;
                match tokio::time::timeout(deadline - now, transport.dial()).await {
                    Ok(Ok(stream)) => session = Some(Session::open(stream)),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "dial timed out".into(),
                }
            }
            if let Some(s) = &session {
                let attempt = config
                    .check_attempt_timeout
                    .min(deadline.saturating_duration_since(Instant::now()));
                match check_on(s, attempt.max(Duration::from_millis(1))).await {
                    Ok(()) => {
                        info!(logger, "agent connected"; "transport" => %transport,
                              "elapsed_ms" => started.elapsed().as_millis() as u64, "attempts" => attempts);
                        return Ok(TtrpcAgent {
                            transport,
                            config,
                            session: session.take().expect("checked above"),
                        });
                    }
                    // A silent agent (still booting): check again on the
                    // same connection, no pause needed.
                    Err(e @ AgentError::Timeout { .. }) => {
                        last = e.to_string();
                        continue;
                    }
                    Err(e) => {
                        debug!(logger, "agent not ready"; "error" => %e);
                        last = e.to_string();
                    }
                }
            }
            tokio::time::sleep(
                config
                    .retry_interval
                    .min(deadline.saturating_duration_since(Instant::now())),
            )
            .await;
        }
    }

    /// The transport this agent was reached through.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Whether the connection has closed (the guest or its VMM went away).
    pub fn is_closed(&self) -> bool {
        *self.session.closed.borrow()
    }

    async fn call<T, F>(
        &self,
        method: AgentMethod,
        timed: bool,
        call: impl FnOnce(AgentServiceClient, ttrpc::context::Context) -> F,
    ) -> Result<T>
    where
        F: Future<Output = ttrpc::Result<T>>,
    {
        let client = self.session.agent.clone();
        let timeout = timed.then_some(self.config.call_timeout);
        guarded(&self.session, method, timeout, |ctx| call(client, ctx)).await
    }
}

#[async_trait]
impl Agent for TtrpcAgent {
    async fn check(&self) -> Result<()> {
        check_on(&self.session, self.config.call_timeout).await
    }

    async fn version(&self) -> Result<health::VersionCheckResponse> {
        let h = self.session.health.clone();
        guarded(
            &self.session,
            AgentMethod::Version,
            Some(self.config.call_timeout),
            |ctx| async move { h.version(ctx, &health::CheckRequest::new()).await },
        )
        .await
    }

    async fn create_sandbox(&self, req: pb::CreateSandboxRequest) -> Result<()> {
        self.call(AgentMethod::CreateSandbox, true, |c, ctx| async move {
            c.create_sandbox(ctx, &req).await
        })
        .await
        .map(drop)
    }

    async fn destroy_sandbox(&self) -> Result<()> {
        let req = pb::DestroySandboxRequest::new();
        self.call(AgentMethod::DestroySandbox, true, |c, ctx| async move {
            c.destroy_sandbox(ctx, &req).await
        })
        .await
        .map(drop)
    }

    async fn create_container(&self, req: pb::CreateContainerRequest) -> Result<()> {
        self.call(AgentMethod::CreateContainer, true, |c, ctx| async move {
            c.create_container(ctx, &req).await
        })
        .await
        .map(drop)
    }

    async fn start_container(&self, container_id: &str) -> Result<()> {
        let mut req = pb::StartContainerRequest::new();
        req.container_id = container_id.to_owned();
        self.call(AgentMethod::StartContainer, true, |c, ctx| async move {
            c.start_container(ctx, &req).await
        })
        .await
        .map(drop)
    }

    async fn remove_container(&self, req: pb::RemoveContainerRequest) -> Result<()> {
        // The request carries its own limit for killing the processes
        // (0: wait as long as it takes): the call gets that much more.
        let timeout = (req.timeout != 0)
            .then(|| self.config.call_timeout + Duration::from_secs(u64::from(req.timeout)));
        let client = self.session.agent.clone();
        guarded(
            &self.session,
            AgentMethod::RemoveContainer,
            timeout,
            |ctx| async move { client.remove_container(ctx, &req).await },
        )
        .await
        .map(drop)
    }

    async fn exec_process(&self, req: pb::ExecProcessRequest) -> Result<()> {
        self.call(AgentMethod::ExecProcess, true, |c, ctx| async move {
            c.exec_process(ctx, &req).await
        })
        .await
        .map(drop)
    }

    async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: Signal,
    ) -> Result<()> {
        let mut req = pb::SignalProcessRequest::new();
        req.container_id = container_id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.signal = signal.into();
        self.call(AgentMethod::SignalProcess, true, |c, ctx| async move {
            c.signal_process(ctx, &req).await
        })
        .await
        .map(drop)
    }

    async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<i32> {
        let mut req = pb::WaitProcessRequest::new();
        req.container_id = container_id.to_owned();
        req.exec_id = exec_id.to_owned();
        self.call(AgentMethod::WaitProcess, false, |c, ctx| async move {
            c.wait_process(ctx, &req).await
        })
        .await
        .map(|r| r.status)
    }

    async fn update_container(&self, req: pb::UpdateContainerRequest) -> Result<()> {
        self.call(AgentMethod::UpdateContainer, true, |c, ctx| async move {
            c.update_container(ctx, &req).await
        })
        .await
        .map(drop)
    }

    async fn stats_container(&self, container_id: &str) -> Result<pb::StatsContainerResponse> {
        let mut req = pb::StatsContainerRequest::new();
        req.container_id = container_id.to_owned();
        self.call(AgentMethod::StatsContainer, true, |c, ctx| async move {
            c.stats_container(ctx, &req).await
        })
        .await
    }

    async fn pause_container(&self, container_id: &str) -> Result<()> {
        let mut req = pb::PauseContainerRequest::new();
        req.container_id = container_id.to_owned();
        self.call(AgentMethod::PauseContainer, true, |c, ctx| async move {
            c.pause_container(ctx, &req).await
        })
        .await
        .map(drop)
    }

    async fn resume_container(&self, container_id: &str) -> Result<()> {
        let mut req = pb::ResumeContainerRequest::new();
        req.container_id = container_id.to_owned();
        self.call(AgentMethod::ResumeContainer, true, |c, ctx| async move {
            c.resume_container(ctx, &req).await
        })
        .await
        .map(drop)
    }

    async fn write_stdin(&self, container_id: &str, exec_id: &str, data: &[u8]) -> Result<u32> {
        let mut req = pb::WriteStreamRequest::new();
        req.container_id = container_id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.data = data.to_vec();
        self.call(AgentMethod::WriteStdin, true, |c, ctx| async move {
            c.write_stdin(ctx, &req).await
        })
        .await
        .map(|r| r.len)
    }

    async fn read_stdout(&self, container_id: &str, exec_id: &str, len: u32) -> Result<Vec<u8>> {
        let mut req = pb::ReadStreamRequest::new();
        req.container_id = container_id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.len = len;
        self.call(AgentMethod::ReadStdout, false, |c, ctx| async move {
            c.read_stdout(ctx, &req).await
        })
        .await
        .map(|r| r.data)
    }

    async fn read_stderr(&self, container_id: &str, exec_id: &str, len: u32) -> Result<Vec<u8>> {
        let mut req = pb::ReadStreamRequest::new();
        req.container_id = container_id.to_owned();
        req.exec_id = exec_id.to_owned();
        req.len = len;
        self.call(AgentMethod::ReadStderr, false, |c, ctx| async move {
            c.read_stderr(ctx, &req).await
        })
        .await
        .map(|r| r.data)
    }

    async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let mut req = pb::CloseStdinRequest::new();
        req.container_id = container_id.to_owned();
        req.exec_id = exec_id.to_owned();
        self.call(AgentMethod::CloseStdin, true, |c, ctx| async move {
            c.close_stdin(ctx, &req).await
        })
        .await
        .map(drop)
    }

    async fn tty_win_resize(&self, req: pb::TtyWinResizeRequest) -> Result<()> {
        self.call(AgentMethod::TtyWinResize, true, |c, ctx| async move {
            c.tty_win_resize(ctx, &req).await
        })
        .await
        .map(drop)
    }

    async fn online_cpu_mem(&self, req: pb::OnlineCPUMemRequest) -> Result<()> {
        self.call(AgentMethod::OnlineCPUMem, true, |c, ctx| async move {
            c.online_cpu_mem(ctx, &req).await
        })
        .await
        .map(drop)
    }

    async fn get_guest_details(
        &self,
        req: pb::GuestDetailsRequest,
    ) -> Result<pb::GuestDetailsResponse> {
        self.call(AgentMethod::GetGuestDetails, true, |c, ctx| async move {
            c.get_guest_details(ctx, &req).await
        })
        .await
    }

    async fn copy_file(&self, req: pb::CopyFileRequest) -> Result<()> {
        self.call(AgentMethod::CopyFile, true, |c, ctx| async move {
            c.copy_file(ctx, &req).await
        })
        .await
        .map(drop)
    }

    async fn get_metrics(&self) -> Result<String> {
        let req = pb::GetMetricsRequest::new();
        self.call(AgentMethod::GetMetrics, true, |c, ctx| async move {
            c.get_metrics(ctx, &req).await
        })
        .await
        .map(|m| m.metrics)
    }

    async fn get_oom_event(&self) -> Result<String> {
        let req = pb::GetOOMEventRequest::new();
        self.call(AgentMethod::GetOOMEvent, false, |c, ctx| async move {
            c.get_oom_event(ctx, &req).await
        })
        .await
        .map(|e| e.container_id)
    }

    async fn update_interface(&self, interface: types::Interface) -> Result<types::Interface> {
        let mut req = pb::UpdateInterfaceRequest::new();
        req.interface = protobuf::MessageField::some(interface);
        self.call(AgentMethod::UpdateInterface, true, |c, ctx| async move {
            c.update_interface(ctx, &req).await
        })
        .await
    }

    async fn update_routes(&self, routes: Vec<types::Route>) -> Result<Vec<types::Route>> {
        let mut list = pb::Routes::new();
        list.Routes = routes;
        let mut req = pb::UpdateRoutesRequest::new();
        req.routes = protobuf::MessageField::some(list);
        self.call(AgentMethod::UpdateRoutes, true, |c, ctx| async move {
            c.update_routes(ctx, &req).await
        })
        .await
        .map(|r| r.Routes)
    }

    async fn list_interfaces(&self) -> Result<Vec<types::Interface>> {
        let req = pb::ListInterfacesRequest::new();
        self.call(AgentMethod::ListInterfaces, true, |c, ctx| async move {
            c.list_interfaces(ctx, &req).await
        })
        .await
        .map(|r| r.Interfaces)
    }

    async fn list_routes(&self) -> Result<Vec<types::Route>> {
        let req = pb::ListRoutesRequest::new();
        self.call(AgentMethod::ListRoutes, true, |c, ctx| async move {
            c.list_routes(ctx, &req).await
        })
        .await
        .map(|r| r.Routes)
    }

    async fn add_arp_neighbors(&self, neighbors: Vec<types::ARPNeighbor>) -> Result<()> {
        let mut list = pb::ARPNeighbors::new();
        list.ARPNeighbors = neighbors;
        let mut req = pb::AddARPNeighborsRequest::new();
        req.neighbors = protobuf::MessageField::some(list);
        self.call(AgentMethod::AddARPNeighbors, true, |c, ctx| async move {
            c.add_arp_neighbors(ctx, &req).await
        })
        .await
        .map(drop)
    }
}
