//! Every end-to-end and fault test against a real regtest bitcoind, in one test binary (one
//! link of ldk-node, BDK and tonic instead of one per file). Each module is a scenario family;
//! `cargo test -p integration --test it MODULE::` runs one.

mod anomaly;
mod architecture;
mod audit;
mod bitcoind_faults;
mod chain_outage;
mod cheating_cable;
mod cheating_socket;
mod crash_points;
mod dashboard;
mod flood;
mod keysend_cheats;
mod lightning;
mod lightning_cheats;
mod link;
mod metering;
mod no_txindex;
mod node;
mod operator;
mod outlets;
mod recovery;
mod replaced_payment;
mod restart;
mod single_fee;
mod single_fee_cheats;
mod spillman;
mod spillman_chain;
mod spillman_cheats;
mod toast;
mod trust;
