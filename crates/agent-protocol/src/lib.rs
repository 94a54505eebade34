//! The guest agent protocol of virtcontainers-rs.
//!
//! Protobuf messages and ttrpc services, generated at build time from our own
//! `.proto` files (`protos/`) by `ttrpc-codegen` with the pure-Rust protobuf
//! parser: no `protoc` is needed. Service, method and message names and field
//! numbers follow the Kata Containers agent protocol (`grpc.AgentService`,
//! `grpc.Health`), so the bytes on the wire are the same: our client can drive
//! a Kata agent and a Kata runtime can drive our agent, for the methods
//! declared here.
//!
//! - [`agent`], [`health`], [`oci`], [`types`]: the messages;
//! - [`agent_ttrpc`], [`health_ttrpc`]: async (tokio) ttrpc clients
//!   (`AgentServiceClient`, `HealthClient`) and server traits
//!   (`AgentService`, `Health`, registered with `create_agent_service` /
//!   `create_health`);
//! - [`convert`]: between the protocol's OCI messages and the `oci-spec`
//!   types that embedders and the guest agent work with.
//!
//! # Example
//!
//! ```
//! use protobuf::Message;
//! use vc_agent_protocol::agent::WaitProcessRequest;
//!
//! let mut req = WaitProcessRequest::new();
//! req.container_id = "web".into();
//! req.exec_id = "web".into();
//! let bytes = req.write_to_bytes()?;
//! assert_eq!(WaitProcessRequest::parse_from_bytes(&bytes)?, req);
//! # Ok::<(), protobuf::Error>(())
//! ```

pub mod convert;

/// The `protobuf` crate the messages are generated for, so that embedders
/// build requests (`MessageField`, `EnumOrUnknown`, `Message`) with the
/// exact version the protocol uses, without a dependency of their own.
pub use protobuf;

#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc,
    unsafe_op_in_unsafe_fn
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/modules.rs"));
}

/// Messages of the agent service (`agent.proto`, package `grpc`).
pub use generated::agent;
/// Async ttrpc client and server of `grpc.AgentService`.
pub use generated::agent_ttrpc;
/// Messages of the health service (`health.proto`, package `grpc`).
pub use generated::health;
/// Async ttrpc client and server of `grpc.Health`.
pub use generated::health_ttrpc;
/// The OCI runtime spec as the protocol carries it (`oci.proto`, package `grpc`).
pub use generated::oci;
/// Network messages: interfaces, addresses, routes, ARP neighbours
/// (`types.proto`, package `types`, as Kata's).
pub use generated::types;

/// Fully qualified name of the agent service, as ttrpc addresses it.
pub const AGENT_SERVICE: &str = "grpc.AgentService";
/// Fully qualified name of the health service, as ttrpc addresses it.
pub const HEALTH_SERVICE: &str = "grpc.Health";

#[cfg(test)]
mod tests;
