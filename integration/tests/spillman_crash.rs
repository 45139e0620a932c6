//! spillman across crashes: the cable or the socket aborts right after each of its persistence
//! points (crash points of the `failpoints` feature), is started again, and the toast ends
//! with one deposit and one close that pays the socket exactly the quotas it credited, nothing
//! paid twice (seed 003; design.md "Durability before action").

use std::time::{Duration, Instant};

use bitcoin::consensus::encode;
use bitcoin::{Amount, Transaction};
use integration::{CableFiles, CableSetup, SocketProcess, SocketSetup};
use regtest::Regtest;
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy)]
enum Who {
    Cable,
    Socket,
}

/// Run the toast with the crash point `point` armed in `who`; restart whoever died (without
/// the crash point) until the cable finishes.
fn toast_through_a_crash(bitcoind: &Regtest, who: Who, point: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mut socket_setup = SocketSetup {
        spillman: true,
        ..SocketSetup::default()
    };
    socket_setup.link_debounce_ms = 5_000;
    let mut socket =
        SocketProcess::start(bitcoind, &dir.path().join("socket"), &socket_setup).unwrap();
    let mut cable = CableFiles::create(
        bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &CableSetup {
            schemes: vec!["spillman".into()],
            max_session_sat: 10_000,
            ..CableSetup::default()
        },
        Amount::from_sat(50_000),
    )
    .unwrap();
    // `name` fires at once; `name=2*off->return` at the third pass.
    let spec = if point.contains('=') {
        point.to_owned()
    } else {
        format!("{point}=return")
    };
    let armed = vec![("FAILPOINTS".to_owned(), spec)];
    match who {
        Who::Cable => cable.env = armed,
        Who::Socket => {
            socket.env = armed;
            socket.restart().unwrap();
        }
    }

    let mut crashed = false;
    let mut child = cable.spawn_run().unwrap();
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        assert!(
            Instant::now() < deadline,
            "{point}: no end\ncable:\n{}\nsocket:\n{}",
            std::fs::read_to_string(&cable.log).unwrap_or_default(),
            socket.log_text()
        );
        if !socket.is_running() {
            crashed = true;
            socket.env.clear();
            socket.restart().unwrap();
        }
        if let Some(status) = child.try_wait().unwrap() {
            if status.success() {
                break;
            }
            crashed = true;
            cable.env.clear();
            child = cable.spawn_run().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(crashed, "{point}: the crash point never fired");

    // One channel, closed by the socket with its highest payment; nothing paid twice.
    let socket_db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let (status, highest, credited): (String, i64, i64) = {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let row = socket_db
                .query_row(
                    "SELECT c.status, c.highest_total_sat,
                            (SELECT COALESCE(SUM(amount_sat), 0) FROM payments p
                             WHERE p.session_id = c.session_id)
                     FROM spillman_channels c",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .unwrap();
            if row.0 == "closed" || Instant::now() > deadline {
                break row;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert_eq!(status, "closed", "{point}: {}", socket.log_text());
    assert_eq!(
        highest, credited,
        "{point}: the close pays what was credited"
    );
    assert!(
        highest >= 5_000,
        "{point}: the toast needs five quotas, got {highest}"
    );
    let channels: i64 = socket_db
        .query_row("SELECT COUNT(*) FROM spillman_channels", [], |r| r.get(0))
        .unwrap();
    assert_eq!(channels, 1, "{point}: one deposit only");
    let close_txid: String = socket_db
        .query_row("SELECT close_txid FROM spillman_channels", [], |r| r.get(0))
        .unwrap();
    bitcoind.mine(1).unwrap();
    let hex: String =
        regtest::rpc(bitcoind.client(), "getrawtransaction", &[json!(close_txid)]).unwrap();
    let close: Transaction = encode::deserialize_hex(&hex).unwrap();
    assert_eq!(close.output[0].value, Amount::from_sat(highest as u64));
    let info: Value = regtest::rpc(
        bitcoind.client(),
        "getrawtransaction",
        &[json!(close_txid), json!(1)],
    )
    .unwrap();
    assert!(info["confirmations"].as_u64().unwrap_or(0) >= 1, "{info}");
}

#[test]
fn a_crash_at_each_persistence_point_loses_nothing() {
    let bitcoind = Regtest::start().unwrap();
    // The cable: the signed refund stored, the deposit not yet handed over; a payment signed
    // and stored, not yet sent (the third).
    toast_through_a_crash(&bitcoind, Who::Cable, "cable-refund-stored");
    toast_through_a_crash(&bitcoind, Who::Cable, "cable-payment-stored=2*off->return");
    // The socket: the deposit stored, not yet broadcast; a payment held, not yet credited.
    toast_through_a_crash(&bitcoind, Who::Socket, "socket-deposit-stored");
    toast_through_a_crash(&bitcoind, Who::Socket, "socket-payment-held=2*off->return");
}
