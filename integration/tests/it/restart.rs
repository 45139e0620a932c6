//! A power cut at the socket: socket-node SIGKILLed mid-session and started again on the same
//! data dir. Sessions and payments survive, the cable carries on over the same session, and
//! nothing is credited twice (design.md "Storage": a row is committed before the reply).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bitcoin::Amount;
use integration::{CableFiles, CableSetup, SocketProcess, SocketSetup};
use regtest::Regtest;
use serde_json::{json, Value};

#[test]
fn socket_killed_mid_session_loses_and_doubles_nothing() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = SocketSetup {
        load_toml: "kind = \"constant\"\npower_w = 1300.0".into(),
        link_debounce_ms: 5_000,
        ..SocketSetup::default()
    };
    let mut socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    // A budget of six quotas: the cable stops after the sixth is used.
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &CableSetup {
            max_session_sat: 6_000,
            ..CableSetup::default()
        },
        Amount::from_sat(100_000),
    )
    .unwrap();
    let mut child = cable.spawn_run().unwrap();

    // Let two payments through, then cut the socket's power.
    let deadline = Instant::now() + Duration::from_secs(60);
    let session_id = loop {
        let status = socket.status().unwrap();
        if status.payments >= 2 {
            break socket
                .session_of(&status)
                .unwrap()
                .expect("a session in progress");
        }
        assert!(
            Instant::now() < deadline,
            "no second payment:\n{}",
            socket.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    socket.kill();
    std::thread::sleep(Duration::from_millis(300));
    socket.restart().unwrap();
    let resumed = socket.status().unwrap();
    assert_eq!(
        socket.session_of(&resumed).unwrap().as_ref(),
        Some(&session_id),
        "the session did not survive the restart"
    );
    assert!(resumed.payments >= 2);

    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "cable never finished");
        std::thread::sleep(Duration::from_millis(50));
    };
    let log = std::fs::read_to_string(&cable.log).unwrap();
    assert!(
        status.success(),
        "cable failed:\n{log}\nsocket:\n{}",
        socket.log_text()
    );
    let report = cable.session_report().unwrap();
    assert_eq!(report.outcome, "session budget spent", "{report:?}");
    assert_eq!(report.session_id, session_id);

    // Six payments, six distinct transactions, all on the chain, each credited once.
    let payments = &report.payments;
    assert_eq!(payments.len(), 6, "{report:?}");
    let txids: HashSet<&str> = payments.iter().map(|p| p.txid.as_str()).collect();
    assert_eq!(txids.len(), 6);
    bitcoind.mine(1).unwrap();
    for txid in &txids {
        let tx: Value = regtest::rpc(
            bitcoind.client(),
            "getrawtransaction",
            &[json!(txid), json!(1)],
        )
        .unwrap();
        assert!(
            tx["confirmations"].as_u64().unwrap_or(0) >= 1,
            "{txid} not confirmed"
        );
    }
    let store = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let (rows, credited, distinct): (i64, i64, i64) = store
        .query_row(
            "SELECT COUNT(*), SUM(quota_mwh), COUNT(DISTINCT txid) FROM payments
             WHERE session_id = ?1 AND status = 'broadcast'",
            [&session_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((rows, credited, distinct), (6, 48_000, 6));
    let socket_txids: HashSet<String> = store
        .prepare("SELECT txid FROM payments WHERE session_id = ?1")
        .unwrap()
        .query_map([&session_id], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(socket_txids, txids.iter().map(|t| t.to_string()).collect());
}
