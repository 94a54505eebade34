//! The guest agent protocol of virtcontainers-rs.
//!
//! This crate will hold the `.proto` files of the agent service (service,
//! method and message names and field numbers matching the Kata Containers
//! agent, so the wire format is compatible) and the ttrpc code generated from
//! them. It is filled by the agent issue; until then it exports nothing.
