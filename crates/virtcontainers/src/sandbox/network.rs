//! Interfaces CNI adds to a running sandbox's namespace:
//! [`Sandbox::rescan_network`].

use std::time::Duration;

use slog::{info, warn};
use vc_hypervisor::GuestAddress;

use super::Sandbox;
use crate::error::Error;
use crate::network::owner::{SandboxNetwork, no_failure};
use crate::network::{EndpointRecord, NetworkInterface};
use crate::persist::LockMode;

/// How long an unplug of a half-added NIC may take.
const UNPLUG_WAIT: Duration = Duration::from_secs(10);

impl Sandbox {
    /// Brings in the interfaces that appeared in the sandbox's network
    /// namespace since it was created (CNI ran again, e.g. a second
    /// network attached): for each, a tap with its tc redirects, a NIC
    /// hot-plugged into the VM with the interface's MAC, the interface
    /// configured in the guest; then the guest's routes and neighbours
    /// follow the namespace's. Returns the interfaces added (empty when
    /// nothing is new, or the sandbox has no network). A failure removes
    /// everything it made for them.
    pub async fn rescan_network(&self) -> Result<Vec<NetworkInterface>, Error> {
        let (store, mut state) = self.lock(LockMode::Exclusive).await?;
        let Some(mut network) = SandboxNetwork::load(store.dir())? else {
            return Ok(Vec::new());
        };
        let first = network.record().endpoints.len();
        let added = network.rescan(&self.logger, &mut no_failure).await?;
        if added.is_empty() {
            return Ok(Vec::new());
        }
        let plugged = self.plug_all(&network, &added).await;
        let configured = match &plugged {
            Ok(p) => crate::network::configure(self.agent.as_ref(), network.record(), p).await,
            Err(_) => Ok(()),
        };
        let outcome = plugged.and_then(|p| configured.map(|()| p));
        let saved = self
            .vm
            .save_state()
            .map_err(Error::hypervisor("save the VM's state"));
        if let Ok(vm) = saved {
            state.resources.vm = Some(vm);
            store.write(&state)?;
        }
        if let Err(e) = outcome {
            for e in &added {
                if let Err(err) = self.vm.unplug(&e.nic_id, UNPLUG_WAIT).await {
                    warn!(self.logger, "NIC not unplugged"; "nic" => &e.nic_id, "error" => %err);
                }
            }
            network.remove_from(first, &self.logger).await?;
            if let Ok(vm) = self.vm.save_state() {
                state.resources.vm = Some(vm);
                store.write(&state)?;
            }
            return Err(e);
        }
        info!(self.logger, "network rescanned"; "added" => added.len());
        Ok(added.into_iter().map(|e| e.interface).collect())
    }

    /// Hot-plugs the NICs of `added`; returns each with its guest address.
    async fn plug_all(
        &self,
        network: &SandboxNetwork,
        added: &[EndpointRecord],
    ) -> Result<Vec<(EndpointRecord, Option<GuestAddress>)>, Error> {
        let mut plugged = Vec::new();
        for e in added {
            let attached = self
                .vm
                .hotplug(network.nic(e))
                .await
                .map_err(Error::hypervisor("hot-plug a NIC"))?;
            plugged.push((e.clone(), Some(attached.address)));
        }
        Ok(plugged)
    }
}
