//! The `Agent` trait: what the host asks of the guest agent.

use std::fmt;

use async_trait::async_trait;
use vc_agent_protocol::agent as pb;
use vc_agent_protocol::types;

use vc_types::Signal;

use crate::Result;

/// The agent's methods, named as on the wire (`grpc.AgentService/<name>`,
/// `grpc.Health/<name>`). Errors carry one; the fake agent injects failures
/// by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // each variant is the wire method of the same name
pub enum AgentMethod {
    Check,
    Version,
    CreateSandbox,
    DestroySandbox,
    CreateContainer,
    StartContainer,
    RemoveContainer,
    ExecProcess,
    SignalProcess,
    WaitProcess,
    UpdateContainer,
    StatsContainer,
    PauseContainer,
    ResumeContainer,
    WriteStdin,
    ReadStdout,
    ReadStderr,
    CloseStdin,
    TtyWinResize,
    OnlineCPUMem,
    GetGuestDetails,
    CopyFile,
    GetOOMEvent,
    UpdateInterface,
    UpdateRoutes,
    ListInterfaces,
    ListRoutes,
    AddARPNeighbors,
    GetMetrics,
}

impl fmt::Display for AgentMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The operations of a guest agent (Kata's `AgentService` and `Health`).
///
/// Requests and responses are the protocol's messages
/// ([`vc_agent_protocol::agent`]), so nothing is lost between an embedder
/// and the wire. [`crate::TtrpcAgent`] is the real implementation;
/// `testing::FakeAgent` (feature `testing`) stands in for it in unit tests.
///
/// Calls that wait for the guest by design ([`Agent::wait_process`],
/// [`Agent::read_stdout`], [`Agent::read_stderr`], [`Agent::get_oom_event`])
/// have no call timeout;
/// every call fails with [`crate::AgentError::Disconnected`] as soon as the
/// connection closes.
#[async_trait]
pub trait Agent: Send + Sync {
    /// `Health.Check`: `Ok` when the agent serves requests.
    async fn check(&self) -> Result<()>;
    /// `Health.Version`: the agent's version.
    async fn version(&self) -> Result<vc_agent_protocol::health::VersionCheckResponse>;
    /// Sets up the sandbox (hostname, storages, modules) before its containers.
    async fn create_sandbox(&self, req: pb::CreateSandboxRequest) -> Result<()>;
    /// Tears the sandbox down: kills every container process.
    async fn destroy_sandbox(&self) -> Result<()>;
    /// Creates a container (its process created, not started).
    async fn create_container(&self, req: pb::CreateContainerRequest) -> Result<()>;
    /// Starts a created container's process.
    async fn start_container(&self, container_id: &str) -> Result<()>;
    /// Removes a container, killing what still runs in it.
    async fn remove_container(&self, req: pb::RemoveContainerRequest) -> Result<()>;
    /// Starts another process in a running container's namespaces.
    async fn exec_process(&self, req: pb::ExecProcessRequest) -> Result<()>;
    /// Sends a signal to a process (`exec_id` empty: to all of the container's).
    async fn signal_process(&self, container_id: &str, exec_id: &str, signal: Signal)
    -> Result<()>;
    /// Waits for a process to exit: its exit code, or 128 + the signal that
    /// killed it.
    async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<i32>;
    /// Changes a container's resources.
    async fn update_container(&self, req: pb::UpdateContainerRequest) -> Result<()>;
    /// A container's cgroup statistics in the guest.
    async fn stats_container(&self, container_id: &str) -> Result<pb::StatsContainerResponse>;
    /// Freezes a container.
    async fn pause_container(&self, container_id: &str) -> Result<()>;
    /// Thaws a container.
    async fn resume_container(&self, container_id: &str) -> Result<()>;
    /// Writes to a process's stdin; returns the bytes taken.
    async fn write_stdin(&self, container_id: &str, exec_id: &str, data: &[u8]) -> Result<u32>;
    /// Reads at most `len` bytes of a process's stdout; empty at end of stream.
    async fn read_stdout(&self, container_id: &str, exec_id: &str, len: u32) -> Result<Vec<u8>>;
    /// Reads at most `len` bytes of a process's stderr; empty at end of stream.
    async fn read_stderr(&self, container_id: &str, exec_id: &str, len: u32) -> Result<Vec<u8>>;
    /// Closes a process's stdin (the process reads end of file).
    async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()>;
    /// Resizes a process's terminal (`process.terminal`): `row` x `column`
    /// characters; the process gets `SIGWINCH`.
    async fn tty_win_resize(&self, req: pb::TtyWinResizeRequest) -> Result<()>;
    /// Brings hot-plugged CPUs and memory online (Kata's semantics:
    /// `nb_cpus` is how many CPUs must be online in the end; the agent
    /// retries for a few seconds and fails if the guest does not get
    /// there; with `cpu_only` false, every offline memory block is
    /// onlined too).
    async fn online_cpu_mem(&self, req: pb::OnlineCPUMemRequest) -> Result<()>;
    /// What the guest and agent support.
    async fn get_guest_details(
        &self,
        req: pb::GuestDetailsRequest,
    ) -> Result<pb::GuestDetailsResponse>;
    /// Writes (a chunk of) a file below `/run` in the guest.
    async fn copy_file(&self, req: pb::CopyFileRequest) -> Result<()>;
    /// Waits for the next out-of-memory kill in a container of the guest
    /// (Kata's `GetOOMEvent`) and returns that container's id. It waits as
    /// long as it takes: call it in a loop from a task of its own (a shim
    /// turns each into a `TaskOOM` event).
    async fn get_oom_event(&self) -> Result<String>;
    /// Configures the guest NIC whose MAC is `interface.hwAddr` (waiting
    /// for a hot-plugged one to appear): its name, addresses and MTU, and
    /// brings it up. Returns the interface as configured.
    async fn update_interface(&self, interface: types::Interface) -> Result<types::Interface>;
    /// Replaces the guest's routes with `routes` (those without a gateway
    /// first); returns them as set.
    async fn update_routes(&self, routes: Vec<types::Route>) -> Result<Vec<types::Route>>;
    /// The guest's interfaces (loopback included).
    async fn list_interfaces(&self) -> Result<Vec<types::Interface>>;
    /// The guest's routes (main table).
    async fn list_routes(&self) -> Result<Vec<types::Route>>;
    /// Adds static ARP/NDP entries.
    async fn add_arp_neighbors(&self, neighbors: Vec<types::ARPNeighbor>) -> Result<()>;
    /// The guest's metrics in the Prometheus text format (Kata's
    /// `GetMetrics`: `kata_guest_meminfo{item="mem_total"}` and the like,
    /// in bytes).
    async fn get_metrics(&self) -> Result<String>;
}
