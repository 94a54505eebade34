//! virtcontainers-rs: run OCI containers inside lightweight virtual machines.
//!
//! This crate will compose the leaf crates (`vc-cgroups-host`,
//! `vc-hypervisor`, `vc-agent-client`, `vc-device-manager`) behind the
//! Sandbox/Container API (`create_sandbox`, `cleanup_container`, ...). It is
//! filled by the Sandbox API issue; until then it exports nothing.
