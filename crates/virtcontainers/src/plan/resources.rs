//! The containers' resources as the cgroup planner and VM sizing both see
//! them (one aggregation input for both).

use vc_cgroups_host::plan::{ContainerResources, ContainerState};
use vc_types::ContainerId;

use crate::state::{ContainerPhase, SandboxState};

/// One container's resources and devices from its spec; a stopped
/// container counts for neither cgroups nor VM size.
pub fn resources_of(
    id: &ContainerId,
    spec: &oci_spec::runtime::Spec,
    stopped: bool,
) -> ContainerResources {
    let linux = spec.linux().clone().unwrap_or_default();
    ContainerResources {
        id: id.to_string(),
        resources: linux.resources().clone().unwrap_or_default(),
        devices: linux.devices().clone().unwrap_or_default(),
        state: if stopped {
            ContainerState::Stopped
        } else {
            ContainerState::Active
        },
    }
}

/// The resources of every container a sandbox's state records.
pub fn container_resources(state: &SandboxState) -> Vec<ContainerResources> {
    state
        .containers
        .values()
        .map(|c| resources_of(&c.id, &c.spec, c.phase == ContainerPhase::Stopped))
        .collect()
}
