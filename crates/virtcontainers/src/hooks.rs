//! OCI hooks, run on the host: `prestart` and `createRuntime` inside the
//! sandbox's network namespace once the container is created (a failure
//! fails the create, which unwinds), `poststart` after it started and
//! `poststop` after it was deleted (failures logged, not fatal), as the
//! runtime spec says. Each hook gets the container's OCI state as JSON on
//! its stdin and is killed when its `timeout` (seconds) passes.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Spec};
use serde::Serialize;
use slog::{Logger, warn};

use crate::error::Error;

/// How long a hook without a `timeout` may run.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Prestart,
    CreateRuntime,
    Poststart,
    Poststop,
}

impl Stage {
    fn name(self) -> &'static str {
        match self {
            Stage::Prestart => "prestart",
            Stage::CreateRuntime => "createRuntime",
            Stage::Poststart => "poststart",
            Stage::Poststop => "poststop",
        }
    }

    /// The spec's hooks of this stage.
    fn hooks(self, spec: &Spec) -> Vec<Hook> {
        let Some(h) = spec.hooks() else {
            return Vec::new();
        };
        #[allow(deprecated)]
        let list = match self {
            Stage::Prestart => h.prestart(),
            Stage::CreateRuntime => h.create_runtime(),
            Stage::Poststart => h.poststart(),
            Stage::Poststop => h.poststop(),
        };
        list.clone().unwrap_or_default()
    }
}

/// The OCI state a hook reads on stdin.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OciState {
    #[serde(rename = "ociVersion")]
    pub version: String,
    pub id: String,
    pub status: &'static str,
    /// The VMM's pid: the container's processes are in the guest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    pub bundle: PathBuf,
    #[serde(skip_serializing_if = "HashMap::is_empty")]
    pub annotations: HashMap<String, String>,
}

impl OciState {
    pub(crate) fn new(
        spec: &Spec,
        id: &str,
        status: &'static str,
        pid: Option<u32>,
        bundle: &Path,
    ) -> Self {
        OciState {
            version: spec.version().clone(),
            id: id.to_owned(),
            status,
            pid,
            bundle: bundle.to_owned(),
            annotations: spec.annotations().clone().unwrap_or_default(),
        }
    }
}

/// Runs the spec's hooks of `stage`, in order, in `netns` (`None`: this
/// process's); the first failure stops and is returned.
pub(crate) async fn run(
    stage: Stage,
    spec: &Spec,
    state: &OciState,
    netns: Option<&Path>,
) -> Result<(), Error> {
    let input = serde_json::to_vec(state).map_err(|e| Error::HookSpawn {
        stage: stage.name(),
        path: PathBuf::new(),
        source: std::io::Error::other(e),
    })?;
    for hook in stage.hooks(spec) {
        let (input, netns) = (input.clone(), netns.map(Path::to_owned));
        tokio::task::spawn_blocking(move || run_one(stage, &hook, &input, netns.as_deref()))
            .await
            .map_err(|e| Error::HookSpawn {
                stage: stage.name(),
                path: PathBuf::new(),
                source: std::io::Error::other(e),
            })??;
    }
    Ok(())
}

/// [`run`] for the stages whose failures the runtime spec says to log.
pub(crate) async fn run_logged(
    stage: Stage,
    spec: &Spec,
    state: &OciState,
    netns: Option<&Path>,
    logger: &Logger,
) {
    if let Err(e) = run(stage, spec, state, netns).await {
        warn!(logger, "hook failed"; "stage" => stage.name(), "container" => &state.id, "error" => %e);
    }
}

fn run_one(stage: Stage, hook: &Hook, input: &[u8], netns: Option<&Path>) -> Result<(), Error> {
    let path = hook.path().clone();
    let spawn_err = |source| Error::HookSpawn {
        stage: stage.name(),
        path: path.clone(),
        source,
    };
    let mut cmd = Command::new(&path);
    if let Some(args) = hook.args()
        && let Some((argv0, rest)) = args.split_first()
    {
        cmd.arg0(argv0).args(rest);
    }
    cmd.env_clear();
    for kv in hook.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // Forked from a thread in the namespace, the hook runs there.
    let mut child = vc_hypervisor::tap::in_netns(netns, move || cmd.spawn()).map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its state is fine.
        let _ = stdin.write_all(input);
    }
    let timeout = hook
        .timeout()
        .filter(|t| *t > 0)
        .map_or(DEFAULT_HOOK_TIMEOUT, |t| Duration::from_secs(t as u64));
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait().map_err(spawn_err)? {
            Some(status) if status.success() => return Ok(()),
            Some(status) => {
                return Err(Error::HookFailed {
                    stage: stage.name(),
                    path,
                    status,
                });
            }
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::HookTimeout {
                    stage: stage.name(),
                    path,
                    timeout,
                });
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{HookBuilder, HooksBuilder, SpecBuilder};

    fn spec_with(prestart: Vec<Hook>) -> Spec {
        let hooks = HooksBuilder::default()
            .create_runtime(prestart)
            .build()
            .unwrap();
        SpecBuilder::default().hooks(hooks).build().unwrap()
    }

    fn sh(script: &str, timeout: Option<i64>) -> Hook {
        let mut b = HookBuilder::default()
            .path("/bin/sh")
            .args(vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()])
            .env(vec!["GREETING=hi".to_owned()]);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        b.build().unwrap()
    }

    #[tokio::test]
    async fn hooks_read_the_state_and_fail_with_path_and_status() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let ok = sh(
            &format!("echo $GREETING > {0}; cat >> {0}", out.display()),
            None,
        );
        let spec = spec_with(vec![ok]);
        let state = OciState::new(&spec, "c1", "created", Some(42), Path::new("/b"));
        run(Stage::CreateRuntime, &spec, &state, None)
            .await
            .unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let (env, json) = text.split_once('\n').unwrap();
        assert_eq!(env, "hi");
        let read: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(read["id"], "c1");
        assert_eq!(read["status"], "created");
        assert_eq!(read["pid"], 42);
        assert_eq!(read["bundle"], "/b");

        let spec = spec_with(vec![sh("exit 3", None)]);
        let e = run(Stage::CreateRuntime, &spec, &state, None)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, Error::HookFailed { stage: "createRuntime", path, status }
                if path == Path::new("/bin/sh") && status.code() == Some(3)),
            "{e}"
        );
        let spec = spec_with(vec![sh("sleep 10", Some(1))]);
        let started = Instant::now();
        let e = run(Stage::CreateRuntime, &spec, &state, None)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::HookTimeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let missing = HookBuilder::default()
            .path("/nonexistent/hook")
            .build()
            .unwrap();
        let spec = spec_with(vec![missing]);
        let e = run(Stage::CreateRuntime, &spec, &state, None)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::HookSpawn { .. }), "{e}");
        // Stages without hooks run nothing.
        run(Stage::Poststop, &spec, &state, None).await.unwrap();
    }
}
