//! Booting VMs on a shared host: how many boot at once
//! ([`admission`]), and how long a boot is waited for ([`progress`]).

pub mod admission;
pub mod progress;

pub use admission::{AdmissionError, BootAdmission, BootSlot};
pub use progress::{BootBudget, BootVerdict};
