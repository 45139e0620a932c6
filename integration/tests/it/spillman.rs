//! The `spillman` payment channel (seed 003 steps 4–17; design.md) end to end: real
//! socket-node and cable-node processes on a real regtest chain. One deposit, a payment per
//! quota held by the socket, one close; the refund when the socket never closes; a socket
//! restarted near the lock height closes in time.

use std::time::{Duration, Instant};

use bitcoin::consensus::encode;
use bitcoin::{Amount, OutPoint, Transaction, Txid};
use integration::{CableFiles, CableSetup, SocketProcess, SocketSetup};
use regtest::Regtest;
use serde_json::{json, Value};

fn spillman_socket() -> SocketSetup {
    SocketSetup {
        spillman: true,
        ..SocketSetup::default()
    }
}

fn spillman_cable(lock_blocks: u32) -> CableSetup {
    CableSetup {
        schemes: vec!["spillman".into()],
        max_session_sat: 10_000,
        spillman_lock_blocks: lock_blocks,
        ..CableSetup::default()
    }
}

fn transaction(bitcoind: &Regtest, txid: &str) -> Transaction {
    let hex: String = regtest::rpc(bitcoind.client(), "getrawtransaction", &[json!(txid)]).unwrap();
    encode::deserialize_hex(&hex).unwrap()
}

fn wait_for_tx(bitcoind: &Regtest, txid: &str) {
    integration::wait_until(
        &format!("transaction {txid}"),
        Duration::from_secs(30),
        || regtest::rpc::<Value>(bitcoind.client(), "getrawtransaction", &[json!(txid)]).is_ok(),
    );
}

/// A regtest chain, a spillman socket, and a cable funded with 50 000 sat whose refunds unlock
/// `lock_blocks` after opening.
fn start(lock_blocks: u32) -> (Regtest, tempfile::TempDir, SocketProcess, CableFiles) {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket =
        SocketProcess::start(&bitcoind, &dir.path().join("socket"), &spillman_socket()).unwrap();
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &spillman_cable(lock_blocks),
        Amount::from_sat(50_000),
    )
    .unwrap();
    (bitcoind, dir, socket, cable)
}

/// The output of the socket's store: (status, highest total) of the session's channel.
fn socket_channel(socket: &SocketProcess) -> (String, i64) {
    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    db.query_row(
        "SELECT status, highest_total_sat FROM spillman_channels",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

#[test]
fn the_toast_is_one_deposit_five_payments_and_one_close() {
    let (bitcoind, _dir, socket, cable) = start(144);
    let offer = socket.offer().unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        socket.log_text()
    );
    let report = cable.session_report().unwrap();
    assert_eq!(report.payments.len(), 5, "{report:?}");
    let onchain = &report.onchain_txs;
    assert_eq!(onchain.len(), 2, "the deposit and the close: {report:?}");
    let (deposit_txid, close_txid) = (onchain[0].txid.as_str(), onchain[1].txid.as_str());
    wait_for_tx(&bitcoind, close_txid);
    bitcoind.mine(1).unwrap();

    // The close spends the deposit: five quotas to the socket, the rest less the fee back.
    let deposit = transaction(&bitcoind, deposit_txid);
    let close = transaction(&bitcoind, close_txid);
    let deposit_value = deposit
        .output
        .iter()
        .find(|o| o.script_pubkey.is_p2wsh())
        .unwrap()
        .value;
    assert_eq!(close.input.len(), 1);
    assert_eq!(
        close.input[0].previous_output.txid.to_string(),
        deposit_txid
    );
    assert_eq!(close.output[0].value, Amount::from_sat(5_000));
    assert_eq!(
        close.output[0].script_pubkey.as_bytes(),
        &offer.payout_script[..]
    );
    let fee = deposit_value - Amount::from_sat(10_000);
    assert_eq!(
        close.output[1].value,
        deposit_value - Amount::from_sat(5_000) - fee
    );
    for txid in [deposit_txid, close_txid] {
        let tx: Value = regtest::rpc(
            bitcoind.client(),
            "getrawtransaction",
            &[json!(txid), json!(1)],
        )
        .unwrap();
        assert!(tx["confirmations"].as_u64().unwrap_or(0) >= 1, "{tx}");
    }
    assert_eq!(socket_channel(&socket), ("closed".into(), 5_000));
}

/// Run the cable until the socket holds two payments, then cut the power of both.
fn two_payments_then_power_cut(socket: &mut SocketProcess, cable: &CableFiles) {
    let mut child = cable.spawn_run().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while socket.status().map_or(0, |s| s.payments) < 2 {
        assert!(
            Instant::now() < deadline,
            "no two payments:\n{}",
            socket.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    socket.kill();
}

fn deposit_outpoint(cable: &CableFiles) -> (OutPoint, u32) {
    let db = rusqlite::Connection::open(cable.data_dir.join("cable.sqlite")).unwrap();
    let (txid, vout, lock): (String, u32, u32) = db
        .query_row(
            "SELECT deposit_txid, deposit_vout, refund_lock_height FROM spillman_channels",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    (OutPoint::new(txid.parse::<Txid>().unwrap(), vout), lock)
}

#[test]
fn a_socket_that_never_closes_leaves_the_cable_its_refund_at_the_lock_height() {
    let (bitcoind, _dir, mut socket, cable) = start(20);
    two_payments_then_power_cut(&mut socket, &cable);
    let (deposit, lock_height) = deposit_outpoint(&cable);
    bitcoind.mine(1).unwrap();

    let refund = |cable: &CableFiles| cable.cli(&["refund"]).unwrap();
    // Before the lock height the refund is not due; from it on, it is.
    assert!(refund(&cable).contains("no refund due"));
    let tip = bitcoind.height().unwrap();
    bitcoind.mine(lock_height - tip).unwrap();
    let said = refund(&cable);
    let txid = said
        .trim()
        .strip_prefix("refund broadcast: ")
        .unwrap_or_else(|| panic!("{said}"))
        .to_owned();
    bitcoind.mine(1).unwrap();
    let tx = transaction(&bitcoind, &txid);
    assert_eq!(tx.input[0].previous_output, deposit);
    // The deposit is the session budget plus the channel's fee: the budget comes back whole.
    assert_eq!(tx.output[0].value, Amount::from_sat(10_000));
}

#[test]
fn a_socket_restarted_near_the_lock_height_closes_in_time() {
    let (bitcoind, _dir, mut socket, cable) = start(30);
    two_payments_then_power_cut(&mut socket, &cable);
    let (deposit, lock_height) = deposit_outpoint(&cable);

    // Down until 6 blocks (close_margin_blocks) before the refund unlocks, then back.
    let tip = bitcoind.height().unwrap();
    bitcoind.mine(lock_height - 6 - tip).unwrap();
    socket.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, total) = loop {
        let channel = socket_channel(&socket);
        if channel.0 == "closed" || Instant::now() > deadline {
            break channel;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, "closed", "{}", socket.log_text());
    assert!(total >= 2_000, "{total}");
    bitcoind.mine(1).unwrap();
    let client = bitcoind.client();
    let spent: Value = regtest::rpc(
        client,
        "gettxout",
        &[json!(deposit.txid.to_string()), json!(deposit.vout)],
    )
    .unwrap_or(Value::Null);
    assert!(spent.is_null(), "the deposit is still unspent: {spent}");
}
