//! The network steps of `create_sandbox`: the host side (namespace, taps,
//! tc redirects, through their owner, which records each before making
//! it) before the VM, and the guest side (interfaces, routes, neighbours)
//! once the agent answers.

use vc_agent_client::Agent;

use super::Creation;
use crate::error::Error;
use crate::network::owner::{SandboxNetwork, no_failure};
use crate::undo::UndoStack;

impl Creation<'_> {
    /// The network, its undo registered; the VM's NICs remembered for
    /// its config.
    pub(super) async fn create_network(&mut self, undo: &mut UndoStack) -> Result<(), Error> {
        let state_dir = self.plan.state_dir.clone();
        let logger = self.logger.clone();
        let mut fail = no_failure;
        let created =
            SandboxNetwork::create(&state_dir, &self.plan.network, &self.logger, &mut fail).await;
        // Registered whatever the outcome: a create that failed half-way
        // unwound itself, and an undo of nothing is nothing.
        undo.push("network", move || async move {
            match SandboxNetwork::load(&state_dir)? {
                Some(mut network) => network.remove(&logger).await,
                None => Ok(()),
            }
        });
        self.network = Some(created?);
        Ok(())
    }

    /// The guest's interfaces, routes and neighbours, as scanned.
    pub(super) async fn configure_guest_network(&self, agent: &dyn Agent) -> Result<(), Error> {
        let Some(network) = &self.network else {
            return Ok(());
        };
        let record = network.record();
        let endpoints: Vec<_> = record.endpoints.iter().map(|e| (e.clone(), None)).collect();
        crate::network::configure(agent, record, &endpoints).await
    }
}
