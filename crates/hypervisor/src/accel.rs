//! Choosing the accelerator: KVM when it can run a stock guest kernel,
//! else TCG.
//!
//! A `/dev/kvm` that opens is not enough: hosts whose KVM is the PVM
//! flavour (`/sys/module/kvm_pvm` present) accept the ioctls but a stock
//! kernel dies with an emulation failure early in boot. The probe
//! ([`probe_kvm`]) gathers the facts; [`choose`] is the pure decision.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Accelerator;
use crate::error::{Error, KvmUnusable};

/// The accelerator a VM runs with, after probing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolvedAccelerator {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation (multi-threaded TCG).
    Tcg,
}

/// The choice and the reason for it (for the log line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceleratorChoice {
    /// What the VM will use.
    pub accelerator: ResolvedAccelerator,
    /// Why.
    pub reason: String,
}

/// Whether KVM on this host can run a stock guest.
pub fn probe_kvm() -> Result<(), KvmUnusable> {
    probe_kvm_at(Path::new("/sys/module/kvm_pvm"), || {
        let errno = |e: kvm_ioctls::Error| std::io::Error::from_raw_os_error(e.errno());
        let kvm = kvm_ioctls::Kvm::new().map_err(|e| KvmUnusable::DeviceUnavailable(errno(e)))?;
        let version = kvm.get_api_version();
        if version != 12 {
            return Err(KvmUnusable::ApiVersion(version));
        }
        kvm.create_vm()
            .map_err(|e| KvmUnusable::CreateVm(errno(e)))?;
        Ok(())
    })
}

/// [`probe_kvm`] with the PVM marker path and the ioctl probe injected.
fn probe_kvm_at(
    pvm_marker: &Path,
    ioctls: impl FnOnce() -> Result<(), KvmUnusable>,
) -> Result<(), KvmUnusable> {
    // Checked first: on PVM hosts the ioctls succeed and only the guest fails.
    if pvm_marker.exists() {
        return Err(KvmUnusable::Pvm);
    }
    ioctls()
}

/// Decides the accelerator from the request and the probe result.
pub fn choose(
    requested: Accelerator,
    kvm: Result<(), KvmUnusable>,
) -> Result<AcceleratorChoice, Error> {
    match (requested, kvm) {
        (Accelerator::Tcg, _) => Ok(AcceleratorChoice {
            accelerator: ResolvedAccelerator::Tcg,
            reason: "tcg requested in the config".into(),
        }),
        (Accelerator::Kvm | Accelerator::Auto, Ok(())) => Ok(AcceleratorChoice {
            accelerator: ResolvedAccelerator::Kvm,
            reason: "KVM is usable".into(),
        }),
        (Accelerator::Kvm, Err(why)) => Err(Error::KvmUnusable(why)),
        (Accelerator::Auto, Err(why)) => Ok(AcceleratorChoice {
            accelerator: ResolvedAccelerator::Tcg,
            reason: format!("KVM unusable ({why}): falling back to TCG"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_marker_wins_over_working_ioctls() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("kvm_pvm");
        std::fs::create_dir(&marker).unwrap();
        assert!(matches!(
            probe_kvm_at(&marker, || Ok(())),
            Err(KvmUnusable::Pvm)
        ));
        assert!(matches!(
            probe_kvm_at(&dir.path().join("absent"), || Ok(())),
            Ok(())
        ));
        assert!(matches!(
            probe_kvm_at(&dir.path().join("absent"), || Err(KvmUnusable::ApiVersion(
                11
            ))),
            Err(KvmUnusable::ApiVersion(11))
        ));
    }

    #[test]
    fn auto_picks_kvm_only_when_usable() {
        assert_eq!(
            choose(Accelerator::Auto, Ok(())).unwrap().accelerator,
            ResolvedAccelerator::Kvm
        );
        let choice = choose(Accelerator::Auto, Err(KvmUnusable::Pvm)).unwrap();
        assert_eq!(choice.accelerator, ResolvedAccelerator::Tcg);
        assert!(choice.reason.contains("PVM"), "{}", choice.reason);
    }

    #[test]
    fn explicit_choices_are_honoured() {
        assert_eq!(
            choose(Accelerator::Tcg, Ok(())).unwrap().accelerator,
            ResolvedAccelerator::Tcg
        );
        assert_eq!(
            choose(Accelerator::Kvm, Ok(())).unwrap().accelerator,
            ResolvedAccelerator::Kvm
        );
        let err = choose(Accelerator::Kvm, Err(KvmUnusable::Pvm)).unwrap_err();
        assert!(matches!(err, Error::KvmUnusable(KvmUnusable::Pvm)), "{err}");
    }

    #[test]
    fn this_host_probe_agrees_with_the_host() {
        // On these CI machines KVM is PVM: the probe must say so rather than
        // report KVM as usable; without /dev/kvm it must say that.
        let pvm = Path::new("/sys/module/kvm_pvm").exists();
        match probe_kvm() {
            Err(KvmUnusable::Pvm) => assert!(pvm),
            Err(KvmUnusable::DeviceUnavailable(_)) => assert!(!pvm),
            other => {
                assert!(!pvm, "PVM host reported as {other:?}");
                assert!(
                    Path::new("/dev/kvm").exists(),
                    "no /dev/kvm but probe said {other:?}"
                );
            }
        }
    }
}
