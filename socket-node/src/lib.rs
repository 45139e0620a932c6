//! The smart socket: sells electricity on its outlets (design.md, workspace table).
//!
//! It will hold the outlets and their state machine (`Standby`, `Paid`, `Lockout`; paper §III),
//! sessions, pricing, the seller side of each payment scheme, chain access, the LDK node, the
//! store, the gRPC server of `proto::v1::Socket`, config and CLI. The basic protocol (issue 3)
//! brings the first of these; this crate is the place they go.
