//! `demo`: the README's main command. The paper's experiment (seed 000 §V–VII) on a real
//! regtest chain: a cable toasts one slice of bread (1300 W, 40 Wh) and pays a socket per 8 Wh
//! quota, the two as separate processes talking gRPC over TCP on 127.0.0.1; once with one
//! transaction per quota (`onchain`, §V), with the paper's single-fee protocol (§VI), over a
//! seed-003 payment channel (`spillman`), and over Lightning (twice: the channel is reused),
//! then all side by side. The cable meters the toaster too and countersigns a receipt per
//! quota; each session's receipts are exported and verified, and the socket's audit log is
//! anchored on the chain (design.md "Attestation"). `--misbehave` runs one session with a
//! device that cheats or is broken, and shows what each side flagged.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use bitcoin::Amount;
use clap::{Parser, ValueEnum};
use integration::{CableFiles, CableSetup, Miner, SocketProcess, SocketSetup};
use proto::v1::OutletState;
use regtest::Regtest;
use serde_json::{json, Value};

/// Toast a slice of bread on a socket that sells electricity for bitcoin, paid by the cable
/// quota by quota, on a throwaway regtest chain. Takes under a minute (the first run also
/// builds bitcoind, about 10 minutes).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// How the cable pays.
    #[arg(long, value_enum, default_value_t = SchemeArg::All)]
    scheme: SchemeArg,
    /// The appliance: `toaster` (1300 W, 40 Wh a batch), `constant:WATTS`, or `trace:FILE.csv`
    /// (rows `t_s,power_w`).
    #[arg(long, default_value = "toaster")]
    load: String,
    /// Price of energy, msat per Wh.
    #[arg(long, default_value_t = 125_000)]
    price_msat_per_wh: u64,
    /// Energy bought by one payment, in Wh.
    #[arg(long, default_value_t = 8)]
    quota_wh: u64,
    /// Simulated seconds per real second.
    #[arg(long, default_value_t = 20.0)]
    time_scale: f64,
    /// single-fee: the most one input set may pay, in sat.
    #[arg(long, default_value_t = 10_000)]
    single_fee_max_sat: u64,
    /// Coins each cable starts with, in sat.
    #[arg(long, default_value_t = 100_000)]
    cable_funds_sat: u64,
    /// Mine a block every this many real seconds while a session runs.
    #[arg(long, default_value_t = 2.0)]
    block_interval_secs: f64,
    /// Run one session (`--scheme`, onchain for `all`) with a misbehaving device and show what
    /// was flagged.
    #[arg(long, value_enum)]
    misbehave: Option<Misbehave>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Misbehave {
    /// The socket's meter counts 10 % high: the cable stops paying and flags the socket.
    SocketOverCounts,
    /// The cable's meter reads 15 % low (and its own check is loosened to 50 % so that it pays
    /// on): the socket finds it in the receipts and flags the cable.
    CableUnderReports,
    /// The toaster (1300 W) on an outlet rated 1000 W: the socket halts the session and flags
    /// the cable.
    OverPower,
}

/// At time x20, 20 ms of delay on the link is 0.4 s of toasting: the meters may disagree by
/// 1 Wh (and 5 %) here, where a real device keeps the default 300 mWh.
const DEMO_METER_TOLERANCE_MWH: u64 = 1_000;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SchemeArg {
    /// One transaction per quota (paper §V).
    Onchain,
    /// Rising payments over the same inputs, one transaction per input set (paper §VI).
    SingleFee,
    /// A 2-of-2 deposit, a payment per quota held by the socket, one close (seed 003).
    Spillman,
    /// BOLT11 invoices over a Lightning channel: a first visit, then a second on the same channel.
    Lightning,
    /// All of them, one after the other, compared.
    All,
}

fn load_toml(load: &str) -> anyhow::Result<String> {
    if load == "toaster" {
        return Ok("kind = \"toaster\"".into());
    }
    if let Some(watts) = load.strip_prefix("constant:") {
        let watts: f64 = watts.parse().context("constant:WATTS needs a number")?;
        return Ok(format!("kind = \"constant\"\npower_w = {watts:?}"));
    }
    if let Some(path) = load.strip_prefix("trace:") {
        let path = std::fs::canonicalize(path).with_context(|| format!("trace file {path}"))?;
        return Ok(format!(
            "kind = \"trace\"\npath = {:?}",
            path.display().to_string()
        ));
    }
    anyhow::bail!("--load must be toaster, constant:WATTS or trace:FILE.csv, not {load:?}")
}

/// What one session cost on chain.
struct Summary {
    scheme: &'static str,
    payments: usize,
    transactions: usize,
    paid_sat: u64,
    fees_sat: u64,
    vbytes: u64,
    latency: Option<String>,
}

/// Fee, vsize and block height of a transaction, as the chain has it.
fn on_chain(bitcoind: &Regtest, txid: &str) -> anyhow::Result<(u64, u64, String)> {
    let tx: Value = regtest::rpc(
        bitcoind.client(),
        "getrawtransaction",
        &[json!(txid), json!(2)],
    )?;
    let fee = Amount::from_btc(tx["fee"].as_f64().unwrap_or(0.0)).map_or(0, |a| a.to_sat());
    let height = match tx["blockhash"].as_str() {
        Some(hash) => {
            let header: Value = regtest::rpc(bitcoind.client(), "getblockheader", &[json!(hash)])?;
            header["height"].to_string()
        }
        None => "-".into(),
    };
    Ok((fee, tx["vsize"].as_u64().unwrap_or(0), height))
}

/// "p50 / p90" of latencies in ms.
fn percentiles(mut latencies: Vec<u64>) -> Option<String> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Some(format!("{} ms / {} ms", at(0.5), at(0.9)))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let setup = SocketSetup {
        price_msat_per_wh: args.price_msat_per_wh,
        quota_mwh: args
            .quota_wh
            .checked_mul(1_000)
            .context("--quota-wh too large")?,
        time_scale: args.time_scale,
        load_toml: load_toml(&args.load)?,
        single_fee_max_sat: args.single_fee_max_sat,
        // The audit log's head goes on chain every 10 s, once the socket has earned coins.
        top_toml: format!(
            "anchor_interval_secs = 10\nmeter_tolerance_mwh = {DEMO_METER_TOLERANCE_MWH}"
        ),
        hw_toml: match args.misbehave {
            Some(Misbehave::SocketOverCounts) => "meter_error_percent = 10".into(),
            _ => String::new(),
        },
        outlet_toml: match args.misbehave {
            Some(Misbehave::OverPower) => "max_power_w = 1000".into(),
            _ => String::new(),
        },
        ..SocketSetup::default()
    };
    let schemes: &[&'static str] = match (args.misbehave, args.scheme) {
        (Some(_), SchemeArg::All) => &["onchain"],
        (Some(_), SchemeArg::Lightning) => &["lightning"],
        (_, scheme) => match scheme {
            SchemeArg::Onchain => &["onchain"],
            SchemeArg::SingleFee => &["single-fee"],
            SchemeArg::Spillman => &["spillman"],
            SchemeArg::Lightning => &["lightning", "lightning again"],
            SchemeArg::All => &[
                "onchain",
                "single-fee",
                "spillman",
                "lightning",
                "lightning again",
            ],
        },
    };
    let setup = SocketSetup {
        lightning: schemes.iter().any(|s| s.starts_with("lightning")),
        spillman: schemes.contains(&"spillman"),
        ..setup
    };

    println!("starting a regtest bitcoind...");
    let bitcoind = Regtest::start()?;
    let dir = tempfile::tempdir()?;
    let socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup)?;
    println!(
        "socket-node serving on {} ({} msat/Wh, {} Wh quota, time x{}); logs under {}",
        socket.endpoint,
        args.price_msat_per_wh,
        args.quota_wh,
        args.time_scale,
        dir.path().display()
    );
    // The owner's view of the same socket while the demo runs (read-only token).
    if let Ok(token) = std::fs::read_to_string(socket.data_dir.join("readonly.token")) {
        println!("its dashboard: {}/#token={}", socket.http, token.trim());
    }
    if let Some(misbehave) = args.misbehave {
        return misbehaving_session(&args, misbehave, &bitcoind, &socket, dir.path(), schemes[0]);
    }
    let mut summaries = Vec::new();
    let mut lightning_cable = None;
    for scheme in schemes {
        let dir = dir.path().join(scheme.replace(' ', "-"));
        summaries.push(session(
            &args,
            &bitcoind,
            &socket,
            &dir,
            scheme,
            &mut lightning_cable,
        )?);
    }
    if summaries.len() > 1 {
        println!(
            "\nper session       | payments | on-chain txs | to socket | on-chain fees | vbytes | fees / paid | payment latency p50 / p90"
        );
        for s in &summaries {
            println!(
                " {:<16} | {:>8} | {:>12} | {:>5} sat | {:>9} sat | {:>6} | {:>10.1}% | {}",
                s.scheme,
                s.payments,
                s.transactions,
                s.paid_sat,
                s.fees_sat,
                s.vbytes,
                if s.paid_sat > 0 {
                    s.fees_sat as f64 * 100.0 / s.paid_sat as f64
                } else {
                    0.0
                },
                s.latency.clone().unwrap_or_else(|| "-".into())
            );
        }
    }
    println!();
    show_audit(&socket)
}

/// The cable's `[hw]`: a meter of the same appliance at the same time scale, off by
/// `meter_error_percent`.
fn cable_hw(args: &Args, meter_error_percent: i32) -> anyhow::Result<String> {
    Ok(format!(
        "kind = \"sim\"\ntime_scale = {:?}\nmeter_error_percent = {meter_error_percent}\n\
         load = {{ {} }}",
        args.time_scale,
        load_toml(&args.load)?.replace('\n', ", ")
    ))
}

/// Run `socket-node` with `args`; its stdout, or an error with its stderr.
fn socket_node(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(integration::binary("socket-node")?)
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "socket-node {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Export the session's receipts from the socket and verify them, as a third party would.
fn show_receipts(socket: &SocketProcess, session_id: &str, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let file = dir.join("receipts.json");
    let (data_dir, file_arg) = (socket.data_dir.to_string_lossy(), file.to_string_lossy());
    socket_node(&[
        "receipts",
        session_id,
        "--data-dir",
        &data_dir,
        "--out",
        &file_arg,
    ])?;
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&file)?)?;
    println!(
        "receipts: the cable countersigned {} of the socket's readings ({})",
        record["receipts"].as_array().map_or(0, Vec::len),
        file.display()
    );
    match socket_node(&["verify-receipts", &file_arg]) {
        Ok(said) => print!("  verify-receipts: {said}"),
        Err(e) => println!("  verify-receipts: {e}"),
    }
    Ok(())
}

/// The socket's audit log checked, and its latest anchor on chain.
fn show_audit(socket: &SocketProcess) -> anyhow::Result<()> {
    let verified: Value = serde_json::from_str(&socket_node(&[
        "audit",
        "verify",
        "--config",
        &socket.config.to_string_lossy(),
        "--data-dir",
        &socket.data_dir.to_string_lossy(),
        "--json",
    ])?)?;
    let rows = match verified["rows"].as_u64() {
        Some(rows) => format!("{rows} rows, the hash chain holds"),
        None => format!("broken at {}", verified["broken"]),
    };
    match verified["anchors"].as_array().and_then(|a| a.last()) {
        Some(anchor) => println!(
            "audit log: {rows}; latest anchor {} (OP_RETURN of row {}, {} confirmations)",
            anchor["txid"].as_str().unwrap_or("?"),
            anchor["seq"],
            anchor["confirmations"]
        ),
        None => println!(
            "audit log: {rows}; no anchor yet (the socket anchors every 10 s once it has coins)"
        ),
    }
    Ok(())
}

/// One session with a misbehaving device: what each side saw and flagged.
fn misbehaving_session(
    args: &Args,
    misbehave: Misbehave,
    bitcoind: &Regtest,
    socket: &SocketProcess,
    dir: &Path,
    scheme: &str,
) -> anyhow::Result<()> {
    let (meter_error_percent, policy_toml, what) = match misbehave {
        Misbehave::SocketOverCounts => (0, "", "the socket's meter counts 10 % high"),
        Misbehave::CableUnderReports => (
            -15,
            "meter_tolerance_percent = 50",
            "the cable's meter reads 15 % low",
        ),
        Misbehave::OverPower => (0, "", "a 1300 W toaster on an outlet rated 1000 W"),
    };
    let cable = CableFiles::create(
        bitcoind,
        &dir.join("misbehaving"),
        &socket.endpoint,
        &CableSetup {
            schemes: vec![scheme.into()],
            max_session_sat: CableSetup::default()
                .max_session_sat
                .min(args.cable_funds_sat / 2),
            hw_toml: cable_hw(args, meter_error_percent)?,
            policy_toml: format!("meter_tolerance_mwh = {DEMO_METER_TOLERANCE_MWH}\n{policy_toml}"),
            ..CableSetup::default()
        },
        Amount::from_sat(args.cable_funds_sat),
    )?;
    if scheme == "lightning" {
        cable.fund_lightning(bitcoind, Amount::from_sat(300_000))?;
    }
    println!("\n== {scheme} with a misbehaving device: {what}");
    let miner = Miner::start(
        bitcoind,
        Duration::from_secs_f64(args.block_interval_secs.max(0.1)),
    );
    let exit = cable.run(Duration::from_secs(300))?;
    drop(miner);
    let log = String::from_utf8_lossy(&exit.stderr);
    match log.lines().rev().find(|l| l.starts_with("error:")) {
        Some(error) => println!("the cable stopped: {}", error.trim_start_matches("error: ")),
        None => println!("the cable's session ended ({})", exit.status),
    }
    println!("\nthe socket's devices (socket-node devices):");
    print!("{}", socket.operator_cli("devices", &[])?);
    println!("\nthe cable's registry of sockets (cable-node sockets):");
    print!("{}", cable.cli(&["sockets"])?);
    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite"))?;
    let session: Option<String> = db
        .query_row(
            "SELECT id FROM sessions ORDER BY started_at_unix_ms DESC",
            [],
            |r| r.get(0),
        )
        .ok();
    let mut statement = db.prepare("SELECT rule, action, evidence FROM anomalies")?;
    let anomalies = statement.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for anomaly in anomalies {
        let (rule, action, evidence) = anomaly?;
        let mut evidence: Value = serde_json::from_str(&evidence)?;
        if let Some(fields) = evidence.as_object_mut() {
            // The whole receipt is kept as evidence; its hex is too long to show here.
            fields.remove("receipt_body_hex");
        }
        println!("\nthe socket's anomaly {rule} ({action}), evidence: {evidence}");
    }
    println!();
    if let Some(session) = session {
        show_receipts(socket, &session, dir)?;
    }
    show_audit(socket)
}

/// Fund a cable for `scheme`, plug it in, show the live line, then the table of what went on
/// chain.
fn session(
    args: &Args,
    bitcoind: &Regtest,
    socket: &SocketProcess,
    dir: &Path,
    scheme: &'static str,
    lightning_cable: &mut Option<CableFiles>,
) -> anyhow::Result<Summary> {
    // Wait for the outlet to be free (the previous cable's unplug is debounced).
    let deadline = Instant::now() + Duration::from_secs(30);
    while socket.status().map_or(true, |s| !s.session_hash.is_empty()) {
        anyhow::ensure!(Instant::now() < deadline, "the outlet stayed busy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let cable = match (scheme, lightning_cable.take()) {
        // The second Lightning visit is the same cable, on the channel it opened.
        ("lightning again", Some(cable)) => cable,
        _ => {
            let wire_scheme = scheme.trim_end_matches(" again");
            let cable = CableFiles::create(
                bitcoind,
                dir,
                &socket.endpoint,
                &CableSetup {
                    schemes: vec![wire_scheme.into()],
                    // spillman deposits the whole budget: leave coins for its fees.
                    max_session_sat: CableSetup::default()
                        .max_session_sat
                        .min(args.cable_funds_sat / 2),
                    hw_toml: cable_hw(args, 0)?,
                    policy_toml: format!("meter_tolerance_mwh = {DEMO_METER_TOLERANCE_MWH}"),
                    ..CableSetup::default()
                },
                Amount::from_sat(args.cable_funds_sat),
            )?;
            if wire_scheme == "lightning" {
                cable.fund_lightning(bitcoind, Amount::from_sat(300_000))?;
            }
            cable
        }
    };
    if scheme == "lightning again" {
        println!("\n== {scheme}: the same cable plugs in again, on the channel it opened");
    } else {
        println!(
            "\n== {scheme}: cable funded with {} sat, plugging in",
            args.cable_funds_sat
        );
    }

    let miner = Miner::start(
        bitcoind,
        Duration::from_secs_f64(args.block_interval_secs.max(0.1)),
    );
    let started = Instant::now();
    let mut child = cable.spawn_run()?;
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if let Ok(s) = socket.status() {
            let state = OutletState::try_from(s.state).unwrap_or(OutletState::Unspecified);
            print!(
                "\r  {:>5.1}s  {:<8} relay {:<6} {:>7.1} W  energy {:>7.3} Wh  quota left {:>6.3} Wh  payments {}   ",
                started.elapsed().as_secs_f64(),
                state.as_str_name().trim_start_matches("OUTLET_STATE_"),
                if s.relay_closed { "closed" } else { "open" },
                s.power_mw as f64 / 1000.0,
                s.energy_used_mwh as f64 / 1000.0,
                s.quota_remaining_mwh as f64 / 1000.0,
                s.payments
            );
            let _ = std::io::stdout().flush();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(miner);
    println!("\n");
    if !exit.success() {
        anyhow::bail!(
            "cable-node failed ({exit}):\n{}\nsocket log:\n{}",
            std::fs::read_to_string(&cable.log).unwrap_or_default(),
            socket.log_text()
        );
    }
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&cable.report)?)?;
    // The socket broadcasts a spillman close just after the unplug: wait for it, then mine.
    for txid in report["onchain_txs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["txid"].as_str())
    {
        let deadline = Instant::now() + Duration::from_secs(15);
        while on_chain(bitcoind, txid).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    bitcoind.mine(1)?;
    let payments = report["payments"].as_array().map_or(0, Vec::len);
    let transactions = report["onchain_txs"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    println!(
        "{scheme}: {} ({payments} payments of {} Wh, {} on-chain transaction(s))",
        report["outcome"].as_str().unwrap_or("?"),
        args.quota_wh,
        transactions.len()
    );
    println!(
        " {:>3} | {:<64} | {:>5} | {:>9} | {:>8} | {:>6}",
        "#", "txid", "block", "to socket", "fee", "vbytes"
    );
    let latencies: Vec<u64> = report["payments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["latency_ms"].as_u64())
        .collect();
    let mut summary = Summary {
        scheme,
        payments,
        transactions: transactions.len(),
        paid_sat: report["payments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["amount_sat"].as_u64())
            .sum(),
        fees_sat: 0,
        vbytes: 0,
        latency: percentiles(latencies),
    };
    for (i, t) in transactions.iter().enumerate() {
        let txid = t["txid"].as_str().unwrap_or_default();
        let (fee, size, height) = on_chain(bitcoind, txid)?;
        let amount = t["amount_sat"].as_u64().unwrap_or(0);
        summary.fees_sat += fee;
        summary.vbytes += size;
        // A channel open pays nothing to the socket: its amount goes to the 2-of-2 output.
        let (to_socket, what) = if scheme.starts_with("lightning") {
            (0, format!("channel open, {amount} sat into the channel"))
        } else if scheme == "spillman" && i == 0 {
            (0, "deposit into the 2-of-2".to_owned())
        } else if scheme == "spillman" {
            (amount, "close: the highest payment".to_owned())
        } else {
            (amount, String::new())
        };
        println!(
            " {:>3} | {txid:<64} | {height:>5} | {to_socket:>6} sat | {fee:>4} sat | {size:>6} {what}",
            i + 1
        );
    }
    println!(
        " sum | {:<64} | {:>5} | {:>5} sat | {:>4} sat | {:>6}",
        format!("{} transaction(s)", summary.transactions),
        "",
        summary.paid_sat,
        summary.fees_sat,
        summary.vbytes
    );
    println!(
        "energy metered {:.3} Wh; plug-in to relay closed {} ms{}",
        report["energy_used_mwh"].as_u64().unwrap_or(0) as f64 / 1000.0,
        report["plug_in_to_paid_ms"],
        summary
            .latency
            .as_ref()
            .map(|l| format!("; payment latency p50 / p90: {l}"))
            .unwrap_or_default()
    );
    if let Some(session_id) = report["session_id"].as_str() {
        show_receipts(socket, session_id, dir)?;
    }
    if scheme == "lightning" {
        *lightning_cable = Some(cable);
    }
    Ok(summary)
}
