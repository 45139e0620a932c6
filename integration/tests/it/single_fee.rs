//! The paper's single-fee protocol (seed 000 §VI, Table II) end to end: rising payments over
//! the same inputs, one transaction and one fee per input set, across crashes of either node.

use std::time::Duration;

use bitcoin::{Amount, OutPoint, Transaction};
use integration::{wait_until, CableFiles, CableSetup, SocketProcess, SocketSetup};
use regtest::Regtest;
use serde_json::{json, Value};

fn single_fee_cable() -> CableSetup {
    CableSetup {
        schemes: vec!["single-fee".into()],
        ..CableSetup::default()
    }
}

fn transaction(bitcoind: &Regtest, txid: &str) -> (Transaction, Value) {
    let verbose: Value = regtest::rpc(
        bitcoind.client(),
        "getrawtransaction",
        &[json!(txid), json!(1)],
    )
    .unwrap();
    let tx = bitcoin::consensus::encode::deserialize_hex(verbose["hex"].as_str().unwrap()).unwrap();
    (tx, verbose)
}

fn sorted_inputs(tx: &Transaction) -> Vec<OutPoint> {
    let mut inputs: Vec<OutPoint> = tx.input.iter().map(|i| i.previous_output).collect();
    inputs.sort();
    inputs
}

/// (set_index, status, txid, value) of the socket's single-fee sets.
fn socket_sets(socket: &SocketProcess) -> Vec<(i64, String, Option<String>, i64)> {
    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let mut statement = db
        .prepare("SELECT set_index, status, txid, latest_value_sat FROM single_fee_sets ORDER BY set_index")
        .unwrap();
    statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn the_toast_is_one_transaction_with_one_fee() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup::default(),
    )
    .unwrap();
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &single_fee_cable(),
        Amount::from_sat(100_000),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        socket.log_text()
    );

    let report = cable.session_report().unwrap();
    assert_eq!(report.outcome, "appliance done", "{report:?}");
    assert_eq!(report.payments.len(), 5, "{report:?}");
    let onchain = &report.onchain_txs;
    assert_eq!(onchain.len(), 1, "{report:?}");
    assert_eq!(onchain[0].amount_sat, 5_000);

    bitcoind.mine(1).unwrap();
    let txid = onchain[0].txid.as_str();
    let (tx, verbose) = transaction(&bitcoind, txid);
    assert!(verbose["confirmations"].as_u64().unwrap() >= 1);
    // Every payment of the toast spent the inputs of the one that confirmed.
    let first: String = report.payments[0].txid.as_str().into();
    let cable_db = rusqlite::Connection::open(cable.data_dir.join("cable.sqlite")).unwrap();
    let first_psbt: Vec<u8> = cable_db
        .query_row("SELECT psbt FROM payments WHERE txid = ?1", [&first], |r| {
            r.get(0)
        })
        .unwrap();
    let first_tx = bitcoin::psbt::Psbt::deserialize(&first_psbt)
        .unwrap()
        .extract_tx_unchecked_fee_rate();
    assert_eq!(sorted_inputs(&first_tx), sorted_inputs(&tx));
    assert_eq!(
        tx.output.iter().map(|o| o.value).sum::<Amount>(),
        first_tx.output.iter().map(|o| o.value).sum::<Amount>(),
        "the fee changed"
    );

    // The socket settles once it sees the cable gone (after its link debounce).
    wait_until("the socket to settle", Duration::from_secs(15), || {
        socket_sets(&socket).iter().all(|s| s.1 != "open")
    });
    let sets = socket_sets(&socket);
    assert_eq!(
        sets,
        vec![(1, "broadcast".into(), Some(txid.to_owned()), 5_000)]
    );

    // The socket watches what it broadcast until it confirms, and records where (§VII.B).
    let header: Value = regtest::rpc(
        bitcoind.client(),
        "getblockheader",
        &[verbose["blockhash"].clone()],
    )
    .unwrap();
    let height = header["height"].as_i64();
    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    wait_until(
        "the socket to see the confirmation",
        Duration::from_secs(15),
        || {
            db.query_row("SELECT confirmed_height FROM single_fee_sets", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .unwrap()
                == height
        },
    );
}

#[test]
fn a_session_past_the_maximum_pays_in_two_transactions() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = SocketSetup {
        single_fee_max_sat: 3_000,
        ..SocketSetup::default()
    };
    let socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &single_fee_cable(),
        Amount::from_sat(100_000),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        socket.log_text()
    );

    let report = cable.session_report().unwrap();
    let onchain = &report.onchain_txs;
    let values: Vec<u64> = onchain.iter().map(|t| t.amount_sat).collect();
    assert_eq!(values, vec![3_000, 2_000], "{report:?}");
    bitcoind.mine(1).unwrap();
    for t in onchain {
        let (_, verbose) = transaction(&bitcoind, &t.txid);
        assert!(verbose["confirmations"].as_u64().unwrap() >= 1);
    }
    wait_until("the socket to settle", Duration::from_secs(15), || {
        socket_sets(&socket).iter().all(|s| s.1 != "open")
    });
    let sets = socket_sets(&socket);
    assert_eq!(sets.len(), 2, "{sets:?}");
    assert!(
        sets.iter()
            .all(|(_, status, _, value)| status == "broadcast" && *value <= 3_000),
        "{sets:?}"
    );
}

#[test]
fn a_socket_killed_after_payment_k_broadcasts_payment_k() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = SocketSetup {
        load_toml: "kind = \"constant\"\npower_w = 1300.0".into(),
        link_debounce_ms: 5_000,
        ..SocketSetup::default()
    };
    let mut socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &CableSetup {
            max_session_sat: 6_000,
            ..single_fee_cable()
        },
        Amount::from_sat(100_000),
    )
    .unwrap();
    let mut child = cable.spawn_run().unwrap();
    let mut held = 0;
    wait_until("two payments", Duration::from_secs(60), || {
        held = socket.status().map(|s| s.payments).unwrap_or(0);
        held >= 2
    });
    socket.kill();
    let (_, _, _, value_at_kill) = socket_sets(&socket)[0].clone();
    socket.restart().unwrap();

    // At start-up the socket broadcasts the set it held: payment k, the value it had credited.
    wait_until("the held set broadcast", Duration::from_secs(10), || {
        socket_sets(&socket)
            .first()
            .is_some_and(|(_, status, _, _)| status == "broadcast")
    });
    let (_, _, txid, value) = socket_sets(&socket)[0].clone();
    assert_eq!(value, value_at_kill);
    let (tx, _) = transaction(&bitcoind, txid.as_deref().unwrap());
    let paid: Amount = tx
        .output
        .iter()
        .filter(|o| o.value == Amount::from_sat(value as u64))
        .map(|o| o.value)
        .sum();
    assert_eq!(paid, Amount::from_sat(value as u64));

    // The cable carries on in a new set; in all, the socket is paid the whole budget once.
    wait_until("the cable to finish", Duration::from_secs(120), || {
        child.try_wait().unwrap().is_some()
    });
    let log = std::fs::read_to_string(&cable.log).unwrap();
    assert!(
        child.wait().unwrap().success(),
        "{log}\n{}",
        socket.log_text()
    );
    wait_until("the socket to settle", Duration::from_secs(15), || {
        socket_sets(&socket).iter().all(|s| s.1 != "open")
    });
    let sets = socket_sets(&socket);
    assert!(
        sets.iter().all(|(_, status, _, _)| status == "broadcast"),
        "{sets:?}"
    );
    assert_eq!(sets.iter().map(|s| s.3).sum::<i64>(), 6_000, "{sets:?}");
    bitcoind.mine(1).unwrap();
    for (_, _, txid, _) in &sets {
        let (_, verbose) = transaction(&bitcoind, txid.as_deref().unwrap());
        assert!(verbose["confirmations"].as_u64().unwrap() >= 1);
    }
}

#[test]
fn a_cable_killed_and_restarted_resumes_its_inputs_and_never_signs_lower() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = SocketSetup {
        load_toml: "kind = \"constant\"\npower_w = 1300.0".into(),
        link_debounce_ms: 8_000,
        ..SocketSetup::default()
    };
    let socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &CableSetup {
            max_session_sat: 6_000,
            ..single_fee_cable()
        },
        Amount::from_sat(100_000),
    )
    .unwrap();
    let mut child = cable.spawn_run().unwrap();
    wait_until("two payments", Duration::from_secs(60), || {
        socket.status().map(|s| s.payments >= 2).unwrap_or(false)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let cable_db = rusqlite::Connection::open(cable.data_dir.join("cable.sqlite")).unwrap();
    let (inputs_before, highest_before): (String, i64) = cable_db
        .query_row(
            "SELECT inputs, highest_value_sat FROM single_fee_sets WHERE set_index = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();

    let mut child = cable.spawn_run().unwrap();
    wait_until(
        "the restarted cable to finish",
        Duration::from_secs(120),
        || child.try_wait().unwrap().is_some(),
    );
    let log = std::fs::read_to_string(&cable.log).unwrap();
    assert!(
        child.wait().unwrap().success(),
        "{log}\n{}",
        socket.log_text()
    );
    assert!(log.contains("resuming the session"), "{log}");

    // The same set, the same inputs, values only ever rising across the restart.
    let (inputs_after, highest_after): (String, i64) = cable_db
        .query_row(
            "SELECT inputs, highest_value_sat FROM single_fee_sets WHERE set_index = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(inputs_after, inputs_before);
    assert!(highest_after > highest_before);
    let sets: i64 = cable_db
        .query_row("SELECT COUNT(*) FROM single_fee_sets", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sets, 1, "the session went on in the same set");
    let payout: String = cable_db
        .query_row(
            "SELECT payout_script_hex FROM single_fee_sets WHERE set_index = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let payout = bitcoin::ScriptBuf::from_hex(&payout).unwrap();
    let mut statement = cable_db
        .prepare("SELECT psbt FROM payments ORDER BY payment_id")
        .unwrap();
    let values: Vec<Amount> = statement
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(|psbt| {
            let tx = bitcoin::psbt::Psbt::deserialize(&psbt.unwrap())
                .unwrap()
                .extract_tx_unchecked_fee_rate();
            proto::single_fee::value_paid(&tx, &payout).unwrap()
        })
        .collect();
    assert!(
        values.windows(2).all(|w| w[1] > w[0]),
        "a signature below an earlier one: {values:?}"
    );
    let socket_total: i64 = socket_sets(&socket).iter().map(|s| s.3).sum();
    assert_eq!(socket_total, 6_000);
    let signatures: i64 = cable_db
        .query_row("SELECT COUNT(*) FROM payments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(signatures, 6, "one signature per increment, none twice");
}

#[test]
fn an_input_set_past_its_age_limit_is_broadcast_and_the_session_goes_on() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = SocketSetup {
        load_toml: "kind = \"constant\"\npower_w = 1300.0".into(),
        single_fee_max_age_secs: 1,
        time_scale: 10.0,
        ..SocketSetup::default()
    };
    let socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &CableSetup {
            max_session_sat: 4_000,
            ..single_fee_cable()
        },
        Amount::from_sat(100_000),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        socket.log_text()
    );
    wait_until("the socket to settle", Duration::from_secs(15), || {
        socket_sets(&socket).iter().all(|s| s.1 != "open")
    });
    // 8 Wh at 1300 W is 2.2 s of outlet time, 0.22 s real: sets of about a second each.
    let sets = socket_sets(&socket);
    assert!(sets.len() >= 2, "no set aged out: {sets:?}");
    assert!(
        sets.iter().all(|(_, status, _, _)| status == "broadcast"),
        "{sets:?}"
    );
    assert_eq!(sets.iter().map(|s| s.3).sum::<i64>(), 4_000, "{sets:?}");
}
