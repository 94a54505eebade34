//! How many VMs boot at once on this host, across processes.
//!
//! A boot under TCG takes a whole host CPU for seconds; twenty at once on
//! two cores all progress equally slowly and all miss their deadline
//! together, so the host runs none instead of most. Boots beyond the
//! limit wait for a slot instead.
//!
//! A slot is an abstract unix socket name bound by the booting process:
//! the kernel frees it when the process exits however it exits, so a
//! creator killed mid-boot never holds a slot, and nothing is left on a
//! filesystem. Abstract names are per network namespace: processes that
//! should share a limit must run in the same one (a runtime's processes
//! normally do; guests' namespaces are irrelevant).

use std::num::NonZeroU32;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vc_hypervisor::accel::ResolvedAccelerator;

/// How many VMs may boot at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootAdmission {
    /// A limit from the host: its CPUs under TCG (a TCG boot keeps one
    /// busy), four per CPU under KVM.
    #[default]
    Auto,
    /// At most this many.
    Limit(NonZeroU32),
    /// No limit.
    Unlimited,
}

impl BootAdmission {
    /// The number of slots for a VM accelerated by `accel` on a host
    /// with `cpus` CPUs; `None` for no limit.
    pub fn slots(self, accel: ResolvedAccelerator, cpus: NonZeroU32) -> Option<NonZeroU32> {
        match self {
            BootAdmission::Auto => Some(match accel {
                ResolvedAccelerator::Tcg => cpus,
                ResolvedAccelerator::Kvm => cpus.saturating_mul(NonZeroU32::new(4).expect("4")),
            }),
            BootAdmission::Limit(n) => Some(n),
            BootAdmission::Unlimited => None,
        }
    }
}

/// A held boot slot; dropping it lets the next boot in.
#[derive(Debug)]
pub struct BootSlot {
    index: u32,
    _name: UnixListener,
}

impl BootSlot {
    /// Which slot (0-based).
    pub fn index(&self) -> u32 {
        self.index
    }
}

/// The slot names of a limit: one namespace per `scope` (the runtime
/// root, so unrelated embedders with their own roots do not share).
fn slot_name(scope: &str, index: u32) -> Vec<u8> {
    // A hash keeps the name short whatever the scope's length.
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    scope.hash(&mut h);
    format!("virtcontainers/boot-slot/{:016x}/{index}", h.finish()).into_bytes()
}

/// Tries each of `slots` slots once.
fn try_take(scope: &str, slots: NonZeroU32) -> std::io::Result<Option<BootSlot>> {
    for index in 0..slots.get() {
        let addr = SocketAddr::from_abstract_name(slot_name(scope, index))?;
        match UnixListener::bind_addr(&addr) {
            Ok(listener) => {
                return Ok(Some(BootSlot {
                    index,
                    _name: listener,
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Why no slot was had.
#[derive(Debug, thiserror::Error)]
pub enum AdmissionError {
    /// All slots stayed taken for the whole wait.
    #[error("all {slots} boot slots stayed taken for {waited:?}")]
    Timeout {
        /// The limit.
        slots: u32,
        /// How long it waited.
        waited: Duration,
    },
    /// Binding the slot's name failed for another reason.
    #[error("taking a boot slot")]
    Bind(#[source] std::io::Error),
}

/// Waits for one of `slots` slots of `scope`, polling, for at most
/// `timeout`. Not first-come first-served: a slot goes to whichever
/// waiter looks first once it is free.
pub async fn take_slot(
    scope: &str,
    slots: NonZeroU32,
    timeout: Duration,
) -> Result<BootSlot, AdmissionError> {
    const POLL: Duration = Duration::from_millis(50);
    let started = Instant::now();
    loop {
        if let Some(slot) = try_take(scope, slots).map_err(AdmissionError::Bind)? {
            return Ok(slot);
        }
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(AdmissionError::Timeout {
                slots: slots.get(),
                waited,
            });
        }
        tokio::time::sleep(POLL.min(timeout - waited)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    #[test]
    fn the_default_limit_follows_the_host_and_the_accelerator() {
        let auto = BootAdmission::Auto;
        assert_eq!(auto.slots(ResolvedAccelerator::Tcg, n(2)), Some(n(2)));
        assert_eq!(auto.slots(ResolvedAccelerator::Kvm, n(2)), Some(n(8)));
        assert_eq!(
            BootAdmission::Limit(n(3)).slots(ResolvedAccelerator::Kvm, n(64)),
            Some(n(3))
        );
        assert_eq!(
            BootAdmission::Unlimited.slots(ResolvedAccelerator::Tcg, n(1)),
            None
        );
    }

    #[tokio::test]
    async fn boots_beyond_the_limit_wait_for_a_freed_slot() {
        let scope = format!("test-{}", std::process::id());
        let a = take_slot(&scope, n(2), Duration::ZERO).await.unwrap();
        let b = take_slot(&scope, n(2), Duration::ZERO).await.unwrap();
        assert_ne!(a.index(), b.index());
        let third = take_slot(&scope, n(2), Duration::from_millis(120)).await;
        assert!(
            matches!(third, Err(AdmissionError::Timeout { slots: 2, waited }) if waited >= Duration::from_millis(120)),
            "{third:?}"
        );
        let waiter = tokio::spawn({
            let scope = scope.clone();
            async move { take_slot(&scope, n(2), Duration::from_secs(10)).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "no slot is free yet");
        let freed = b.index();
        drop(b);
        let c = waiter.await.unwrap().unwrap();
        assert_eq!(c.index(), freed);
        // Another scope has its own slots.
        take_slot(&format!("{scope}-other"), n(1), Duration::ZERO)
            .await
            .unwrap();
        drop(a);
    }

    #[test]
    fn a_slot_held_by_another_process_is_freed_when_it_is_killed() {
        let scope = format!("test-dies-{}", std::process::id());
        let name = String::from_utf8(slot_name(&scope, 0)).unwrap();
        // Another process takes slot 0 and waits (Python is on every CI
        // machine; the point is a process that is not this one).
        let mut holder = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys,time\n\
                 s=socket.socket(socket.AF_UNIX)\n\
                 s.bind(b'\\0'+sys.argv[1].encode())\n\
                 print('held',flush=True)\n\
                 time.sleep(60)",
                &name,
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (a CI prerequisite) runs");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line, "held\n");
        assert!(
            try_take(&scope, n(1)).unwrap().is_none(),
            "another process's slot is taken"
        );
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert!(
            try_take(&scope, n(1)).unwrap().is_some(),
            "the killed process's slot is free"
        );
    }
}
