//! A container's OCI hooks at its moments: created (`prestart`,
//! `createRuntime`, in the sandbox's network namespace, fatal), started
//! (`poststart`), deleted (`poststop`; both logged only).

use oci_spec::runtime::Spec;
use vc_types::ContainerId;

use super::Sandbox;
use crate::error::Error;
use crate::hooks::{self, OciState, Stage};
use crate::network::owner::SandboxNetwork;

impl Sandbox {
    /// The sandbox's network namespace, if it has one.
    pub fn netns(&self) -> Result<Option<std::path::PathBuf>, Error> {
        Ok(SandboxNetwork::load(&self.state_dir())?.and_then(|n| n.netns().map(Into::into)))
    }

    fn hook_state(
        &self,
        spec: &Spec,
        id: &ContainerId,
        status: &'static str,
        bundle: &std::path::Path,
    ) -> OciState {
        OciState::new(
            spec,
            id.as_str(),
            status,
            self.vm.vmm_pids().first().copied(),
            bundle,
        )
    }

    /// `prestart` then `createRuntime`, in the network namespace; the
    /// first failure is returned (the caller unwinds the create).
    pub(crate) async fn run_create_hooks(
        &self,
        spec: &Spec,
        id: &ContainerId,
        bundle: &std::path::Path,
    ) -> Result<(), Error> {
        let state = self.hook_state(spec, id, "created", bundle);
        let netns = self.netns()?;
        for stage in [Stage::Prestart, Stage::CreateRuntime] {
            hooks::run(stage, spec, &state, netns.as_deref()).await?;
        }
        Ok(())
    }

    /// `poststart` (failures logged).
    pub(crate) async fn run_poststart_hooks(
        &self,
        spec: &Spec,
        id: &ContainerId,
        bundle: &std::path::Path,
    ) {
        let state = self.hook_state(spec, id, "running", bundle);
        let netns = self.netns().ok().flatten();
        hooks::run_logged(
            Stage::Poststart,
            spec,
            &state,
            netns.as_deref(),
            &self.logger,
        )
        .await;
    }

    /// `poststop` (failures logged).
    pub(crate) async fn run_poststop_hooks(
        &self,
        spec: &Spec,
        id: &ContainerId,
        bundle: &std::path::Path,
    ) {
        let state = self.hook_state(spec, id, "stopped", bundle);
        let netns = self.netns().ok().flatten();
        hooks::run_logged(
            Stage::Poststop,
            spec,
            &state,
            netns.as_deref(),
            &self.logger,
        )
        .await;
    }
}
