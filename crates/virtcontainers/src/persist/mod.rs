//! Persistence of sandbox state: locked, versioned, atomically written.

mod store;

pub use store::{LockMode, STATE_VERSION, SandboxStore, Store};
