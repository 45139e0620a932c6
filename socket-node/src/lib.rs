//! The smart socket: sells electricity on its outlet (design.md, workspace table; paper seed 000).
//!
//! - [`config`]: the TOML config.
//! - [`outlet`]: the outlet state machine, `Standby` / `Paid` / `Lockout` (paper §III).
//! - [`store`]: sessions, terms, payments and the audit log in SQLite.
//! - [`node`]: a running socket: hardware, store, chain, watchers, the tick loop, recovery.
//! - [`seller`]: the seller side of each scheme, `onchain`, `single-fee` and `lightning`.
//! - [`service`]: the gRPC service `t2t.v1.Socket`, for cables.
//! - [`operator`]: the gRPC service `t2t.v1.Operator`, for the socket's owner (loopback only).

pub mod config;
pub mod node;
pub mod operator;
pub mod outlet;
pub mod seller;
pub mod service;
pub mod store;
