//! The host side of the guest agent protocol.
//!
//! This crate will hold the async `Agent` trait, its ttrpc implementation and
//! the transports that carry it (virtio-serial, vsock, hybrid vsock). It is
//! filled by the agent issue; until then it exports nothing.
