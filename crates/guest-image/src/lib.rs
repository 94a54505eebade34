//! Builds what a sandbox VM boots.
//!
//! This crate will extract `vmlinux` from the distribution's kernel package,
//! collect the kernel modules the guest needs and write a cpio initramfs
//! whose `/init` is the guest agent. It is filled by the hypervisor issue;
//! until then it exports nothing.
