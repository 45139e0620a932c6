//! The smart cable: pays a socket for the energy it draws (design.md, workspace table; paper
//! seed 000).
//!
//! - [`config`]: the TOML config.
//! - [`policy`]: what the cable accepts to pay.
//! - [`store`]: sessions and signed payments in SQLite.
//! - [`payer`]: the plug-in flow, payer side of each scheme.
//! - [`lightning`]: the channel to the socket and invoice payments.
//! - [`spillman`]: the deposit, refund and payments of a seed-003 payment channel.

#![deny(missing_docs)]

pub mod config;
pub mod lightning;
pub mod payer;
pub mod policy;
pub mod spillman;
pub mod store;
