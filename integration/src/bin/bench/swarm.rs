//! `swarm --cables N`: N cables on N outlets of one socket-node process, paying at once, and
//! the payments lost either way.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bitcoin::Amount;
use integration::{CableFiles, Miner, SocketProcess};
use regtest::Regtest;
use serde_json::Value;

use crate::cables::{cable_setup, outcome_of, socket_setup, QUOTA_SAT};
use crate::report::{peak_rss_mb, quantile, sorted, Row};

/// `cables` cables paying `payments` quotas each at once, with `schemes` in turn; one row.
pub(crate) fn swarm(cables: usize, payments: u32, schemes: &[String]) -> anyhow::Result<Row> {
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
