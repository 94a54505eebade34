//! The sandbox's network, owned by one type: [`SandboxNetwork`] makes the
//! namespace (when asked), the taps and the tc redirects, records each
//! before making it, adds what CNI adds later (rescan), and removes all
//! of it, from this process or any other (its record).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use slog::{Logger, info, warn};
use vc_hypervisor::{Device, NetworkDevice};

use super::netlink::{Netlink, link_txqlen};
use super::netns;
use super::plan::NetworkPlan;
use super::record::{EndpointRecord, Made, NetworkRecord, RECORD_FILE};
use super::scan::NetworkInterface;
use crate::error::Error;
use crate::persist::{read_versioned, write_versioned};

/// Called before each thing is made, with its name: a test makes it fail
/// there; production code passes [`no_failure`].
pub(crate) type Failpoint<'a> = &'a mut (dyn FnMut(&'static str) -> Result<(), Error> + Send);

/// The failpoint that never fails.
pub(crate) fn no_failure(_: &'static str) -> Result<(), Error> {
    Ok(())
}

/// The sandbox's network and its record.
#[derive(Debug)]
pub(crate) struct SandboxNetwork {
    file: PathBuf,
    record: NetworkRecord,
}

impl SandboxNetwork {
    /// Sets up the planned network: the namespace (made when planned so),
    /// and a tap with its tc redirects for each interface found in it.
    /// A failure unwinds: nothing is left but the namespace as it was.
    pub(crate) async fn create(
        state_dir: &Path,
        plan: &NetworkPlan,
        logger: &Logger,
        fail: Failpoint<'_>,
    ) -> Result<Self, Error> {
        let mut owner = SandboxNetwork {
            file: state_dir.join(RECORD_FILE),
            record: NetworkRecord {
                netns: plan.netns.clone(),
                created_netns: plan.create_netns,
                ..NetworkRecord::default()
            },
        };
        owner.write()?;
        match owner.set_up(logger, fail).await {
            Ok(()) => Ok(owner),
            Err(e) => {
                if let Err(undo) = owner.remove(logger).await {
                    warn!(logger, "undoing the network failed"; "error" => %undo);
                }
                Err(e)
            }
        }
    }

    async fn set_up(&mut self, logger: &Logger, fail: Failpoint<'_>) -> Result<(), Error> {
        let Some(ns) = self.record.netns.clone() else {
            return Ok(());
        };
        if self.record.created_netns {
            fail("netns")?;
            netns::create(&ns)?;
        }
        let nl = Netlink::connect(Some(&ns))?;
        if self.record.created_netns
            && let Some(lo) = nl.link("lo").await?
        {
            nl.set_up(lo.header.index, "lo").await?;
        }
        fail("scan")?;
        let scan = nl.scan(&BTreeSet::new()).await?;
        for interface in scan.interfaces {
            self.add_endpoint(&nl, interface, false, fail).await?;
        }
        self.record.routes = scan.routes;
        self.record.neighbors = scan.neighbors;
        self.write()?;
        info!(logger, "network set up"; "netns" => %ns.display(),
            "interfaces" => self.record.endpoints.len(), "routes" => self.record.routes.len());
        Ok(())
    }

    /// The owner of the network recorded in `state_dir`, `None` when the
    /// sandbox has none recorded.
    pub(crate) fn load(state_dir: &Path) -> Result<Option<Self>, Error> {
        let file = state_dir.join(RECORD_FILE);
        Ok(read_versioned::<NetworkRecord>(&file)?.map(|record| SandboxNetwork { file, record }))
    }

    fn write(&self) -> Result<(), Error> {
        write_versioned(&self.file, &self.record)
    }

    /// The record.
    pub(crate) fn record(&self) -> &NetworkRecord {
        &self.record
    }

    /// The namespace in use.
    pub(crate) fn netns(&self) -> Option<&Path> {
        self.record.netns.as_deref()
    }

    /// The VM's NICs for the interfaces found at create (cold-plugged).
    pub(crate) fn cold_nics(&self) -> Vec<Device> {
        self.record
            .endpoints
            .iter()
            .filter(|e| !e.hotplugged)
            .map(|e| self.nic(e))
            .collect()
    }

    /// The VM's NIC of an endpoint: on its tap, with the veth's MAC.
    pub(crate) fn nic(&self, e: &EndpointRecord) -> Device {
        Device::Network(NetworkDevice {
            id: e.nic_id.clone(),
            tap: e.tap.clone(),
            mac: e.interface.mac,
            netns: self.record.netns.clone(),
        })
    }

    /// Carries `interface` into the VM's reach: a tap beside it (its MTU,
    /// up) and ingress redirects both ways, each recorded before it is
    /// made. A failure leaves the record naming what may exist.
    async fn add_endpoint(
        &mut self,
        nl: &Netlink,
        interface: NetworkInterface,
        hotplugged: bool,
        fail: Failpoint<'_>,
    ) -> Result<(), Error> {
        let n = self.record.endpoints.len();
        let tap = format!("tap{n}_vc");
        let veth_name = interface.name.clone();
        let conflict = |reason: String| Error::NetworkConflict {
            link: veth_name.clone(),
            netns: nl.netns().map(Path::to_owned),
            reason,
        };
        if nl.link(&tap).await?.is_some() {
            return Err(conflict(format!("a link named {tap} exists already")));
        }
        if nl.has_ingress(interface.index).await? {
            return Err(conflict("it has an ingress qdisc already".into()));
        }
        let (veth, veth_index, mtu) = (interface.name.clone(), interface.index, interface.mtu);
        let veth_txqlen = nl.link(&veth).await?.and_then(|l| link_txqlen(&l));
        self.record.endpoints.push(EndpointRecord {
            interface,
            tap: tap.clone(),
            nic_id: format!("net{n}"),
            hotplugged,
            made: Vec::new(),
            veth_txqlen,
        });
        let tap_index = self.make_tap(nl, &tap, mtu, fail).await?;
        self.made(Made::TapIngress)?;
        fail("tap ingress")?;
        nl.add_ingress(tap_index, &tap).await?;
        self.made(Made::VethIngress)?;
        fail("veth ingress")?;
        nl.add_ingress(veth_index, &veth).await?;
        self.made(Made::VethRedirect)?;
        fail("veth redirect")?;
        nl.add_redirect(veth_index, tap_index, (&veth, &tap))
            .await?;
        self.made(Made::TapRedirect)?;
        fail("tap redirect")?;
        nl.add_redirect(tap_index, veth_index, (&tap, &veth))
            .await?;
        Ok(())
    }

    /// The tap of the last endpoint, recorded, made persistent, with
    /// `mtu`, up; its index.
    async fn make_tap(
        &mut self,
        nl: &Netlink,
        tap: &str,
        mtu: u32,
        fail: Failpoint<'_>,
    ) -> Result<u32, Error> {
        self.made(Made::Tap)?;
        fail("tap")?;
        let netns = nl.netns().map(Path::to_owned);
        let created = {
            let (tap, netns) = (tap.to_owned(), netns.clone());
            tokio::task::spawn_blocking(move || {
                vc_hypervisor::tap::create_persistent(&tap, netns.as_deref())
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
        };
        if let Err(source) = created {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                // Someone else's: never ours to delete.
                self.unmade(Made::Tap)?;
            }
            return Err(Error::Tap {
                tap: tap.to_owned(),
                netns,
                source,
            });
        }
        fail("tap up")?;
        let index =
            nl.link(tap)
                .await?
                .map(|l| l.header.index)
                .ok_or_else(|| Error::NetworkConflict {
                    link: tap.to_owned(),
                    netns: netns.clone(),
                    reason: "the tap vanished once made".into(),
                })?;
        nl.set_mtu_up(index, mtu, tap).await?;
        Ok(index)
    }

    fn made(&mut self, what: Made) -> Result<(), Error> {
        if let Some(e) = self.record.endpoints.last_mut() {
            e.made.push(what);
        }
        self.write()
    }

    fn unmade(&mut self, what: Made) -> Result<(), Error> {
        if let Some(e) = self.record.endpoints.last_mut() {
            e.made.retain(|m| *m != what);
        }
        self.write()
    }

    /// Adds the interfaces that appeared in the namespace since the last
    /// scan (CNI ran again): their taps and redirects, recorded. Returns
    /// the new endpoints; a failure removes what it made for them.
    pub(crate) async fn rescan(
        &mut self,
        logger: &Logger,
        fail: Failpoint<'_>,
    ) -> Result<Vec<EndpointRecord>, Error> {
        let Some(ns) = self.record.netns.clone() else {
            return Ok(Vec::new());
        };
        let nl = Netlink::connect(Some(&ns))?;
        let ours: BTreeSet<String> = self
            .record
            .endpoints
            .iter()
            .map(|e| e.tap.clone())
            .collect();
        let known: BTreeSet<String> = self
            .record
            .endpoints
            .iter()
            .map(|e| e.interface.name.clone())
            .collect();
        let scan = nl.scan(&ours).await?;
        let before = self.record.endpoints.len();
        let mut result = Ok(());
        for interface in scan
            .interfaces
            .into_iter()
            .filter(|i| !known.contains(&i.name))
        {
            result = self.add_endpoint(&nl, interface, true, fail).await;
            if result.is_err() {
                break;
            }
        }
        if let Err(e) = result {
            self.forget_from(&nl, before, logger).await;
            return Err(e);
        }
        self.record.routes = scan.routes;
        self.record.neighbors = scan.neighbors;
        self.write()?;
        Ok(self.record.endpoints[before..].to_vec())
    }

    /// Removes the endpoints from index `first` on: what was made for
    /// them, then their records (the undo of a failed rescan).
    pub(crate) async fn remove_from(&mut self, first: usize, logger: &Logger) -> Result<(), Error> {
        let nl = Netlink::connect(self.record.netns.as_deref())?;
        self.forget_from(&nl, first, logger).await;
        Ok(())
    }

    async fn forget_from(&mut self, nl: &Netlink, first: usize, logger: &Logger) {
        while self.record.endpoints.len() > first {
            let Some(e) = self.record.endpoints.last().cloned() else {
                break;
            };
            if let Err(err) = remove_endpoint(nl, &e).await {
                warn!(logger, "removing an endpoint failed"; "tap" => &e.tap, "error" => %err);
                return;
            }
            self.record.endpoints.pop();
            if let Err(err) = self.write() {
                warn!(logger, "network record not written"; "error" => %err);
            }
        }
    }

    /// Removes everything recorded, last first: the taps (their qdiscs and
    /// filters with them), the veths' ingress qdiscs (their filters with
    /// them), the namespace if the SDK made it; then the record.
    pub(crate) async fn remove(&mut self, logger: &Logger) -> Result<(), Error> {
        let netns_alive = self
            .record
            .netns
            .as_deref()
            .is_some_and(|ns| netns::not_a_netns(ns).is_none());
        if netns_alive {
            let nl = Netlink::connect(self.record.netns.as_deref())?;
            self.forget_from(&nl, 0, logger).await;
            if !self.record.endpoints.is_empty() {
                return Err(Error::NetworkConflict {
                    link: self.record.endpoints[0].interface.name.clone(),
                    netns: self.record.netns.clone(),
                    reason: "what the SDK made for it could not be removed".into(),
                });
            }
        } else {
            // A namespace that is gone took its links with it.
            self.record.endpoints.clear();
        }
        if self.record.created_netns
            && let Some(ns) = &self.record.netns
        {
            netns::delete(ns)?;
        }
        match std::fs::remove_file(&self.file) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::host_io("remove", &self.file)(e)),
        }
    }
}

/// Removes what was made for one endpoint: its tap (with the tap's
/// qdisc and filter), the veth's ingress qdisc (with its filter).
async fn remove_endpoint(nl: &Netlink, e: &EndpointRecord) -> Result<(), Error> {
    if e.made.contains(&Made::Tap) {
        nl.delete_link(&e.tap).await?;
    }
    if e.made.contains(&Made::VethIngress) {
        nl.delete_ingress(e.interface.index, &e.interface.name)
            .await?;
        if let Some(len) = e.veth_txqlen {
            nl.set_txqlen(e.interface.index, len, &e.interface.name)
                .await?;
        }
    }
    Ok(())
}

/// Removes the network recorded in `state_dir`, if any, from a
/// synchronous caller (the teardown of a stopped or dead sandbox): the
/// netlink work runs on a thread of its own with its own small runtime.
pub(crate) fn remove_recorded(state_dir: &Path, logger: &Logger) -> Result<(), Error> {
    let Some(mut owner) = SandboxNetwork::load(state_dir)? else {
        return Ok(());
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| Error::host_io("start a runtime for", state_dir)(e))?;
            rt.block_on(owner.remove(logger))
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Helper {
                program: "network teardown".into(),
                reason: "panicked".into(),
            })
        })
    })
}
