//! The smart cable: pays a socket for the energy it draws (design.md, workspace table).
//!
//! It will hold the spending policy, the wallet, the LDK node, the payer side of each payment
//! scheme, the gRPC client of `proto::v1::Socket`, its own meter check (paper §VII.B), the store,
//! config and CLI. The basic protocol (issue 3) brings the first of these; this crate is the place
//! they go.
