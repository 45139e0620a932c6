//! `bench`: how fast t2t pays, measured on this machine against a real regtest bitcoind
//! (design.md "Tests (v2)": figures come from here, never from timed tests). Prints a table per
//! bench and, with `--json FILE`, writes one JSON object per row:
//! `{"bench", "scheme", "cables", "outlets", "payments", "p50_ms", "p90_ms", "p99_ms",
//! "payments_per_s", "refused", "lost", "socket_rss_mb"}`.
//!
//! - `latency`: per scheme, sequential quota payments on one outlet, each timed by the cable
//!   from its request to the quota credited (socket-node and cable-node as processes); and the
//!   same count of payments between two bare ldk-node nodes (`ldk-node-raw`), the reference
//!   Lightning figure.
//! - `swarm --cables N`: N cables on N outlets of one socket-node process, paying at once
//!   (the cables run in this process, each with its own keys, wallet and store).
//! - `plug-in`: plug-in to relay closed, per scheme (Lightning on a channel opened before).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

mod cables;
mod latency;
mod plug_in;
mod report;
mod swarm;

use latency::latency;
use plug_in::plug_in;
use report::print_table;
use swarm::swarm;

/// Measure payment latency, throughput and memory of t2t on a regtest chain.
#[derive(Parser)]
#[command(version)]
struct Args {
    #[command(subcommand)]
    bench: Bench,
    /// Also write the rows as a JSON array to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Bench {
    /// Sequential quota payments on one outlet, per scheme, and two bare ldk-node nodes.
    Latency {
        /// Payments per scheme.
        #[arg(long, default_value_t = 100)]
        payments: u32,
        /// Schemes to measure (comma-separated): onchain, single-fee, spillman, lightning,
        /// ldk-node-raw.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "onchain,single-fee,spillman,lightning,ldk-node-raw"
        )]
        schemes: Vec<String>,
    },
    /// N cables on N outlets of one socket-node, paying at the same time.
    Swarm {
        /// How many cables (and outlets).
        #[arg(long, default_value_t = 100)]
        cables: usize,
        /// Payments each cable makes.
        #[arg(long, default_value_t = 5)]
        payments: u32,
        /// Schemes the cables pay with, spread over them in turn (comma-separated): onchain,
        /// single-fee, spillman, lightning (each Lightning cable runs its own LDK node and
        /// opens a channel to the socket's before it plugs in: a few fit on two cores).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "onchain,single-fee,spillman"
        )]
        schemes: Vec<String>,
    },
    /// Plug-in to relay closed, per scheme.
    PlugIn {
        /// Plug-ins per scheme.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let rows = match args.bench {
        Bench::Latency { payments, schemes } => latency(payments, &schemes)?,
        Bench::Swarm {
            cables,
            payments,
            schemes,
        } => vec![swarm(cables, payments, &schemes)?],
        Bench::PlugIn { rounds } => plug_in(rounds)?,
    };
    print_table(&rows);
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("rows written to {}", path.display());
    }
    Ok(())
}
