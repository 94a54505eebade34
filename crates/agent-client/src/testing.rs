//! A complete in-memory [`Agent`] for the unit tests of the layers above
//! (feature `testing`): it keeps containers and processes, serves scripted
//! output and exit codes, records every call, and fails on demand.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use tokio::sync::{Notify, watch};
use vc_agent_protocol::agent as pb;
use vc_agent_protocol::health;
use vc_agent_protocol::types;

use crate::{Agent, AgentError, AgentMethod, Result};

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The method.
    pub method: AgentMethod,
    /// The container it named (empty for sandbox-wide calls).
    pub container_id: String,
    /// The process it named (empty when none).
    pub exec_id: String,
}

/// What a process does in the fake: its output, and how it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessScript {
    /// Bytes served by `ReadStdout`.
    pub stdout: Vec<u8>,
    /// Bytes served by `ReadStderr`.
    pub stderr: Vec<u8>,
    /// Exit code once started; `None`: runs until signalled (then exits
    /// with 128 + the signal).
    pub exit_code: Option<i32>,
}

#[derive(Debug)]
struct Process {
    stdout: VecDeque<u8>,
    stderr: VecDeque<u8>,
    stdin: Vec<u8>,
    stdin_closed: bool,
    exit_code: Option<i32>,
    exited: watch::Sender<Option<i32>>,
}

impl Process {
    fn new(script: ProcessScript) -> Process {
        Process {
            stdout: script.stdout.into(),
            stderr: script.stderr.into(),
            stdin: Vec::new(),
            stdin_closed: false,
            exit_code: script.exit_code,
            exited: watch::channel(None).0,
        }
    }

    fn start(&self) {
        if let Some(code) = self.exit_code {
            self.exited.send_replace(Some(code));
        }
    }
}

#[derive(Debug, Default)]
struct Container {
    started: bool,
    paused: bool,
    processes: HashMap<String, Process>,
}

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    failures: HashMap<AgentMethod, Option<usize>>,
    disconnected: bool,
    sandbox_created: bool,
    containers: HashMap<String, Container>,
    scripts: HashMap<(String, String), ProcessScript>,
    oom_events: VecDeque<String>,
    interfaces: Vec<types::Interface>,
    routes: Vec<types::Route>,
    neighbors: Vec<types::ARPNeighbor>,
    online_requests: Vec<pb::OnlineCPUMemRequest>,
    metrics: Option<String>,
}

/// What [`FakeAgent`] answers to `GetMetrics` until told otherwise: a
/// 256 MiB guest with 200 MiB available.
pub const FAKE_METRICS: &str = "# TYPE kata_guest_meminfo gauge\n\
kata_guest_meminfo{item=\"mem_total\"} 268435456\n\
kata_guest_meminfo{item=\"mem_free\"} 188743680\n\
kata_guest_meminfo{item=\"mem_available\"} 209715200\n";

/// The fake agent. All state sits behind one mutex, never held across an
/// `.await`.
#[derive(Debug, Default)]
pub struct FakeAgent {
    state: Mutex<State>,
    /// Wakes `get_oom_event` callers when an OOM is injected.
    oom: Notify,
}

fn not_found(method: AgentMethod, what: String) -> AgentError {
    AgentError::Rpc {
        method,
        code: ttrpc::Code::NOT_FOUND,
        message: what,
    }
}

impl FakeAgent {
    /// An agent with no containers, answering every call.
    pub fn new() -> FakeAgent {
        FakeAgent::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock has failed already;
        // keep serving its state for the report.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Scripts the process `exec_id` of `container_id` (the container's own
    /// process has `exec_id == container_id` or the request's exec id).
    /// Unscripted processes print nothing and exit 0.
    pub fn script(&self, container_id: &str, exec_id: &str, script: ProcessScript) {
        self.lock()
            .scripts
            .insert((container_id.to_owned(), exec_id.to_owned()), script);
    }

    /// Makes the next `times` calls of `method` fail (`None`: all of them)
    /// with an `Internal` [`AgentError::Rpc`] whose message is
    /// `"injected failure"`, changing nothing.
    pub fn fail(&self, method: AgentMethod, times: Option<usize>) {
        self.lock().failures.insert(method, times);
    }

    /// Simulates the guest going away (`true`): every call fails with
    /// [`AgentError::Disconnected`] (a waiting `get_oom_event` too).
    pub fn set_disconnected(&self, gone: bool) {
        self.lock().disconnected = gone;
        self.oom.notify_waiters();
    }

    /// Reports an out-of-memory kill in `container_id`: the next (or a
    /// waiting) [`Agent::get_oom_event`] returns it. Events queue up.
    pub fn inject_oom(&self, container_id: &str) {
        self.lock().oom_events.push_back(container_id.to_owned());
        self.oom.notify_one();
    }

    /// The `OnlineCPUMem` requests served, in order.
    pub fn online_requests(&self) -> Vec<pb::OnlineCPUMemRequest> {
        self.lock().online_requests.clone()
    }

    /// What `GetMetrics` answers from now on (default [`FAKE_METRICS`]).
    pub fn set_metrics(&self, text: &str) {
        self.lock().metrics = Some(text.to_owned());
    }

    /// Every call so far, in order (failed ones included).
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// How many calls of `method` were made.
    pub fn count(&self, method: AgentMethod) -> usize {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .count()
    }

    /// The ids of the containers the agent holds now.
    pub fn containers(&self) -> Vec<String> {
        let mut ids: Vec<_> = self.lock().containers.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// What was written to a process's stdin, and whether it was closed.
    pub fn stdin_of(&self, container_id: &str, exec_id: &str) -> Option<(Vec<u8>, bool)> {
        let st = self.lock();
        let p = st.containers.get(container_id)?.processes.get(exec_id)?;
        Some((p.stdin.clone(), p.stdin_closed))
    }

    /// Whether the container is paused.
    pub fn is_paused(&self, container_id: &str) -> Option<bool> {
        self.lock().containers.get(container_id).map(|c| c.paused)
    }

    /// The interfaces configured through `UpdateInterface`, last first
    /// replaced by MAC.
    pub fn interfaces(&self) -> Vec<types::Interface> {
        self.lock().interfaces.clone()
    }

    /// The routes set by the last `UpdateRoutes`.
    pub fn routes(&self) -> Vec<types::Route> {
        self.lock().routes.clone()
    }

    /// Every ARP neighbour added.
    pub fn neighbors(&self) -> Vec<types::ARPNeighbor> {
        self.lock().neighbors.clone()
    }

    /// Records the call and decides whether it fails.
    fn enter(
        &self,
        method: AgentMethod,
        container_id: &str,
        exec_id: &str,
    ) -> Result<MutexGuard<'_, State>> {
        let mut st = self.lock();
        st.calls.push(Call {
            method,
            container_id: container_id.to_owned(),
            exec_id: exec_id.to_owned(),
        });
        if st.disconnected {
            return Err(AgentError::Disconnected { method });
        }
        if let Some(left) = st.failures.get_mut(&method) {
            match left {
                None => return Err(injected(method)),
                Some(0) => {}
                Some(n) => {
                    *n -= 1;
                    return Err(injected(method));
                }
            }
        }
        Ok(st)
    }

    fn new_process(st: &mut State, cid: &str, eid: &str) -> Process {
        let script = st
            .scripts
            .get(&(cid.to_owned(), eid.to_owned()))
            .cloned()
            .unwrap_or(ProcessScript {
                exit_code: Some(0),
                ..Default::default()
            });
        Process::new(script)
    }

    fn read(
        &self,
        method: AgentMethod,
        cid: &str,
        eid: &str,
        len: u32,
        stderr: bool,
    ) -> Result<Vec<u8>> {
        let mut st = self.enter(method, cid, eid)?;
        let p = st
            .containers
            .get_mut(cid)
            .and_then(|c| c.processes.get_mut(eid))
            .ok_or_else(|| not_found(method, format!("no process {cid}/{eid}")))?;
        let buf = if stderr { &mut p.stderr } else { &mut p.stdout };
        let n = buf.len().min(len as usize);
        Ok(buf.drain(..n).collect())
    }
}

fn injected(method: AgentMethod) -> AgentError {
    AgentError::Rpc {
        method,
        code: ttrpc::Code::INTERNAL,
        message: "injected failure".into(),
    }
}

#[async_trait]
impl Agent for FakeAgent {
    async fn check(&self) -> Result<()> {
        self.enter(AgentMethod::Check, "", "").map(drop)
    }

    async fn version(&self) -> Result<health::VersionCheckResponse> {
        drop(self.enter(AgentMethod::Version, "", "")?);
        let mut v = health::VersionCheckResponse::new();
        v.agent_version = "fake".into();
        v.grpc_version = "fake".into();
        Ok(v)
    }

    async fn create_sandbox(&self, _req: pb::CreateSandboxRequest) -> Result<()> {
        let mut st = self.enter(AgentMethod::CreateSandbox, "", "")?;
        st.sandbox_created = true;
        Ok(())
    }

    async fn destroy_sandbox(&self) -> Result<()> {
        let mut st = self.enter(AgentMethod::DestroySandbox, "", "")?;
        st.sandbox_created = false;
        st.containers.clear();
        Ok(())
    }

    async fn create_container(&self, req: pb::CreateContainerRequest) -> Result<()> {
        let m = AgentMethod::CreateContainer;
        let cid = req.container_id.clone();
        let eid = if req.exec_id.is_empty() {
            cid.clone()
        } else {
            req.exec_id.clone()
        };
        let mut st = self.enter(m, &cid, &eid)?;
        if cid.is_empty() || st.containers.contains_key(&cid) {
            return Err(AgentError::Rpc {
                method: m,
                code: ttrpc::Code::ALREADY_EXISTS,
                message: format!("container {cid:?} exists or is unnamed"),
            });
        }
        let process = FakeAgent::new_process(&mut st, &cid, &eid);
        let mut c = Container::default();
        c.processes.insert(eid, process);
        st.containers.insert(cid, c);
        Ok(())
    }

    async fn start_container(&self, container_id: &str) -> Result<()> {
        let m = AgentMethod::StartContainer;
        let mut st = self.enter(m, container_id, "")?;
        let c = st
            .containers
            .get_mut(container_id)
            .ok_or_else(|| not_found(m, format!("no container {container_id}")))?;
        c.started = true;
        c.processes.values().for_each(Process::start);
        Ok(())
    }

    async fn remove_container(&self, req: pb::RemoveContainerRequest) -> Result<()> {
        let m = AgentMethod::RemoveContainer;
        let mut st = self.enter(m, &req.container_id, "")?;
        st.containers
            .remove(&req.container_id)
            .map(drop)
            .ok_or_else(|| not_found(m, format!("no container {}", req.container_id)))
    }

    async fn exec_process(&self, req: pb::ExecProcessRequest) -> Result<()> {
        let m = AgentMethod::ExecProcess;
        let mut st = self.enter(m, &req.container_id, &req.exec_id)?;
        let process = FakeAgent::new_process(&mut st, &req.container_id, &req.exec_id);
        let c = st
            .containers
            .get_mut(&req.container_id)
            .filter(|c| c.started)
            .ok_or_else(|| not_found(m, format!("no running container {}", req.container_id)))?;
        if c.processes.contains_key(&req.exec_id) {
            return Err(AgentError::Rpc {
                method: m,
                code: ttrpc::Code::ALREADY_EXISTS,
                message: format!("process {} exists", req.exec_id),
            });
        }
        process.start();
        c.processes.insert(req.exec_id, process);
        Ok(())
    }

    async fn signal_process(
        &self,
        container_id: &str,
        exec_id: &str,
        signal: vc_types::Signal,
    ) -> Result<()> {
        let m = AgentMethod::SignalProcess;
        let mut st = self.enter(m, container_id, exec_id)?;
        let c = st
            .containers
            .get_mut(container_id)
            .ok_or_else(|| not_found(m, format!("no container {container_id}")))?;
        let code = 128 + signal.number();
        for (eid, p) in c.processes.iter_mut() {
            if (exec_id.is_empty() || eid == exec_id) && p.exited.borrow().is_none() {
                p.exit_code = Some(code);
                p.exited.send_replace(Some(code));
            }
        }
        Ok(())
    }

    async fn wait_process(&self, container_id: &str, exec_id: &str) -> Result<i32> {
        let m = AgentMethod::WaitProcess;
        let mut exited = {
            let st = self.enter(m, container_id, exec_id)?;
            st.containers
                .get(container_id)
                .and_then(|c| c.processes.get(exec_id))
                .map(|p| p.exited.subscribe())
                .ok_or_else(|| not_found(m, format!("no process {container_id}/{exec_id}")))?
        };
        let code = exited
            .wait_for(Option::is_some)
            .await
            .map_err(|_| AgentError::Disconnected { method: m })?;
        Ok(code.unwrap_or_default())
    }

    async fn update_container(&self, req: pb::UpdateContainerRequest) -> Result<()> {
        let m = AgentMethod::UpdateContainer;
        let st = self.enter(m, &req.container_id, "")?;
        st.containers
            .get(&req.container_id)
            .map(drop)
            .ok_or_else(|| not_found(m, format!("no container {}", req.container_id)))
    }

    async fn stats_container(&self, container_id: &str) -> Result<pb::StatsContainerResponse> {
        let m = AgentMethod::StatsContainer;
        let st = self.enter(m, container_id, "")?;
        let c = st
            .containers
            .get(container_id)
            .ok_or_else(|| not_found(m, format!("no container {container_id}")))?;
        let mut pids = pb::PidsStats::new();
        pids.current = c
            .processes
            .values()
            .filter(|p| p.exited.borrow().is_none())
            .count() as u64;
        let mut cg = pb::CgroupStats::new();
        cg.pids_stats = protobuf::MessageField::some(pids);
        let mut resp = pb::StatsContainerResponse::new();
        resp.cgroup_stats = protobuf::MessageField::some(cg);
        Ok(resp)
    }

    async fn pause_container(&self, container_id: &str) -> Result<()> {
        let m = AgentMethod::PauseContainer;
        let mut st = self.enter(m, container_id, "")?;
        let c = st
            .containers
            .get_mut(container_id)
            .ok_or_else(|| not_found(m, format!("no container {container_id}")))?;
        c.paused = true;
        Ok(())
    }

    async fn resume_container(&self, container_id: &str) -> Result<()> {
        let m = AgentMethod::ResumeContainer;
        let mut st = self.enter(m, container_id, "")?;
        let c = st
            .containers
            .get_mut(container_id)
            .ok_or_else(|| not_found(m, format!("no container {container_id}")))?;
        c.paused = false;
        Ok(())
    }

    async fn write_stdin(&self, container_id: &str, exec_id: &str, data: &[u8]) -> Result<u32> {
        let m = AgentMethod::WriteStdin;
        let mut st = self.enter(m, container_id, exec_id)?;
        let p = st
            .containers
            .get_mut(container_id)
            .and_then(|c| c.processes.get_mut(exec_id))
            .ok_or_else(|| not_found(m, format!("no process {container_id}/{exec_id}")))?;
        if p.stdin_closed {
            return Err(AgentError::Rpc {
                method: m,
                code: ttrpc::Code::FAILED_PRECONDITION,
                message: "stdin is closed".into(),
            });
        }
        p.stdin.extend_from_slice(data);
        Ok(u32::try_from(data.len()).unwrap_or(u32::MAX))
    }

    async fn read_stdout(&self, container_id: &str, exec_id: &str, len: u32) -> Result<Vec<u8>> {
        self.read(AgentMethod::ReadStdout, container_id, exec_id, len, false)
    }

    async fn read_stderr(&self, container_id: &str, exec_id: &str, len: u32) -> Result<Vec<u8>> {
        self.read(AgentMethod::ReadStderr, container_id, exec_id, len, true)
    }

    async fn close_stdin(&self, container_id: &str, exec_id: &str) -> Result<()> {
        let m = AgentMethod::CloseStdin;
        let mut st = self.enter(m, container_id, exec_id)?;
        let p = st
            .containers
            .get_mut(container_id)
            .and_then(|c| c.processes.get_mut(exec_id))
            .ok_or_else(|| not_found(m, format!("no process {container_id}/{exec_id}")))?;
        p.stdin_closed = true;
        Ok(())
    }

    async fn tty_win_resize(&self, req: pb::TtyWinResizeRequest) -> Result<()> {
        self.enter(AgentMethod::TtyWinResize, &req.container_id, &req.exec_id)
            .map(drop)
    }

    async fn online_cpu_mem(&self, req: pb::OnlineCPUMemRequest) -> Result<()> {
        self.enter(AgentMethod::OnlineCPUMem, "", "")?
            .online_requests
            .push(req);
        Ok(())
    }

    async fn get_metrics(&self) -> Result<String> {
        let st = self.enter(AgentMethod::GetMetrics, "", "")?;
        Ok(st
            .metrics
            .clone()
            .unwrap_or_else(|| FAKE_METRICS.to_owned()))
    }

    async fn get_guest_details(
        &self,
        _req: pb::GuestDetailsRequest,
    ) -> Result<pb::GuestDetailsResponse> {
        drop(self.enter(AgentMethod::GetGuestDetails, "", "")?);
        let mut details = pb::AgentDetails::new();
        details.version = "fake".into();
        details.init_daemon = true;
        let mut resp = pb::GuestDetailsResponse::new();
        resp.mem_block_size_bytes = 128 << 20;
        resp.agent_details = protobuf::MessageField::some(details);
        Ok(resp)
    }

    async fn copy_file(&self, req: pb::CopyFileRequest) -> Result<()> {
        drop(self.enter(AgentMethod::CopyFile, "", "")?);
        if !req.path.starts_with("/run/") {
            return Err(AgentError::Rpc {
                method: AgentMethod::CopyFile,
                code: ttrpc::Code::INVALID_ARGUMENT,
                message: format!("{} is not below /run", req.path),
            });
        }
        Ok(())
    }

    async fn get_oom_event(&self) -> Result<String> {
        let m = AgentMethod::GetOOMEvent;
        drop(self.enter(m, "", "")?);
        loop {
            let notified = self.oom.notified();
            tokio::pin!(notified);
            // Registered before the queue is checked: no wake-up is lost.
            notified.as_mut().enable();
            {
                let mut st = self.lock();
                if st.disconnected {
                    return Err(AgentError::Disconnected { method: m });
                }
                if let Some(id) = st.oom_events.pop_front() {
                    return Ok(id);
                }
            }
            notified.await;
        }
    }

    async fn update_interface(&self, interface: types::Interface) -> Result<types::Interface> {
        drop(self.enter(AgentMethod::UpdateInterface, "", "")?);
        let mut st = self.lock();
        st.interfaces.retain(|i| i.hwAddr != interface.hwAddr);
        st.interfaces.push(interface.clone());
        Ok(interface)
    }

    async fn update_routes(&self, routes: Vec<types::Route>) -> Result<Vec<types::Route>> {
        drop(self.enter(AgentMethod::UpdateRoutes, "", "")?);
        self.lock().routes = routes.clone();
        Ok(routes)
    }

    async fn list_interfaces(&self) -> Result<Vec<types::Interface>> {
        drop(self.enter(AgentMethod::ListInterfaces, "", "")?);
        Ok(self.lock().interfaces.clone())
    }

    async fn list_routes(&self) -> Result<Vec<types::Route>> {
        drop(self.enter(AgentMethod::ListRoutes, "", "")?);
        Ok(self.lock().routes.clone())
    }

    async fn add_arp_neighbors(&self, neighbors: Vec<types::ARPNeighbor>) -> Result<()> {
        drop(self.enter(AgentMethod::AddARPNeighbors, "", "")?);
        self.lock().neighbors.extend(neighbors);
        Ok(())
    }
}
