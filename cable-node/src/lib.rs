//! The smart cable: pays a socket for the energy it draws (design.md, workspace table; paper
//! seed 000).
//!
//! - [`config`]: the TOML config.
//! - [`policy`]: what the cable accepts to pay.
//! - [`signer`]: the cable's signature on the requests that change its session.
//! - [`store`]: sessions and signed payments in SQLite.
//! - [`error`]: [`error::CableError`], why a session failed.
//! - [`payer`]: the plug-in flow, and the payer side of each scheme (one module each).
//! - [`lightning`]: the cable's Lightning node: its channel or route to the socket, payments
//!   awaited on the node's events.

#![deny(missing_docs)]

pub mod config;
pub mod error;
pub mod lightning;
pub mod link;
pub mod payer;
pub mod policy;
pub mod signer;
pub mod store;
