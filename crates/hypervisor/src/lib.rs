//! The hypervisor layer of virtcontainers-rs.
//!
//! This crate will hold the async `Hypervisor` trait, the QEMU backend driven
//! through QMP, the accelerator probe (KVM when it can run a stock guest,
//! otherwise TCG) and the pure kernel command-line builder. It is filled by
//! the hypervisor issue; until then it exports nothing.
