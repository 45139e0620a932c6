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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use bitcoin::Amount;
use clap::{Parser, Subcommand};
use integration::{CableFiles, CableSetup, Miner, SocketProcess, SocketSetup};
use regtest::Regtest;
use serde::Serialize;
use serde_json::Value;

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

/// One row of a bench's table.
#[derive(Debug, Clone, Serialize)]
struct Row {
    bench: &'static str,
    scheme: String,
    cables: usize,
    outlets: usize,
    payments: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    payments_per_s: f64,
    refused: usize,
    lost: usize,
    socket_rss_mb: f64,
}

/// Price and quota of every bench: 1 Wh quotas at 1 000 sat.
const PRICE_MSAT_PER_WH: u64 = 1_000_000;
const QUOTA_MWH: u64 = 1_000;
const QUOTA_SAT: u64 = 1_000;

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

fn print_table(rows: &[Row]) {
    println!(
        "\n{:<9} | {:<14} | {:>6} | {:>7} | {:>8} | {:>8} | {:>8} | {:>8} | {:>10} | {:>7} | {:>4} | {:>9}",
        "bench", "scheme", "cables", "outlets", "payments", "p50 ms", "p90 ms", "p99 ms",
        "payments/s", "refused", "lost", "socket MB"
    );
    for r in rows {
        println!(
            "{:<9} | {:<14} | {:>6} | {:>7} | {:>8} | {:>8.1} | {:>8.1} | {:>8.1} | {:>10.1} | {:>7} | {:>4} | {:>9.1}",
            r.bench,
            r.scheme,
            r.cables,
            r.outlets,
            r.payments,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.payments_per_s,
            r.refused,
            r.lost,
            r.socket_rss_mb
        );
    }
}

/// The q-quantile (nearest rank) of sorted samples, 0 when there are none.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn sorted(mut samples: Vec<f64>) -> Vec<f64> {
    samples.sort_by(f64::total_cmp);
    samples
}

/// Peak resident memory of a process, MB (VmHWM).
fn peak_rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The socket of the benches: every scheme, Lightning on, 1 Wh quotas, a constant load drawn
/// fast (time scale 10), QuotaLow at half a quota so the cable pays ahead.
fn socket_setup(outlets: usize, lightning: bool) -> SocketSetup {
    SocketSetup {
        price_msat_per_wh: PRICE_MSAT_PER_WH,
        quota_mwh: QUOTA_MWH,
        quota_low_mwh: QUOTA_MWH / 2,
        time_scale: 10.0,
        load_toml: "kind = \"constant\"\npower_w = 1800.0".into(),
        single_fee_max_sat: 1_000 * QUOTA_SAT,
        lightning,
        spillman: true,
        outlets,
        // Every cable of the bench connects from this one host (127.0.0.1): lift the per-host
        // limits a power-line link puts on one device.
        top_toml: "limits = { max_connections_per_host = 100000, \
                   max_watch_streams_per_host = 100000, peer_requests_per_sec = 100000, \
                   peer_burst = 100000 }"
            .into(),
        ..SocketSetup::default()
    }
}

/// A cable that stops after `payments` quotas (its budget is exactly that).
fn cable_setup(scheme: &str, outlet: &str, payments: u32) -> CableSetup {
    CableSetup {
        max_price_msat_per_wh: PRICE_MSAT_PER_WH,
        max_session_sat: QUOTA_SAT * payments as u64,
        unplug_when_idle_secs: 1.0,
        schemes: vec![scheme.into()],
        outlet_id: outlet.into(),
        lightning_channel_sat: Some(QUOTA_SAT * payments as u64 * 2 + 50_000),
        ..CableSetup::default()
    }
}

/// What a cable's report says: outcome, accepted payments and their latencies (ms).
struct CableOutcome {
    outcome: String,
    latencies_ms: Vec<f64>,
    plug_in_ms: Option<f64>,
}

fn outcome_of(report: &Value) -> CableOutcome {
    let payments = report["payments"].as_array().cloned().unwrap_or_default();
    CableOutcome {
        outcome: report["outcome"].as_str().unwrap_or("no report").to_owned(),
        latencies_ms: payments
            .iter()
            .filter_map(|p| p["latency_ms"].as_f64())
            .collect(),
        plug_in_ms: report["plug_in_to_paid_ms"].as_f64(),
    }
}

fn run_cable(cable: &CableFiles, limit: Duration) -> anyhow::Result<CableOutcome> {
    let out = cable.run(limit)?;
    let report: Value = std::fs::read_to_string(&cable.report)
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or(Value::Null);
    let outcome = outcome_of(&report);
    if !out.status.success() {
        eprintln!(
            "cable ended with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    Ok(outcome)
}

/// Wait until every outlet of `socket` has no session (the last unplug is debounced).
fn wait_idle(socket: &SocketProcess, outlet: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while socket
        .status_of(outlet)
        .map_or(true, |s| !s.session_hash.is_empty())
    {
        anyhow::ensure!(Instant::now() < deadline, "outlet {outlet} stayed busy");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn latency(payments: u32, schemes: &[String]) -> anyhow::Result<Vec<Row>> {
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

fn plug_in(rounds: u32) -> anyhow::Result<Vec<Row>> {
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
            &cable_setup(scheme, integration::OUTLET, 1),
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

fn swarm(cables: usize, payments: u32, schemes: &[String]) -> anyhow::Result<Row> {
    anyhow::ensure!(cables > 0 && !schemes.is_empty(), "no cables or no schemes");
    println!("starting a regtest bitcoind and a socket-node with {cables} outlets...");
    let bitcoind = Regtest::start()?;
    let dir = tempfile::tempdir()?;
    integration::binary("socket-node")?; // built before the clock starts
    let started = Instant::now();
    let lightning = schemes.iter().any(|s| s == "lightning");
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &socket_setup(cables, lightning),
    )?;
    println!("  socket ready in {:.1} s", started.elapsed().as_secs_f64());
    // Each cable its own keys, wallet and store; all funded by one transaction.
    let files: Vec<(String, CableFiles)> = (0..cables)
        .map(|i| {
            let scheme = schemes[i % schemes.len()].clone();
            let outlet = format!("outlet-{}", i + 1);
            let files = CableFiles::create_unfunded(
                &dir.path().join(format!("cable-{}", i + 1)),
                &bitcoind,
                &socket.endpoint,
                &cable_setup(&scheme, &outlet, payments),
            )?;
            Ok((scheme, files))
        })
        .collect::<anyhow::Result<_>>()?;
    let funds = Amount::from_sat(QUOTA_SAT * payments as u64 * 3 + 20_000);
    let payees = files
        .iter()
        .map(|(_, f)| Ok((integration::funding_address(&f.data_dir)?, funds)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for chunk in payees.chunks(500) {
        bitcoind.fund_many(chunk)?;
    }
    // A Lightning cable's LDK node has its own on-chain wallet, for the channel it opens.
    for (_, f) in files.iter().filter(|(scheme, _)| scheme == "lightning") {
        f.fund_lightning(
            &bitcoind,
            Amount::from_sat(QUOTA_SAT * payments as u64 * 2 + 100_000),
        )?;
    }
    println!(
        "  {cables} cables funded in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // Each wallet learns its funds before the clock starts (a plugged-in cable has synced
    // long before), a few at a time.
    bitcoind.mine(1)?;
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some((_, f)) = files.get(i) else {
                        return anyhow::Ok(());
                    };
                    let config = cable_node::config::CableConfig::load(&f.config)?;
                    cable_node::payer::Cable::open(config, &f.data_dir)?.sync()?;
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("a sync worker panicked"))
    })?;
    println!(
        "  {cables} cable wallets synced in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let _miner = Miner::start(&bitcoind, Duration::from_secs(2));

    let paying = Instant::now();
    // Each cable on its own thread and runtime, as each is its own device (a session is not
    // Send: its store and relay stay on one thread).
    let outcomes: Vec<(String, anyhow::Result<Value>)> = std::thread::scope(|scope| {
        let threads: Vec<_> = files
            .iter()
            .map(|(scheme, f)| {
                let thread = std::thread::Builder::new()
                    .stack_size(512 * 1024)
                    .spawn_scoped(scope, move || {
                        let run = || {
                            // Multi-thread: the cable blocks in place for its wallet.
                            let runtime = tokio::runtime::Builder::new_multi_thread()
                                .worker_threads(1)
                                .max_blocking_threads(2)
                                .thread_stack_size(512 * 1024)
                                .enable_all()
                                .build()?;
                            let config = cable_node::config::CableConfig::load(&f.config)?;
                            let mut cable = cable_node::payer::Cable::open(config, &f.data_dir)?;
                            let report = runtime.block_on(cable.run_session())?;
                            anyhow::Ok(serde_json::to_value(report)?)
                        };
                        (scheme.clone(), run())
                    });
                (scheme, thread)
            })
            .collect();
        threads
            .into_iter()
            .map(|(scheme, thread)| match thread {
                Ok(thread) => thread.join().unwrap_or_else(|_| {
                    (
                        scheme.clone(),
                        Err(anyhow::anyhow!("the cable's thread panicked")),
                    )
                }),
                Err(e) => (scheme.clone(), Err(anyhow::anyhow!("no thread: {e}"))),
            })
            .collect()
    });
    let elapsed = paying.elapsed().as_secs_f64();
    let rss = socket.pid().map_or(0.0, peak_rss_mb);

    let mut latencies = Vec::new();
    let mut refused = 0;
    let mut by_outcome: BTreeMap<String, usize> = BTreeMap::new();
    for (_, outcome) in &outcomes {
        match outcome {
            Ok(report) => {
                let outcome = outcome_of(report);
                refused += (payments as usize).saturating_sub(outcome.latencies_ms.len());
                latencies.extend(outcome.latencies_ms);
                *by_outcome.entry(outcome.outcome).or_default() += 1;
            }
            Err(e) => {
                refused += payments as usize;
                *by_outcome.entry(format!("failed: {e:#}")).or_default() += 1;
            }
        }
    }
    for (outcome, count) in &by_outcome {
        println!("  {count} cables: {outcome}");
    }
    let dirs: Vec<&std::path::Path> = files.iter().map(|(_, f)| f.data_dir.as_path()).collect();
    // A Lightning payer may learn its payment succeeded a moment before the payee's node
    // reports it received: count again for a few seconds before calling one lost.
    let mut lost = lost_payments(&socket, &dirs)?;
    for _ in 0..10 {
        if lost.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        lost = lost_payments(&socket, &dirs)?;
    }
    for what in lost.iter().take(10) {
        println!("  lost: {what}");
    }
    let lost = lost.len();
    let latencies = sorted(latencies);
    Ok(Row {
        bench: "swarm",
        scheme: schemes.join("+"),
        cables,
        outlets: cables,
        payments: latencies.len(),
        p50_ms: quantile(&latencies, 0.5),
        p90_ms: quantile(&latencies, 0.9),
        p99_ms: quantile(&latencies, 0.99),
        payments_per_s: latencies.len() as f64 / elapsed,
        refused,
        lost,
        socket_rss_mb: rss,
    })
}

/// Payments lost either way, from both sides' stores (so that a cable whose session failed
/// counts too): each one a cable's store holds as accepted (Lightning: paid) must be credited in
/// the socket's, and each one the socket credited must be one a cable signed (accepted, or
/// signed with its reply lost; Lightning: sent and not failed).
fn lost_payments(
    socket: &SocketProcess,
    cable_dirs: &[&std::path::Path],
) -> anyhow::Result<Vec<String>> {
    type Ids = std::collections::BTreeSet<(String, i64)>;
    let read = |path: std::path::PathBuf, sql: &str| -> anyhow::Result<Ids> {
        let db = rusqlite::Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let mut statement = db.prepare(sql)?;
        let rows =
            statement.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<Result<Ids, _>>()?)
    };
    let socket_db = socket.data_dir.join("socket.sqlite");
    let mut credited = read(
        socket_db.clone(),
        "SELECT session_id, payment_id FROM payments WHERE status != 'failed'",
    )?;
    credited.extend(read(
        socket_db,
        "SELECT session_id, payment_id FROM ln_payments",
    )?);
    let (mut accepted, mut signed) = (Ids::new(), Ids::new());
    for dir in cable_dirs {
        let path = dir.join("cable.sqlite");
        accepted.extend(read(
            path.clone(),
            "SELECT session_id, payment_id FROM payments WHERE status = 'accepted'",
        )?);
        signed.extend(read(
            path.clone(),
            "SELECT session_id, payment_id FROM payments WHERE status != 'refused'",
        )?);
        accepted.extend(read(
            path.clone(),
            "SELECT session_id, payment_id FROM ln_payments WHERE status = 'paid'",
        )?);
        signed.extend(read(
            path,
            "SELECT session_id, payment_id FROM ln_payments WHERE status != 'failed'",
        )?);
    }
    let unpaid = accepted
        .difference(&credited)
        .map(|(s, p)| format!("session {s} payment {p}: paid by its cable, not credited"));
    let unsigned = credited
        .difference(&signed)
        .map(|(s, p)| format!("session {s} payment {p}: credited, never signed by a cable"));
    Ok(unpaid.chain(unsigned).collect())
}
