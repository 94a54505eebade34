//! The device manager of virtcontainers-rs.
//!
//! This crate will hold the registry of a sandbox's devices (block, VFIO,
//! generic character devices) with their reference counts, attach and detach
//! through the hypervisor's hot-plug, the ordering of VFIO devices and the
//! discovery of EROFS layers. It is filled by the device issue; until then it
//! exports nothing.
