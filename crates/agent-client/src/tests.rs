//! The ttrpc client against a real in-process ttrpc server (a stand-in
//! agent on a unix socket, which is what the serial transport dials), and
//! the fake agent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::{UnixListener, UnixStream};
use vc_agent_protocol::agent as pb;
use vc_agent_protocol::{agent_ttrpc, health, health_ttrpc};

use crate::testing::{FakeAgent, ProcessScript};
use crate::{
    Agent, AgentConfig, AgentError, AgentMethod, OutputStream, ProcessOutput, Transport, TtrpcAgent,
};

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

struct StandIn;

#[async_trait::async_trait]
impl health_ttrpc::Health for StandIn {
    async fn check(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        _: health::CheckRequest,
    ) -> ttrpc::Result<health::HealthCheckResponse> {
        let mut r = health::HealthCheckResponse::new();
        r.status = health::health_check_response::ServingStatus::SERVING.into();
        Ok(r)
    }
}

#[async_trait::async_trait]
impl agent_ttrpc::AgentService for StandIn {
    async fn stats_container(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        _: pb::StatsContainerRequest,
    ) -> ttrpc::Result<pb::StatsContainerResponse> {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(pb::StatsContainerResponse::new())
    }

    async fn wait_process(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        req: pb::WaitProcessRequest,
    ) -> ttrpc::Result<pb::WaitProcessResponse> {
        if req.exec_id == "forever" {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        let mut r = pb::WaitProcessResponse::new();
        r.status = 3;
        Ok(r)
    }

    async fn get_oom_event(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        _: pb::GetOOMEventRequest,
    ) -> ttrpc::Result<pb::OOMEvent> {
        // Longer than quick()'s call timeout: the wait is by design.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let mut e = pb::OOMEvent::new();
        e.container_id = "ctr-1".into();
        Ok(e)
    }

    async fn get_metrics(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        _: pb::GetMetricsRequest,
    ) -> ttrpc::Result<pb::Metrics> {
        let mut m = pb::Metrics::new();
        m.metrics = "kata_guest_meminfo{item=\"mem_total\"} 42\n".into();
        Ok(m)
    }

    async fn signal_process(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        req: pb::SignalProcessRequest,
    ) -> ttrpc::Result<protobuf::well_known_types::empty::Empty> {
        if req.signal == 15 && req.exec_id == "e1" {
            Ok(protobuf::well_known_types::empty::Empty::new())
        } else {
            Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("unexpected signal {}", req.signal),
            )))
        }
    }

    async fn start_container(
        &self,
        _: &ttrpc::r#async::TtrpcContext,
        req: pb::StartContainerRequest,
    ) -> ttrpc::Result<protobuf::well_known_types::empty::Empty> {
        Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::NOT_FOUND,
            format!("no container {}", req.container_id),
        )))
    }
}

async fn serve(addr: &str) -> ttrpc::r#async::Server {
    let svc = Arc::new(StandIn);
    let mut server = ttrpc::r#async::Server::new()
        .bind(addr)
        .unwrap()
        .register_service(health_ttrpc::create_health(svc.clone()))
        .register_service(agent_ttrpc::create_agent_service(svc));
    server.start().await.unwrap();
    server
}

fn quick() -> AgentConfig {
    AgentConfig {
        connect_timeout: Duration::from_secs(10),
        check_attempt_timeout: Duration::from_millis(300),
        retry_interval: Duration::from_millis(20),
        call_timeout: Duration::from_millis(500),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_retries_until_the_agent_appears_then_calls_work() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let addr = format!("unix://{}", sock.display());
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        serve(&addr).await
    });
    let started = Instant::now();
    let agent = TtrpcAgent::connect(Transport::Serial { socket: sock }, quick(), &logger())
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(400));
    agent.check().await.unwrap();
    assert_eq!(agent.wait_process("c", "c").await.unwrap(), 3);
    match agent.start_container("nope").await {
        Err(AgentError::Rpc {
            method,
            code,
            message,
        }) => {
            assert_eq!(method, AgentMethod::StartContainer);
            assert_eq!(code, ttrpc::Code::NOT_FOUND);
            assert_eq!(message, "no container nope");
        }
        other => panic!("expected Rpc error, got {other:?}"),
    }
    // A method our stand-in does not implement: a typed error, no hang.
    assert!(matches!(
        agent.pause_container("c").await,
        Err(AgentError::Rpc { .. })
    ));
    let mut server = late.await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn connect_gives_up_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        connect_timeout: Duration::from_millis(300),
        ..quick()
    };
    let started = Instant::now();
    let err = TtrpcAgent::connect(
        Transport::Serial {
            socket: dir.path().join("none.sock"),
        },
        config,
        &logger(),
    )
    .await
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3));
    match err {
        AgentError::ConnectTimeout { target, last, .. } => {
            assert!(target.contains("none.sock"));
            assert!(last.contains("No such file"), "{last}");
        }
        other => panic!("expected ConnectTimeout, got {other:?}"),
    }
}

/// A socket that accepts but never answers (QEMU up, agent not): the
/// connect deadline still holds.
#[tokio::test]
async fn silent_peer_is_a_connect_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("silent.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let config = AgentConfig {
        connect_timeout: Duration::from_millis(800),
        check_attempt_timeout: Duration::from_millis(200),
        ..quick()
    };
    let started = Instant::now();
    let err = TtrpcAgent::connect(Transport::Serial { socket: sock }, config, &logger())
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::ConnectTimeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let mut server = serve(&format!("unix://{}", sock.display())).await;
    let agent = TtrpcAgent::connect(Transport::Serial { socket: sock }, quick(), &logger())
        .await
        .unwrap();
    let started = Instant::now();
    let err = agent.stats_container("c").await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Timeout {
                method: AgentMethod::StatsContainer,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    // The connection is still good after a timeout.
    agent.check().await.unwrap();
    drop(agent);
    server.shutdown().await.unwrap();
}

/// `GetOOMEvent` waits as long as the agent takes (no call timeout),
/// `GetMetrics` brings the guest's text, and signals go out as their
/// numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_events_wait_and_signals_are_typed() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("agent.sock");
    let mut server = serve(&format!("unix://{}", sock.display())).await;
    let agent = TtrpcAgent::connect(Transport::Serial { socket: sock }, quick(), &logger())
        .await
        .unwrap();
    assert_eq!(agent.get_oom_event().await.unwrap(), "ctr-1");
    assert_eq!(
        agent.get_metrics().await.unwrap(),
        "kata_guest_meminfo{item=\"mem_total\"} 42\n"
    );
    agent
        .signal_process("c1", "e1", vc_types::Signal::TERM)
        .await
        .unwrap();
    let err = agent
        .signal_process("c1", "e1", "SIGKILL".parse().unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, AgentError::Rpc { code: ttrpc::Code::INVALID_ARGUMENT, message, .. } if message.contains('9')),
        "{err:?}"
    );
    drop(agent);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn fake_agent_reports_injected_oom_kills_in_order() {
    let fake = Arc::new(crate::testing::FakeAgent::new());
    fake.inject_oom("first");
    assert_eq!(fake.get_oom_event().await.unwrap(), "first");
    let waiting = {
        let fake = fake.clone();
        tokio::spawn(async move { fake.get_oom_event().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!waiting.is_finished(), "waits for the next kill");
    fake.inject_oom("second");
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.unwrap(), "second");
    assert_eq!(fake.count(AgentMethod::GetOOMEvent), 2);
    fake.set_disconnected(true);
    assert!(fake.get_oom_event().await.unwrap_err().is_disconnect());
}

/// The guest going away (here: the relay to it cut, as when QEMU dies)
/// fails a call that waits forever, at once, with `Disconnected`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_going_away_fails_pending_and_later_calls() {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().join("agent.sock");
    let mut server = serve(&format!("unix://{}", real.display())).await;
    let front = dir.path().join("qemu.sock");
    let listener = UnixListener::bind(&front).unwrap();
    let relay = tokio::spawn(async move {
        let (mut a, _) = listener.accept().await.unwrap();
        let mut b = UnixStream::connect(&real).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
    });
    let agent = Arc::new(
        TtrpcAgent::connect(Transport::Serial { socket: front }, quick(), &logger())
            .await
            .unwrap(),
    );
    let waiting = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.wait_process("c", "forever").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay.abort();
    let started = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("no hang")
        .unwrap();
    assert!(
        matches!(
            res,
            Err(AgentError::Disconnected {
                method: AgentMethod::WaitProcess
            })
        ),
        "{res:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(agent.is_closed());
    let err = agent.check().await.unwrap_err();
    assert!(err.is_disconnect(), "{err:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn process_output_reads_to_end_of_stream() {
    let fake = Arc::new(FakeAgent::new());
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    fake.script(
        "c",
        "c",
        ProcessScript {
            stdout: big.clone(),
            stderr: b"warn\n".to_vec(),
            exit_code: Some(0),
        },
    );
    let mut req = pb::CreateContainerRequest::new();
    req.container_id = "c".into();
    fake.create_container(req).await.unwrap();
    let agent: Arc<dyn Agent> = fake.clone();
    let mut out = ProcessOutput::new(agent.clone(), "c", "c", OutputStream::Stdout);
    let mut got = Vec::new();
    out.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, big);
    let mut err = String::new();
    ProcessOutput::new(agent, "c", "c", OutputStream::Stderr)
        .read_to_string(&mut err)
        .await
        .unwrap();
    assert_eq!(err, "warn\n");
    assert!(fake.count(AgentMethod::ReadStdout) >= 4, "read in chunks");
}

#[tokio::test]
async fn process_output_reports_a_gone_agent() {
    let fake = Arc::new(FakeAgent::new());
    fake.set_disconnected(true);
    let mut out = ProcessOutput::new(fake, "c", "c", OutputStream::Stdout);
    let mut got = Vec::new();
    let err = out.read_to_end(&mut got).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
    assert!(err.to_string().contains("ReadStdout"), "{err}");
}

#[tokio::test]
async fn fake_agent_lifecycle_and_injected_failures() {
    let fake = FakeAgent::new();
    fake.script(
        "c",
        "c",
        ProcessScript {
            exit_code: None,
            ..Default::default()
        },
    );
    let mut req = pb::CreateContainerRequest::new();
    req.container_id = "c".into();
    fake.fail(AgentMethod::CreateContainer, Some(1));
    let err = fake.create_container(req.clone()).await.unwrap_err();
    assert!(matches!(
        err,
        AgentError::Rpc {
            code: ttrpc::Code::INTERNAL,
            ..
        }
    ));
    assert!(
        fake.containers().is_empty(),
        "a failed call changes nothing"
    );
    fake.create_container(req.clone()).await.unwrap();
    assert!(matches!(
        fake.create_container(req).await,
        Err(AgentError::Rpc {
            code: ttrpc::Code::ALREADY_EXISTS,
            ..
        })
    ));
    fake.start_container("c").await.unwrap();

    let mut exec = pb::ExecProcessRequest::new();
    exec.container_id = "c".into();
    exec.exec_id = "e".into();
    fake.script(
        "c",
        "e",
        ProcessScript {
            exit_code: Some(3),
            ..Default::default()
        },
    );
    fake.exec_process(exec).await.unwrap();
    assert_eq!(fake.wait_process("c", "e").await.unwrap(), 3);

    assert_eq!(fake.write_stdin("c", "c", b"abc").await.unwrap(), 3);
    fake.close_stdin("c", "c").await.unwrap();
    assert_eq!(fake.stdin_of("c", "c"), Some((b"abc".to_vec(), true)));

    fake.signal_process("c", "c", vc_types::Signal::KILL)
        .await
        .unwrap();
    assert_eq!(fake.wait_process("c", "c").await.unwrap(), 137);

    let mut rm = pb::RemoveContainerRequest::new();
    rm.container_id = "c".into();
    fake.remove_container(rm).await.unwrap();
    assert!(fake.containers().is_empty());
    assert_eq!(fake.count(AgentMethod::CreateContainer), 3);

    fake.set_disconnected(true);
    assert!(fake.check().await.unwrap_err().is_disconnect());
}
