//! Which sandbox a container belongs to, from the CRI annotations
//! containerd puts in its OCI spec: a pod is one VM served by one shim;
//! the pod's sandbox ("pause") container makes the VM and runs nothing in
//! it; a container without them is a sandbox of its own (`ctr run`).

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use virtcontainers::SandboxId;

use crate::error::{Error, Result};

/// `sandbox` or `container`.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// The pod's sandbox container id.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// What a container is to its sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerKind {
    /// A container with a sandbox of its own, named after it.
    Standalone,
    /// A pod's sandbox container: the pod's VM, with no process in it.
    PodSandbox,
    /// A container of pod `sandbox`, in the pod's VM.
    PodContainer {
        /// The pod's sandbox id.
        sandbox: String,
    },
}

impl ContainerKind {
    /// The kind from a spec's annotations.
    pub fn from_annotations(annotations: &HashMap<String, String>) -> Result<ContainerKind> {
        match annotations.get(CONTAINER_TYPE).map(String::as_str) {
            None => Ok(ContainerKind::Standalone),
            Some("sandbox") => Ok(ContainerKind::PodSandbox),
            Some("container") => {
                let sandbox = annotations
                    .get(SANDBOX_ID)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| Error::InvalidRequest {
                        reason: format!("a {CONTAINER_TYPE}=container without {SANDBOX_ID}"),
                    })?;
                Ok(ContainerKind::PodContainer {
                    sandbox: sandbox.clone(),
                })
            }
            Some(other) => Err(Error::InvalidRequest {
                reason: format!("{CONTAINER_TYPE}={other:?}: expected sandbox or container"),
            }),
        }
    }

    /// The id of the sandbox (and of the shim serving it) that container
    /// `id` of this kind runs in.
    pub fn sandbox_id(&self, id: &str) -> Result<SandboxId> {
        let sandbox = match self {
            ContainerKind::Standalone | ContainerKind::PodSandbox => id,
            ContainerKind::PodContainer { sandbox } => sandbox,
        };
        sandbox.parse().map_err(|source| Error::InvalidId {
            id: sandbox.to_owned(),
            source,
        })
    }

    /// Whether the container runs a process in the guest.
    pub fn runs_in_guest(&self) -> bool {
        !matches!(self, ContainerKind::PodSandbox)
    }
}

/// The part of an OCI spec the shim reads before it has a sandbox.
#[derive(Debug, Default, Deserialize)]
struct Annotated {
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// The annotations of `<bundle>/config.json`.
pub fn bundle_annotations(bundle: &Path) -> Result<HashMap<String, String>> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(Error::io("read", &path))?;
    let spec: Annotated = serde_json::from_slice(&text).map_err(|source| Error::Json {
        what: format!("OCI spec {}", path.display()),
        source,
    })?;
    Ok(spec.annotations)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cri_annotations_put_a_pods_containers_in_the_pods_sandbox() {
        let none = ContainerKind::from_annotations(&annotations(&[])).unwrap();
        assert_eq!(none, ContainerKind::Standalone);
        assert_eq!(none.sandbox_id("c1").unwrap().as_str(), "c1");

        let pause = annotations(&[(CONTAINER_TYPE, "sandbox"), (SANDBOX_ID, "pod1")]);
        let pause = ContainerKind::from_annotations(&pause).unwrap();
        assert_eq!(pause, ContainerKind::PodSandbox);
        assert_eq!(pause.sandbox_id("pod1").unwrap().as_str(), "pod1");
        assert!(!pause.runs_in_guest());

        let app = annotations(&[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "pod1")]);
        let app = ContainerKind::from_annotations(&app).unwrap();
        assert_eq!(app.sandbox_id("app").unwrap().as_str(), "pod1");
        assert!(app.runs_in_guest());
    }

    #[test]
    fn a_pod_container_without_its_pod_is_refused() {
        let orphan = annotations(&[(CONTAINER_TYPE, "container")]);
        assert!(matches!(
            ContainerKind::from_annotations(&orphan),
            Err(Error::InvalidRequest { .. })
        ));
        let odd = annotations(&[(CONTAINER_TYPE, "podsandbox")]);
        assert!(ContainerKind::from_annotations(&odd).is_err());
        let bad_id = ContainerKind::PodContainer {
            sandbox: "../x".into(),
        };
        assert!(matches!(
            bad_id.sandbox_id("c"),
            Err(Error::InvalidId { .. })
        ));
    }

    #[test]
    fn annotations_are_read_from_the_bundle() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"io.kubernetes.cri.container-type":"sandbox"}}"#,
        )
        .unwrap();
        let found = bundle_annotations(dir.path()).unwrap();
        assert_eq!(
            found.get(CONTAINER_TYPE).map(String::as_str),
            Some("sandbox")
        );
        assert!(matches!(
            bundle_annotations(&dir.path().join("nope")),
            Err(Error::Io { .. })
        ));
    }
}
