//! containerd's task API v2, its events and types, generated from
//! `protos/` at build time.

#![allow(missing_docs, clippy::all, unreachable_pub)]

include!(concat!(env!("OUT_DIR"), "/modules.rs"));
