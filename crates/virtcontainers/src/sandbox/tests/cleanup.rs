//! `cleanup_container`, plain and forced.

use super::*;

/// A failure at each step of cleaning up the last container: without
/// `force` the error is returned and a retry can finish; with `force`
/// everything is freed anyway.
#[tokio::test]
async fn a_failure_at_every_step_of_cleanup_is_survived_with_force() {
    #[derive(Debug, Clone, Copy)]
    enum Fail {
        Connect,
        RemoveContainer,
        DestroySandbox,
        StopVm,
    }
    for fail in [
        Fail::Connect,
        Fail::RemoveContainer,
        Fail::DestroySandbox,
        Fail::StopVm,
    ] {
        for force in [false, true] {
            let fx = Fixture::new("cleanfail");
            let sandbox = create_sandbox(
                fx.config(vec![fx.bundle("c1", Some(fx.dir.path()))]),
                fx.factory.clone(),
                logger(),
            )
            .await
            .unwrap();
            match fail {
                Fail::Connect => fx.factory.fail_connect(true),
                Fail::RemoveContainer => fx
                    .factory
                    .agent()
                    .fail(AgentMethod::RemoveContainer, Some(1)),
                Fail::DestroySandbox => fx
                    .factory
                    .agent()
                    .fail(AgentMethod::DestroySandbox, Some(1)),
                Fail::StopVm => fx.factory.fail_vm(Method::Stop),
            }
            let r = fx.cleanup("c1", force).await;
            if force {
                match r {
                    Ok(o) => assert!(o.sandbox_removed, "{fail:?}"),
                    Err(Error::Cleanup { errors, .. }) => assert!(!errors.is_empty(), "{fail:?}"),
                    Err(e) => panic!("{fail:?} forced: {e}"),
                }
                fx.assert_clean(&format!("forced cleanup with {fail:?} failing"));
            } else if matches!(fail, Fail::DestroySandbox) {
                // A guest that cannot tidy itself up is logged, not fatal:
                // the VM is stopped anyway.
                assert!(r.is_ok(), "{fail:?}: {r:?}");
                fx.assert_clean("cleanup with a failed DestroySandbox");
            } else {
                assert!(r.is_err(), "{fail:?}: {r:?}");
                // A retry, the failure gone, finishes the job.
                fx.factory.fail_connect(false);
                fx.cleanup("c1", false)
                    .await
                    .unwrap_or_else(|e| panic!("retry after {fail:?}: {e}"));
                fx.assert_clean(&format!("retried cleanup after {fail:?}"));
            }
            drop(sandbox);
        }
    }
}

#[tokio::test]
async fn forced_cleanup_of_an_unreachable_sandbox_frees_everything() {
    let fx = Fixture::new("force");
    let sandbox = create_sandbox(
        fx.config(vec![fx.bundle("c1", Some(fx.dir.path()))]),
        fx.factory.clone(),
        logger(),
    )
    .await
    .unwrap();
    // The guest is gone: nothing answers.
    fx.factory.fail_connect(true);
    let refused = fx.cleanup("c1", false).await;
    assert!(refused.is_err());
    let forced = fx.cleanup("c1", true).await;
    assert!(
        matches!(forced, Err(Error::Cleanup { .. })),
        "errors are reported: {forced:?}"
    );
    fx.assert_clean("after a forced cleanup");
    drop(sandbox);
}

/// A VM that died (its VMM killed) is seen as dead by every process:
/// `status()` says so, `fetch_sandbox` refuses with a typed error, and a
/// plain `cleanup_container` finishes the teardown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_vm_is_reported_and_a_plain_cleanup_finishes_it() {
    let fx = Fixture::new("vmdied");
    let sandbox = create_sandbox(
        fx.config(vec![
            fx.bundle("c1", Some(fx.dir.path())),
            fx.bundle("c2", None),
        ]),
        fx.factory.clone(),
        logger(),
    )
    .await
    .unwrap();
    let status = sandbox.status().await.unwrap();
    assert_eq!(status.phase, SandboxPhase::Ready);
    assert_eq!(status.vmm_pid, Some(fx.vmm.pid()));

    let pid = fx.vmm.pid();
    fx.kill_vmm();

    let status = sandbox.status().await.unwrap();
    assert_eq!(status.phase, SandboxPhase::VmDied);
    assert_eq!(status.vmm_pid, None);
    let fetched = fetch_sandbox(&fx.paths(), &fx.id, fx.factory.clone(), logger()).await;
    assert!(
        matches!(&fetched, Err(Error::VmDied { id, pid: p }) if *id == fx.id && *p == pid),
        "{fetched:?}"
    );
    let outcome = fx.cleanup("c1", false).await.unwrap();
    assert!(outcome.sandbox_removed, "both containers died with the VM");
    fx.assert_clean("after the cleanup of a dead sandbox");
    drop(sandbox);
}
