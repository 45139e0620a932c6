//! Unavailable is not a cheat (design.md "Trust"): bitcoind stops answering (SIGSTOP) while a
//! cable's payment waits to be checked. The socket answers UNAVAILABLE, credits nothing
//! without its chain check, and does not lock the honest cable out when its quota runs out
//! meanwhile: the session is suspended (relay open) and goes on once bitcoind is back.

use std::process::Command;
use std::time::{Duration, Instant};

use bitcoin::{Amount, FeeRate, ScriptBuf};
use integration::{SocketProcess, SocketSetup, OUTLET};
use proto::identity::session_hash;
use proto::v1::socket_client::SocketClient;
use proto::v1::{self, OutletState};
use regtest::Regtest;

/// Send SIGSTOP or SIGCONT to the regtest bitcoind.
fn signal_bitcoind(bitcoind: &Regtest, signal: &str) {
    let pid = std::fs::read_to_string(bitcoind.datadir().join("regtest").join("bitcoind.pid"))
        .expect("bitcoind's pid file");
    let status = Command::new("kill")
        .args([signal, pid.trim()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// bitcoind stopped (SIGSTOP) while this lives, continued when it drops (also on a panic).
struct Silenced<'a>(&'a Regtest);

impl<'a> Silenced<'a> {
    fn new(bitcoind: &'a Regtest) -> Self {
        signal_bitcoind(bitcoind, "-STOP");
        Silenced(bitcoind)
    }
}

impl Drop for Silenced<'_> {
    fn drop(&mut self) {
        signal_bitcoind(self.0, "-CONT");
    }
}

#[test]
fn an_honest_cable_is_not_locked_out_while_bitcoind_does_not_answer() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup {
            // 60 s of grace on the outlet clock is 3 s real: far less than bitcoind's silence.
            payment_timeout_secs: 120,
            lockout_secs: 600,
            ..SocketSetup::default()
        },
    )
    .unwrap();
    // One wallet per payment: each pays from its own coin, whatever the mempool holds.
    let mut payer = integration::funded_payer(&bitcoind, 1, 50_000);
    let mut other = integration::funded_payer(&bitcoind, 1, 50_000);
    let signer = integration::cable_signer();
    let to = socket.recipient();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut client = runtime
        .block_on(SocketClient::connect(socket.endpoint.clone()))
        .unwrap();
    let _link = runtime
        .block_on(client.watch_status(integration::cable_signer().sign(
            &to,
            v1::WatchStatusRequest {
                outlet_id: OUTLET.into(),
                auth: None,
            },
        )))
        .unwrap();
    let request_terms = |session_id: &str| {
        runtime
            .block_on(client.clone().power_request(signer.sign(
                &to,
                v1::PowerRequestRequest {
                    outlet_id: OUTLET.into(),
                    scheme: v1::Scheme::Onchain as i32,
                    session_id: session_id.into(),
                    ..Default::default()
                },
            )))
            .unwrap()
            .into_inner()
    };
    let first = request_terms("");
    let session_id = first.session_id.clone();

    let payout = ScriptBuf::from_bytes(first.payout_script.clone());
    let amount = Amount::from_sat(first.amount_msat / 1_000);
    let rate = FeeRate::from_sat_per_vb(2).unwrap();
    let sign = |payer: &mut integration::Payer| {
        payer.wallet.sync(&payer.chain).unwrap();
        let (inputs, fee) = payer
            .wallet
            .plan_input_set(&payout, amount, rate, Amount::from_sat(5_000))
            .unwrap();
        payer
            .wallet
            .pay_from(&inputs, &payout, amount, fee)
            .unwrap()
    };
    let one = sign(&mut payer);
    let pay = |payment_id: u64, psbt: Vec<u8>| {
        let request = signer.sign(
            &to,
            v1::PayTransactionRequest {
                session_id: session_id.clone(),
                payment_id,
                psbt,
                auth: None,
            },
        );
        let mut client = client.clone();
        runtime.block_on(async move { client.pay_transaction(request).await })
    };
    let paid = pay(first.payment_id, one.psbt.serialize())
        .unwrap()
        .into_inner();
    assert_eq!(paid.state, OutletState::Paid as i32);
    // The next quota's terms, and its payment signed while bitcoind answers.
    let second = request_terms(&session_id);
    assert_eq!(second.payment_id, first.payment_id + 1);
    let two = sign(&mut other);

    // bitcoind stops answering; the second payment cannot be checked.
    let silenced = Silenced::new(&bitcoind);
    let statuses = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(12);
            while Instant::now() < deadline {
                seen.push(socket.status().unwrap());
                std::thread::sleep(Duration::from_millis(200));
            }
            seen
        });
        let refused = pay(second.payment_id, two.psbt.serialize()).expect_err("unchecked");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
        assert_eq!(
            proto::errors::reason_of(&refused),
            Some(v1::ErrorReason::Unavailable),
            "{refused:?}"
        );
        watcher.join().unwrap()
    });
    assert!(
        statuses
            .iter()
            .all(|s| s.state != OutletState::Lockout as i32),
        "locked out while bitcoind was silent: {statuses:?}\n{}",
        socket.log_text()
    );
    let suspended = statuses.last().unwrap();
    assert_eq!(
        suspended.state,
        OutletState::Standby as i32,
        "{suspended:?}"
    );
    assert!(!suspended.relay_closed, "no energy while unpaid");
    assert_eq!(suspended.session_hash, session_hash(&session_id));

    // bitcoind is back: the same payment, sent again, is checked and credited.
    drop(silenced);
    let paid = pay(second.payment_id, two.psbt.serialize())
        .unwrap()
        .into_inner();
    assert_eq!(paid.state, OutletState::Paid as i32);
    assert_eq!(paid.txid, two.tx.compute_txid().to_string());
    let status = socket.status().unwrap();
    assert_eq!(status.payments, 2, "{status:?}");
    assert!(
        !socket.log_text().contains("lockout"),
        "{}",
        socket.log_text()
    );
}

/// A broadcast bitcoind does not answer (here: never sees) is no refusal: the payment, checked
/// by `testmempoolaccept` a moment before and stored, is credited, the honest cable goes on, and
/// the socket's chain watch sends it once bitcoind answers.
#[test]
fn a_broadcast_bitcoind_does_not_answer_is_credited_and_sent_by_the_chain_watch() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup::default(),
    )
    .unwrap();
    // The first broadcast gets no answer (and never reaches bitcoind).
    socket.env = vec![(
        "FAILPOINTS".into(),
        "socket-broadcast-unanswered=1*return".into(),
    )];
    socket.restart().unwrap();
    // Two quotas of 1000 sat.
    let cable = integration::CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &integration::CableSetup {
            max_session_sat: 2_000,
            ..integration::CableSetup::default()
        },
        Amount::from_sat(50_000),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the honest cable failed:\n{log}");
    assert!(
        socket.log_text().contains("did not answer the broadcast"),
        "the failpoint did not fire:\n{}",
        socket.log_text()
    );

    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    integration::wait_until(
        "the chain watch to send the payment",
        Duration::from_secs(30),
        || {
            db.query_row(
                "SELECT COUNT(*) FROM payments WHERE status = 'accepted'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
                == 0
        },
    );
    let mut statement = db
        .prepare("SELECT txid, status FROM payments ORDER BY payment_id")
        .unwrap();
    let payments: Vec<(String, String)> = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(payments.len(), 2, "{payments:?}");
    let mempool: Vec<String> = regtest::rpc(bitcoind.client(), "getrawmempool", &[]).unwrap();
    for (txid, status) in &payments {
        assert_eq!(status, "broadcast", "{payments:?}");
        assert!(mempool.contains(txid), "{txid} is not in the mempool");
    }
    let lockouts: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM anomalies WHERE rule = 'payment-refused'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(lockouts, 0);
}

/// The same for a spillman deposit: its broadcast gets no answer, the socket says UNAVAILABLE
/// (no lockout), the cable hands it over again, the socket sends it and acknowledges it, and
/// the session is paid from it as usual.
#[test]
fn a_deposit_broadcast_bitcoind_does_not_answer_is_handed_over_again() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup {
            spillman: true,
            ..SocketSetup::default()
        },
    )
    .unwrap();
    socket.env = vec![(
        "FAILPOINTS".into(),
        "socket-deposit-broadcast-unanswered=1*return".into(),
    )];
    socket.restart().unwrap();
    let cable = integration::CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &integration::CableSetup {
            schemes: vec!["spillman".into()],
            max_session_sat: 2_000,
            ..integration::CableSetup::default()
        },
        Amount::from_sat(50_000),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the honest cable failed:\n{log}");
    assert!(
        log.contains("handing the deposit over again"),
        "the failpoint did not fire:\n{log}"
    );
    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let (deposit_hex, anomalies): (String, i64) = db
        .query_row(
            "SELECT deposit_tx_hex, (SELECT COUNT(*) FROM anomalies) FROM spillman_channels",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(anomalies, 0);
    let deposit: bitcoin::Transaction =
        bitcoin::consensus::encode::deserialize_hex(&deposit_hex).unwrap();
    let txid = deposit.compute_txid().to_string();
    let known: serde_json::Value = regtest::rpc(
        bitcoind.client(),
        "getrawtransaction",
        &[txid.clone().into()],
    )
    .unwrap();
    assert!(
        known.is_string(),
        "bitcoind does not know the deposit {txid}"
    );
}

/// bitcoind's work queue overflows (`-rpcworkqueue=1`, other callers hammering it, as a busy
/// node's wallet or explorer would): its refusals (HTTP 503) are no answers, never facts. The
/// socket bans, flags and charges nobody, and every payment it credited confirms once the load
/// is gone.
#[test]
fn a_bitcoind_whose_work_queue_overflows_bans_nobody() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let bitcoind = Regtest::start_with(&["-rpcworkqueue=1", "-rpcthreads=1"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup::default(),
    )
    .unwrap();
    let cable = integration::CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &integration::CableSetup::default(),
        Amount::from_sat(100_000),
    )
    .unwrap();
    let count = |sql: &str| integration::query_i64(&socket.data_dir.join("socket.sqlite"), sql);
    let mut run = cable.spawn_run().unwrap();
    integration::wait_until(
        "the first payment credited",
        Duration::from_secs(60),
        || count("SELECT COUNT(*) FROM payments") >= 1,
    );
    // The load: three callers that never pause.
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (stop, refused) = (Arc::clone(&stop), Arc::clone(&refused));
            let client = regtest::Client::new_with_auth(
                &bitcoind.rpc_url(),
                regtest::Auth::CookieFile(bitcoind.cookie_file().to_owned()),
            )
            .unwrap();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if regtest::rpc::<serde_json::Value>(&client, "getblockchaininfo", &[]).is_err()
                    {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // The rest of the session, blocks and the chain watch's rounds, all under the load.
    let deadline = Instant::now() + Duration::from_secs(120);
    while run.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = run.kill();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mine = |blocks: u32| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while bitcoind.mine(blocks).is_err() {
            assert!(Instant::now() < deadline, "bitcoind mines nothing");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    mine(2);
    std::thread::sleep(Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().unwrap();
    }
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "bitcoind's work queue never overflowed"
    );
    let log = socket.log_text();
    assert_eq!(
        count("SELECT COUNT(*) FROM payments WHERE status = 'lost'"),
        0,
        "{log}"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM cables WHERE banned_reason IS NOT NULL"),
        0,
        "{log}"
    );
    assert_eq!(count("SELECT COUNT(*) FROM anomalies"), 0, "{log}");
    // Without the load every credited payment is sent (one whose broadcast got no answer, by
    // the chain watch) and confirms.
    integration::wait_until(
        "every credited payment sent",
        Duration::from_secs(30),
        || count("SELECT COUNT(*) FROM payments WHERE status = 'accepted'") == 0,
    );
    mine(8);
    integration::wait_until(
        "every credited payment confirmed",
        Duration::from_secs(60),
        || count("SELECT COUNT(*) FROM payments WHERE status != 'confirmed'") == 0,
    );
    assert!(count("SELECT COUNT(*) FROM payments") >= 1);
}
