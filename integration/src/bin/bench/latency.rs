//! `latency`: sequential quota payments on one outlet per scheme, and the same payments
//! between two bare ldk-node nodes (`ldk-node-raw`).

use std::path::Path;
use std::time::{Duration, Instant};

use bitcoin::Amount;
use integration::{CableFiles, Miner, SocketProcess};
use regtest::Regtest;

use crate::cables::{cable_setup, run_cable, socket_setup, wait_idle, QUOTA_SAT};
use crate::report::{peak_rss_mb, quantile, sorted, Row};

/// Sequential payments of `payments` quotas with each of `schemes`; a row per scheme.
pub(crate) fn latency(payments: u32, schemes: &[String]) -> anyhow::Result<Vec<Row>> {
    println!("starting a regtest bitcoind and a socket-node...");
    let bitcoind = Regtest::start()?;
    let dir = tempfile::tempdir()?;
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &socket_setup(1, true),
    )?;
    // Blocks keep coming, so that chains of unconfirmed payments stay short.
    let _miner = Miner::start(&bitcoind, Duration::from_secs(1));
    let mut rows = Vec::new();
    for scheme in schemes {
        println!("{scheme}: {payments} payments...");
        let row = match scheme.as_str() {
            "ldk-node-raw" => ldk_node_raw(&bitcoind, &dir.path().join("raw"), payments)?,
            _ => {
                wait_idle(&socket, integration::OUTLET)?;
                let cable = CableFiles::create(
                    &bitcoind,
                    &dir.path().join(scheme),
                    &socket.endpoint,
                    &cable_setup(scheme, integration::OUTLET, payments),
                    Amount::from_sat(QUOTA_SAT * payments as u64 * 3 + 100_000),
                )?;
                if scheme == "lightning" {
                    cable.fund_lightning(
                        &bitcoind,
                        Amount::from_sat(QUOTA_SAT * payments as u64 * 3 + 100_000),
                    )?;
                }
                let started = Instant::now();
                let outcome = run_cable(&cable, Duration::from_secs(600))?;
                let elapsed = started.elapsed().as_secs_f64();
                let latencies = sorted(outcome.latencies_ms);
                println!("  {}: {} payments", outcome.outcome, latencies.len());
                Row {
                    bench: "latency",
                    scheme: scheme.clone(),
                    cables: 1,
                    outlets: 1,
                    payments: latencies.len(),
                    p50_ms: quantile(&latencies, 0.5),
                    p90_ms: quantile(&latencies, 0.9),
                    p99_ms: quantile(&latencies, 0.99),
                    payments_per_s: latencies.len() as f64 / elapsed,
                    refused: (payments as usize).saturating_sub(latencies.len()),
                    lost: 0,
                    socket_rss_mb: socket.pid().map_or(0.0, peak_rss_mb),
                }
            }
        };
        rows.push(row);
    }
    Ok(rows)
}

/// Two bare ldk-node nodes on this machine and bitcoind: a direct channel, then `payments`
/// BOLT11 invoices paid one after the other, each timed from `send` to `PaymentSuccessful`.
fn ldk_node_raw(bitcoind: &Regtest, dir: &Path, payments: u32) -> anyhow::Result<Row> {
    use ln::ldk_node::lightning_invoice::{Bolt11InvoiceDescription, Description};
    use ln::ldk_node::Event;
    let listen = format!("127.0.0.1:{}", integration::free_port()?).parse()?;
    let payer = integration::ln_node(bitcoind, &dir.join("payer"), &ln::LnSettings::default());
    let payee = integration::ln_node(
        bitcoind,
        &dir.join("payee"),
        &ln::LnSettings {
            listen: Some(listen),
            ..ln::LnSettings::default()
        },
    );
    let channel_sat = QUOTA_SAT * payments as u64 * 2 + 50_000;
    integration::fund_ln_node(bitcoind, &payer, Amount::from_sat(channel_sat + 50_000));
    payer.open_channel(
        payee.node_id(),
        ln::ldk_node::lightning::ln::msgs::SocketAddress::from(listen),
        channel_sat,
        None,
        None,
    )?;
    let usable = || {
        payer
            .list_channels()
            .iter()
            .any(|c| c.is_usable && c.outbound_capacity_msat > QUOTA_SAT * 1_000)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while !usable() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the raw channel never became usable"
        );
        bitcoind.mine(1)?;
        let _ = payer.sync_wallets();
        let _ = payee.sync_wallets();
        drain(&payer);
        drain(&payee);
        std::thread::sleep(Duration::from_millis(200));
    }
    let description = Bolt11InvoiceDescription::Direct(Description::new("bench".into())?);
    let mut latencies = Vec::new();
    let started = Instant::now();
    for _ in 0..payments {
        let invoice = payee
            .bolt11_payment()
            .receive(QUOTA_SAT * 1_000, &description, 600)?;
        let sent = Instant::now();
        payer.bolt11_payment().send(&invoice, None)?;
        loop {
            let event = payer.wait_next_event();
            payer.event_handled()?;
            match event {
                Event::PaymentSuccessful { .. } => break,
                Event::PaymentFailed { reason, .. } => {
                    anyhow::bail!("raw payment failed: {reason:?}")
                }
                _ => {}
            }
        }
        latencies.push(sent.elapsed().as_secs_f64() * 1_000.0);
        drain(&payee);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let _ = payer.stop();
    let _ = payee.stop();
    let latencies = sorted(latencies);
    Ok(Row {
        bench: "latency",
        scheme: "ldk-node-raw".into(),
        cables: 1,
        outlets: 1,
        payments: latencies.len(),
        p50_ms: quantile(&latencies, 0.5),
        p90_ms: quantile(&latencies, 0.9),
        p99_ms: quantile(&latencies, 0.99),
        payments_per_s: latencies.len() as f64 / elapsed,
        refused: 0,
        lost: 0,
        socket_rss_mb: 0.0,
    })
}

/// Mark every pending event of `node` handled.
fn drain(node: &ln::ldk_node::Node) {
    while node.next_event().is_some() {
        let _ = node.event_handled();
    }
}
