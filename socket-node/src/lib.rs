//! The smart socket: sells electricity on its outlets (design.md, "Architecture v2"; paper
//! seed 000).
//!
//! - [`config`]: the TOML config, one `[[outlets]]` table per outlet.
//! - [`error`]: [`error::SocketError`], mapped to a gRPC status with a reason code only at the
//!   edge.
//! - [`shared`]: what every outlet and seller shares: store, chain, Lightning node, keys.
//! - [`station`]: a running socket: its outlets and what they share; recovery at start, and
//!   the settler that broadcasts and watches.
//! - [`outlet`]: one outlet as an actor: its task owns the state machine (`Standby` / `Paid` /
//!   `Lockout`, paper §III), hardware and timers; the rest sends it commands.
//! - [`parents`]: the unconfirmed parents of what the socket credits: kept, sent again, judged.
//! - [`seller`]: the seller side of each scheme, `onchain`, `single-fee`, `spillman` and
//!   `lightning`, each seeing only its store, chain and outlet.
//! - [`sets`]: the single-fee input set in progress on each outlet.
//! - [`store`]: sessions, terms, payments and the audit log in SQLite.
//! - [`service`]: the gRPC service `t2t.v1.Socket`, for cables: routes each request to its
//!   outlet.
//! - [`limits`]: what one peer of the link may ask: connections, request rates per peer and
//!   per cable identity.
//! - [`operator`]: the gRPC service `t2t.v1.Operator`, for the socket's owner (loopback only).
//! - [`anchor`]: the audit log's head anchored on Bitcoin (`OP_RETURN`), and its check.
//! - [`receipts`]: a session's metering receipts exported, and checked.
//! - [`backup`]: backup of a data dir (also while the socket runs) and its restore.
//! - [`http`]: the owner's web dashboard, its JSON API and `/metrics` (axum, `http_listen`).
//! - [`metrics`]: the Prometheus metrics (`/metrics`).
//! - [`tokens`]: the operator API's admin and read-only bearer tokens.

#![deny(missing_docs)]

pub mod anchor;
pub mod backup;
pub mod chain_watch;
pub mod config;
pub mod error;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod operator;
pub mod outlet;
pub(crate) mod parents;
pub mod receipts;
pub mod seller;
pub mod service;
pub(crate) mod sets;
pub mod shared;
pub mod station;
pub mod store;
pub mod tokens;
