//! `plug-in`: plug-in to relay closed, per scheme (Lightning on a channel opened before).

use std::time::Duration;

use bitcoin::Amount;
use integration::{CableFiles, Miner, SocketProcess};
use regtest::Regtest;

use crate::cables::{cable_setup, run_cable, socket_setup, wait_idle};
use crate::report::{peak_rss_mb, quantile, sorted, Row};

/// `rounds` plug-ins of a cable of each scheme; a row per scheme.
pub(crate) fn plug_in(rounds: u32) -> anyhow::Result<Vec<Row>> {
    println!("starting a regtest bitcoind and a socket-node...");
    let bitcoind = Regtest::start()?;
    let dir = tempfile::tempdir()?;
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &socket_setup(1, true),
    )?;
    let _miner = Miner::start(&bitcoind, Duration::from_secs(1));
    let mut rows = Vec::new();
    for scheme in ["onchain", "single-fee", "spillman", "lightning"] {
        println!("{scheme}: {rounds} plug-ins...");
        let cable = CableFiles::create(
            &bitcoind,
            &dir.path().join(scheme),
            &socket.endpoint,
            // A spillman budget of one quota is below the socket's smallest deposit (2 000
            // sat): two quotas, or the cable refuses the offer and nothing is measured.
            &cable_setup(
                scheme,
                integration::OUTLET,
                if scheme == "spillman" { 2 } else { 1 },
            ),
            Amount::from_sat(500_000),
        )?;
        if scheme == "lightning" {
            cable.fund_lightning(&bitcoind, Amount::from_sat(500_000))?;
            // The first visit opens the channel; it is not a plug-in on an existing channel.
            wait_idle(&socket, integration::OUTLET)?;
            run_cable(&cable, Duration::from_secs(300))?;
        }
        let mut samples = Vec::new();
        for _ in 0..rounds {
            wait_idle(&socket, integration::OUTLET)?;
            if let Some(ms) = run_cable(&cable, Duration::from_secs(300))?.plug_in_ms {
                samples.push(ms);
            }
        }
        let samples = sorted(samples);
        rows.push(Row {
            bench: "plug-in",
            scheme: scheme.into(),
            cables: 1,
            outlets: 1,
            payments: samples.len(),
            p50_ms: quantile(&samples, 0.5),
            p90_ms: quantile(&samples, 0.9),
            p99_ms: quantile(&samples, 0.99),
            payments_per_s: 0.0,
            refused: rounds as usize - samples.len(),
            lost: 0,
            socket_rss_mb: socket.pid().map_or(0.0, peak_rss_mb),
        });
    }
    Ok(rows)
}
