//! `demo`: the README's main command.
//!
//! Until the basic protocol lands (cable-node paying socket-node over gRPC), this shows the
//! foundation the demo stands on: a real regtest bitcoind, a funded cable address, and the
//! paper's toaster (seed 000 §VII: 1300 W, 40 Wh a batch) metered by the simulator, cut into
//! the quotas the cable will pay for, each priced with the protocol's unit math.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bitcoin::key::Secp256k1;
use bitcoin::{Address, Amount, CompressedPublicKey, Network, PrivateKey};
use clap::Parser;
use hw::clock::ScaledClock;
use hw::load::LoadProfile;
use hw::sim::SimOutlet;
use hw::{Meter, PowerMw, Relay};
use proto::units::{EnergyMwh, PriceMsatPerWh};
use regtest::Regtest;

/// Toast one slice on a simulated outlet next to a real regtest bitcoind, and show the quotas
/// the cable would pay for.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Price of energy, msat per Wh.
    #[arg(long, default_value_t = 125_000)]
    price_msat_per_wh: u64,
    /// Energy bought by one payment, in Wh (the paper's experiment: 8 Wh, 5 payments a toast).
    #[arg(long, default_value_t = 8)]
    quota_wh: u64,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 20.0)]
    time_scale: f64,
    /// Coins given to the cable's address before it plugs in, in sat.
    #[arg(long, default_value_t = 100_000)]
    cable_funds_sat: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let price = PriceMsatPerWh(args.price_msat_per_wh);
    let quota = EnergyMwh::from_wh(args.quota_wh)?;
    anyhow::ensure!(quota.0 > 0, "--quota-wh must be at least 1");

    println!("starting a regtest bitcoind (the first run builds it, about 10 minutes)...");
    let node = Regtest::start()?;
    println!("bitcoind RPC {}", node.rpc_url());

    let key = PrivateKey::generate(Network::Regtest);
    let public = CompressedPublicKey::from_private_key(&Secp256k1::new(), &key)?;
    let cable = Address::p2wpkh(&public, Network::Regtest);
    let funding = node.fund(&cable, Amount::from_sat(args.cable_funds_sat))?;
    println!(
        "cable address {cable} funded with {} sat in {funding}, confirmed at height {}",
        args.cable_funds_sat,
        node.height()?
    );

    let clock = ScaledClock::new(args.time_scale)?;
    let outlet = SimOutlet::new(LoadProfile::toaster(1), Arc::new(clock.clone()));
    outlet.set_plugged(true);
    let mut relay = outlet.relay();
    let mut meter = outlet.meter();
    relay.close()?;
    println!(
        "toasting one slice at {}, {} per quota (time x{})",
        price, quota, args.time_scale
    );

    let mut quotas = Vec::new();
    let mut next_boundary = quota;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let reading = meter.read()?;
        while reading.energy >= next_boundary {
            quotas.push((next_boundary, reading.at_ms));
            next_boundary = next_boundary.checked_add(quota)?;
        }
        print!(
            "\r  t={:>5.1}s  {:>7}  energy {:>10}  quotas used {}   ",
            reading.at_ms as f64 / 1000.0,
            reading.power.to_string(),
            reading.energy.to_string(),
            quotas.len()
        );
        if reading.power == PowerMw(0) {
            // The toaster popped; a started quota is still a quota paid.
            if reading.energy > next_boundary.saturating_sub(quota) {
                quotas.push((reading.energy, reading.at_ms));
            }
            break;
        }
    }
    relay.open()?;
    println!("\n\n quota | metered energy up to | sim time | price of the quota");
    for (i, (energy, at_ms)) in quotas.iter().enumerate() {
        let cost = price.cost_of(quota).context("price x quota overflows")?;
        println!(
            " {:>5} | {:>20} | {:>7.1}s | {} ({} sat on chain)",
            i + 1,
            energy.to_string(),
            *at_ms as f64 / 1000.0,
            cost,
            cost.to_amount_ceil().to_sat()
        );
    }
    println!(
        "\n{} quotas for one slice of toast. Paying them from cable-node to socket-node \
         arrives with the basic protocol.",
        quotas.len()
    );
    Ok(())
}
