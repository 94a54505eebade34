//! Vocabulary types shared by every virtcontainers-rs crate.
//!
//! - [`SandboxId`], [`ContainerId`] and [`ExecId`]: ids checked once, where
//!   they enter the SDK (the public API, a state file, the agent's wire),
//!   against one rule ([`validate_id`], Kata's rule plus one maximum
//!   length). A value of these types is valid by construction, so the
//!   crates below never check an id again.
//! - [`Signal`]: a signal number that exists, parsed from `SIGTERM`,
//!   `TERM` or `15` alike, instead of a bare integer.
//! - [`Unsupported`]: the one shape of "this host or backend cannot do
//!   that", carried by every crate's error enum.
//!
//! The crate has no I/O and depends only on `serde` and `thiserror` (and,
//! with the `slog` feature, on `slog`, for ids and signals as log values).
//!
//! # Example
//!
//! ```
//! use vc_types::{ContainerId, IdRule, SandboxId, Signal};
//!
//! let sandbox: SandboxId = "pod-1".parse()?;
//! let container = ContainerId::new("app.main")?;
//! assert_eq!(sandbox.as_str(), "pod-1");
//! assert_eq!(container.to_string(), "app.main");
//!
//! let bad = ContainerId::new(".hidden").unwrap_err();
//! assert_eq!(bad.rule, IdRule::Start);
//!
//! assert_eq!("SIGKILL".parse::<Signal>()?, Signal::KILL);
//! assert_eq!("15".parse::<Signal>()?.number(), 15);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod id;
mod signal;
mod unsupported;

pub use id::{ContainerId, ExecId, IdError, IdKind, IdRule, MAX_ID_LEN, SandboxId, validate_id};
pub use signal::{Signal, SignalError};
pub use unsupported::Unsupported;
