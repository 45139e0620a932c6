//! bitcoind's own faults (issue 14; design.md "Trust"): it restarts in the middle of a session
//! (with a new RPC cookie, as Bitcoin Core writes one at every start), and a block holding
//! credited payments is reorganized away (`invalidateblock`). No honest cable is locked out,
//! every session ends paid, and a credited payment that goes back to the mempool stays
//! credited; one replaced by a conflict in the new chain is found and recorded as lost. A
//! credited payment whose unconfirmed parent leaves the mempool (evicted: here bitcoind
//! restarts without its saved mempool) blames nobody and is sent again once the parent is back.

use std::process::Command;
use std::time::{Duration, Instant};

use bitcoin::{Amount, ScriptBuf};
use integration::{CableFiles, CableSetup, Miner, SocketProcess, SocketSetup};
use regtest::Regtest;
use serde_json::{json, Value};

/// A bitcoind this test started again; stopped when it drops (the harness's `Regtest` only
/// knows the first process).
struct Restarted(std::process::Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.0.id().to_string()).status();
        // Let it go before the harness deletes its data dir.
        for _ in 0..100 {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bitcoind_pid(bitcoind: &Regtest) -> u32 {
    std::fs::read_to_string(bitcoind.datadir().join("regtest").join("bitcoind.pid"))
        .expect("bitcoind's pid file")
        .trim()
        .parse()
        .unwrap()
}

/// An RPC client reading the cookie now (the harness's client keeps the first one).
fn client(bitcoind: &Regtest) -> regtest::Client {
    regtest::Client::new_with_auth(
        &bitcoind.rpc_url(),
        regtest::Auth::CookieFile(bitcoind.cookie_file().to_owned()),
    )
    .unwrap()
}

/// Stop bitcoind (RPC `stop`), wait until it is gone, start it again with the same command
/// line (same data dir and port, a new cookie) and `extra` arguments, and wait until it
/// answers.
fn restart_bitcoind(bitcoind: &Regtest, previous: Option<Restarted>, extra: &[&str]) -> Restarted {
    let pid = bitcoind_pid(bitcoind);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let _: Value = regtest::rpc(&client(bitcoind), "stop", &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
        && std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
    {
        assert!(Instant::now() < deadline, "bitcoind does not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Stopped already: its guard has nothing left to kill.
    drop(previous);
    let child = Command::new(&args[0])
        .args(&args[1..])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let restarted = Restarted(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(client) = regtest::Client::new_with_auth(
            &bitcoind.rpc_url(),
            regtest::Auth::CookieFile(bitcoind.cookie_file().to_owned()),
        ) {
            if regtest::rpc::<Value>(&client, "getblockcount", &[]).is_ok() {
                return restarted;
            }
        }
        assert!(Instant::now() < deadline, "bitcoind does not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Mine `blocks`, their coinbase to a fresh script: a block mined again after `invalidateblock`
/// must not be the very block invalidated.
fn mine(bitcoind: &Regtest, blocks: u32) -> Vec<String> {
    let nonce: [u8; 32] = bitcoin::secp256k1::rand::random();
    let address = bitcoin::Address::p2wsh(
        &ScriptBuf::from_bytes(nonce.to_vec()),
        bitcoin::Network::Regtest,
    )
    .to_string();
    regtest::rpc(
        &client(bitcoind),
        "generatetoaddress",
        &[json!(blocks), json!(address)],
    )
    .unwrap()
}

/// A socket whose lockouts last long enough that none ends during a test (one found here is
/// one that happened).
fn socket_with_long_lockout(bitcoind: &Regtest, dir: &std::path::Path) -> SocketProcess {
    SocketProcess::start(
        bitcoind,
        &dir.join("socket"),
        &SocketSetup {
            lockout_secs: 600,
            ..SocketSetup::default()
        },
    )
    .unwrap()
}

fn count(socket: &SocketProcess, sql: &str) -> i64 {
    integration::query_i64(&socket.data_dir.join("socket.sqlite"), sql)
}

#[test]
fn bitcoind_restarting_mid_session_locks_no_honest_cable_out() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup {
            spillman: true,
            lightning: true,
            ..SocketSetup::default()
        },
    )
    .unwrap();
    // Every cable funded first: the harness's RPC client keeps bitcoind's first cookie. The
    // Lightning session first: the socket's Lightning node (ldk-node) reads the cookie once,
    // when the socket starts, so after a restart of bitcoind it no longer follows the chain
    // (docs/testing.md "Reliability"); its channel must be open before.
    let schemes = ["lightning", "onchain", "single-fee", "spillman"];
    let cables: Vec<CableFiles> = schemes
        .iter()
        .map(|scheme| {
            CableFiles::create(
                &bitcoind,
                &dir.path().join(scheme),
                &socket.endpoint,
                &CableSetup {
                    schemes: vec![(*scheme).into()],
                    max_session_sat: 10_000,
                    ..CableSetup::default()
                },
                Amount::from_sat(100_000),
            )
            .unwrap()
        })
        .collect();
    cables[0]
        .fund_lightning(&bitcoind, Amount::from_sat(300_000))
        .unwrap();
    let mut restarted = None;
    for (scheme, cable) in schemes.into_iter().zip(&cables) {
        let miner =
            (scheme == "lightning").then(|| Miner::start(&bitcoind, Duration::from_millis(500)));
        let credited_sql = format!(
            "SELECT (SELECT COUNT(*) FROM payments p JOIN sessions s ON s.id = p.session_id
                     WHERE s.scheme = '{scheme}' AND p.status != 'failed')
                  + (SELECT COUNT(*) FROM ln_payments l JOIN sessions s ON s.id = l.session_id
                     WHERE s.scheme = '{scheme}')"
        );
        let mut child = cable.spawn_run().unwrap();
        // Once the session has its first quota paid, bitcoind goes away and comes back.
        let deadline = Instant::now() + Duration::from_secs(180);
        while count(&socket, &credited_sql) < 1 {
            assert!(
                Instant::now() < deadline && child.try_wait().unwrap().is_none(),
                "{scheme}: no first payment\n{}",
                std::fs::read_to_string(&cable.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(miner);
        restarted = Some(restart_bitcoind(&bitcoind, restarted.take(), &[]));
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "{scheme}: the toast does not end"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let log = std::fs::read_to_string(&cable.log).unwrap_or_default();
        assert!(
            status.success(),
            "{scheme}: {log}\nsocket:\n{}",
            socket.log_text()
        );
        assert!(
            log.contains("appliance done (5 payments"),
            "{scheme}: {log}"
        );
        assert_eq!(count(&socket, &credited_sql), 5, "{scheme}");
        assert_eq!(
            count(
                &socket,
                "SELECT COUNT(*) FROM anomalies WHERE rule IN ('payment-refused', 'payment-lost')"
            ),
            0,
            "{scheme}: an honest cable blamed\n{}",
            socket.log_text()
        );
    }
    // The socket's chain watch works on with the new cookie: what it sent confirms.
    mine(&bitcoind, 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(
        &socket,
        "SELECT COUNT(*) FROM single_fee_sets WHERE status = 'broadcast' AND confirmed_height IS NULL",
    ) > 0
    {
        assert!(Instant::now() < deadline, "{}", socket.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(restarted);
}

#[test]
fn a_reorganized_payment_stays_credited_and_a_conflict_in_the_new_chain_is_found() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_with_long_lockout(&bitcoind, dir.path());
    // An honest toast, its five payments confirmed in one block.
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &CableSetup::default(),
        Amount::from_sat(100_000),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let block = mine(&bitcoind, 1).remove(0);
    let txids: Vec<String> = {
        let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
        let mut statement = db.prepare("SELECT txid FROM payments").unwrap();
        let rows = statement.query_map([], |r| r.get(0)).unwrap();
        rows.map(Result::unwrap).collect()
    };
    assert_eq!(txids.len(), 5);
    // The block is reorganized away: the payments are back in the mempool, still credited,
    // and confirm again in the new chain.
    let _: Value = regtest::rpc(bitcoind.client(), "invalidateblock", &[json!(block)]).unwrap();
    let mempool: Vec<String> = regtest::rpc(bitcoind.client(), "getrawmempool", &[]).unwrap();
    assert!(txids.iter().all(|t| mempool.contains(t)), "{mempool:?}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(
            &socket,
            "SELECT COUNT(*) FROM payments WHERE status IN ('broadcast', 'confirmed')"
        ),
        5,
        "{}",
        socket.log_text()
    );
    mine(&bitcoind, 2);
    for txid in &txids {
        let tx: Value = regtest::rpc(
            bitcoind.client(),
            "getrawtransaction",
            &[json!(txid), json!(1)],
        )
        .unwrap();
        assert!(tx["confirmations"].as_u64().unwrap_or(0) >= 1, "{tx}");
    }

    // A cable pays by hand and is credited; the block holding its payment is reorganized away
    // and the new chain holds a transaction spending the same coin back to the cable.
    let mut payer = integration::funded_payer(&bitcoind, 1, 50_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let paid = integration::pay_a_quota_by_hand(&runtime, &socket, &mut payer);
    let block = mine(&bitcoind, 1).remove(0);
    let _: Value = regtest::rpc(bitcoind.client(), "invalidateblock", &[json!(block)]).unwrap();
    let spent_back = paid.spent_back(&mut payer);
    payer.chain.broadcast(&spent_back).unwrap();
    mine(&bitcoind, 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(
        &socket,
        &format!(
            "SELECT COUNT(*) FROM payments WHERE status = 'lost' AND session_id = '{}'",
            paid.session_id
        ),
    ) == 0
    {
        assert!(
            Instant::now() < deadline,
            "the conflict is not found\n{}",
            socket.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        count(
            &socket,
            "SELECT COUNT(*) FROM cables WHERE banned_reason LIKE '%was replaced%'"
        ),
        1
    );
    // The honest toast's payments are untouched.
    assert_eq!(
        count(
            &socket,
            "SELECT COUNT(*) FROM payments WHERE status = 'lost'"
        ),
        1
    );
}

/// A hand-made cable pays the socket one quota from the output of a transaction of its own
/// still unconfirmed (the parent); returns the parent, a replacement of the parent (its input
/// back to the payer at a higher fee, not sent) and the payment.
fn paid_from_an_unconfirmed_parent(
    bitcoind: &Regtest,
    socket: &SocketProcess,
    runtime: &tokio::runtime::Runtime,
) -> (
    bitcoin::Transaction,
    bitcoin::Transaction,
    integration::PaidByHand,
) {
    let mut payer = integration::funded_payer(bitcoind, 1, 50_000);
    let own = payer.wallet.receive_address(3).unwrap().script_pubkey();
    let parent = payer
        .wallet
        .pay(
            &own,
            Amount::from_sat(45_000),
            bitcoin::FeeRate::from_sat_per_vb(2).unwrap(),
            Amount::from_sat(2_000),
        )
        .unwrap()
        .tx;
    let inputs: Vec<bitcoin::OutPoint> = parent.input.iter().map(|i| i.previous_output).collect();
    let elsewhere = payer.wallet.receive_address(9).unwrap().script_pubkey();
    let replacement = payer
        .wallet
        .pay_from(
            &inputs,
            &elsewhere,
            Amount::from_sat(40_000),
            Amount::from_sat(5_000),
        )
        .unwrap()
        .tx;
    payer.chain.broadcast(&parent).unwrap();
    payer.wallet.record_sent(&parent).unwrap();
    let paid = integration::pay_a_quota_by_hand(runtime, socket, &mut payer);
    let parent_txid = parent.compute_txid();
    assert!(
        paid.inputs.iter().all(|i| i.txid == parent_txid),
        "the payment spends the unconfirmed parent: {:?}",
        paid.inputs
    );
    (parent, replacement, paid)
}

/// Lost payments, banned cables and anomalies in the socket's store.
fn blamed(socket: &SocketProcess) -> (i64, i64, i64) {
    (
        count(
            socket,
            "SELECT COUNT(*) FROM payments WHERE status = 'lost'",
        ),
        count(
            socket,
            "SELECT COUNT(*) FROM cables WHERE banned_reason IS NOT NULL",
        ),
        count(socket, "SELECT COUNT(*) FROM anomalies"),
    )
}

fn mempool(bitcoind: &Regtest) -> Vec<String> {
    regtest::rpc(&client(bitcoind), "getrawmempool", &[]).unwrap()
}

#[test]
fn a_payment_whose_parent_is_evicted_blames_nobody_and_is_sent_again() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_with_long_lockout(&bitcoind, dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (parent, _, paid) = paid_from_an_unconfirmed_parent(&bitcoind, &socket, &runtime);
    let (parent_txid, txid) = (
        parent.compute_txid().to_string(),
        paid.tx.compute_txid().to_string(),
    );

    // Both leave the mempool: bitcoind starts again without the mempool it saved.
    let restarted = restart_bitcoind(&bitcoind, None, &["-persistmempool=0"]);
    assert!(mempool(&bitcoind).is_empty());
    // The socket kept the parent with the payment: its chain watch sends both again, blaming
    // nobody, and the payment confirms.
    integration::wait_until(
        "the parent and the payment sent again",
        Duration::from_secs(30),
        || {
            let mempool = mempool(&bitcoind);
            mempool.contains(&parent_txid) && mempool.contains(&txid)
        },
    );
    assert_eq!(blamed(&socket), (0, 0, 0), "{}", socket.log_text());
    mine(&bitcoind, 1);
    let tx: Value = regtest::rpc(
        &client(&bitcoind),
        "getrawtransaction",
        &[json!(txid), json!(1)],
    )
    .unwrap();
    assert!(tx["confirmations"].as_u64().unwrap_or(0) >= 1, "{tx}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(blamed(&socket), (0, 0, 0), "{}", socket.log_text());
    drop(restarted);
}

/// Whoever can spend the parent's input replaces the parent (here the cable itself, which the
/// socket cannot tell from anyone else): the payment can never confirm. The socket records it
/// lost and counts it against the cable's unconfirmed limit for good, and blames nobody.
#[test]
fn a_payment_whose_parent_is_replaced_is_recorded_lost_and_blames_nobody() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = socket_with_long_lockout(&bitcoind, dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_, replacement, paid) = paid_from_an_unconfirmed_parent(&bitcoind, &socket, &runtime);
    regtest::rpc::<Value>(
        &client(&bitcoind),
        "sendrawtransaction",
        &[json!(bitcoin::consensus::encode::serialize_hex(
            &replacement
        ))],
    )
    .unwrap();
    let txid = paid.tx.compute_txid().to_string();
    assert!(!mempool(&bitcoind).contains(&txid));
    integration::wait_until("the payment recorded lost", Duration::from_secs(30), || {
        count(
            &socket,
            &format!("SELECT COUNT(*) FROM payments WHERE txid = '{txid}' AND status = 'lost'"),
        ) == 1
    });
    let log = socket.log_text();
    assert_eq!(blamed(&socket), (1, 0, 0), "{log}");
    assert_eq!(
        count(
            &socket,
            "SELECT COUNT(*) FROM audit WHERE event = 'payment-lost-unproven'"
        ),
        1,
        "{log}"
    );
    assert_eq!(
        count(&socket, "SELECT lost_sat FROM cables"),
        paid.amount.to_sat() as i64,
        "{log}"
    );
}
