//! The VM's configuration: sizing and the hypervisor config, checked by
//! the hypervisor layer's own validator.

use std::path::Path;

use vc_hypervisor::{
    AgentChannel, ConfigError, HypervisorConfig, KernelParams, KernelParamsBuilder, MemoryConfig,
    VcpuConfig,
};

use super::vm_size::{VmBaseSize, VmSize};
use crate::config::{SandboxConfig, VmConfig};
use crate::error::Error;
use crate::fs_share::FsShare;

fn invalid(source: ConfigError) -> Error {
    Error::InvalidVmConfig { source }
}

/// The VM's size before any container counts, checked.
pub(super) fn base_size(vm: &VmConfig) -> Result<VmBaseSize, Error> {
    if vm.default_vcpus == 0 {
        return Err(invalid(ConfigError::ZeroVcpus));
    }
    if vm.max_vcpus < vm.default_vcpus || vm.max_vcpus > vc_hypervisor::MAX_VCPUS {
        return Err(invalid(ConfigError::InvalidVcpus {
            boot: vm.default_vcpus,
            max: vm.max_vcpus,
            limit: vc_hypervisor::MAX_VCPUS,
        }));
    }
    if vm.default_memory_mib < vc_hypervisor::MIN_MEMORY_MIB {
        return Err(invalid(ConfigError::MemoryTooSmall {
            mib: vm.default_memory_mib,
            min: vc_hypervisor::MIN_MEMORY_MIB,
        }));
    }
    if vm.max_memory_mib < vm.default_memory_mib {
        return Err(invalid(ConfigError::MaxMemoryBelowBoot {
            boot: vm.default_memory_mib,
            max: vm.max_memory_mib,
        }));
    }
    Ok(VmBaseSize {
        default_vcpus: vm.default_vcpus,
        default_memory_mib: vm.default_memory_mib,
        max_vcpus: Some(vm.max_vcpus),
        max_memory_mib: Some(vm.max_memory_mib),
    })
}

/// The hypervisor config of the sandbox's VM, `size`d (already checked
/// against the maxima, which it can grow to), booting with the share's
/// device, validated.
pub(super) fn hypervisor_config(
    config: &SandboxConfig,
    runtime_dir: &Path,
    size: VmSize,
    share: &dyn FsShare,
) -> Result<HypervisorConfig, Error> {
    let vm = &config.vm;
    let mut hc =
        HypervisorConfig::new(config.id.as_str(), &vm.kernel, runtime_dir).with_initrd(&vm.initrd);
    hc.accelerator = vm.accelerator;
    hc.vcpus = VcpuConfig {
        boot: size.vcpus,
        max: vm.max_vcpus,
    };
    hc.memory = MemoryConfig {
        boot_mib: size.memory_mib,
        max_mib: vm.max_memory_mib,
        shared: share.needs_shared_memory(),
    };
    hc.agent_channel = AgentChannel::VirtioSerial;
    hc.keep_logs = vm.debug;
    hc.lifetime = config.lifetime.into();
    hc.kernel_params = kernel_params(vm)?;
    // As Kata does: the guest sizes its per-CPU data for every vCPU that
    // can be hot-plugged (a user's own nr_cpus= wins).
    hc.kernel_params
        .set_default("nr_cpus", Some(vm.max_vcpus.to_string()));
    // Room for memory hot-plug puts guest-physical addresses above 4 GiB
    // (QEMU maps DIMMs there), and the guest then sets aside a 64 MiB DMA
    // bounce buffer for devices that cannot reach them. Every device the
    // SDK gives the guest is virtio without a platform IOMMU, which
    // bypasses the DMA API: the buffer would only take 64 MiB from the
    // containers (measured: MemTotal 393 vs 457 MiB of a 512 MiB guest).
    // A user passing through a device with 32-bit DMA sets `swiotlb=` (the
    // user's own wins).
    if vm.max_memory_mib > size.memory_mib {
        hc.kernel_params
            .set_default("swiotlb", Some("noforce".to_owned()));
    }
    // Checked without the share's device: its directory is made by a later
    // step (the hypervisor checks the whole config again when it starts).
    hc.validate().map_err(invalid)?;
    hc.devices.push(share.device());
    Ok(hc)
}

/// The guest kernel command line: defaults, debug switches, then the
/// user's parameters overriding them by key.
fn kernel_params(vm: &VmConfig) -> Result<KernelParams, Error> {
    let mut params = KernelParamsBuilder::new();
    if vm.debug {
        params = params.debug(true).agent("log", "debug");
    }
    let extra = KernelParams::parse(&vm.kernel_params.join(" ")).map_err(invalid)?;
    Ok(params.extra(extra).build())
}
