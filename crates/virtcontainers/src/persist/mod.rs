//! Persistence of sandbox state: locked, versioned, atomically written.

mod file;
mod store;

pub use file::{STATE_VERSION, read_versioned, write_versioned};
pub use store::{LockMode, SandboxStore, Store};
