//! Metering between two devices that check each other (design.md "Attestation"; seed 000
//! §VII.B; seed 004): real socket-node and cable-node processes on regtest, the cable with its
//! own (simulated) meter of the same appliance.
//!
//! - An honest session: the cable countersigns a receipt per quota; `socket-node receipts`
//!   exports them, `verify-receipts` passes, and one altered byte fails naming the receipt.
//! - A socket whose meter over-counts by 10 % is stopped by the cable within one quota and
//!   flagged in the cable's registry of sockets; its next offer is refused.
//! - A cable whose meter under-reports is found by the socket in its receipts: the anomaly
//!   `meter-disagreement` with its evidence, the cable flagged.

use std::process::Command;
use std::time::Duration;

use bitcoin::Amount;
use integration::{binary, CableFiles, CableSetup, SocketProcess, SocketSetup};
use regtest::Regtest;
use serde_json::Value;

/// 1000 W on both sides; time at 5x, so a quota of 8 Wh lasts ~6 s and the meters' reading
/// delays stay far below the tolerance. The cable tops up when 3 Wh are left.
fn socket_setup(hw_toml: &str) -> SocketSetup {
    SocketSetup {
        time_scale: 5.0,
        load_toml: "kind = \"constant\"\npower_w = 1000.0".into(),
        quota_low_mwh: 3_000,
        hw_toml: hw_toml.into(),
        ..SocketSetup::default()
    }
}

fn cable_setup(max_session_sat: u64, meter_error_percent: i32, policy_toml: &str) -> CableSetup {
    CableSetup {
        max_session_sat,
        hw_toml: format!(
            "kind = \"sim\"\ntime_scale = 5.0\nmeter_error_percent = {meter_error_percent}\n\
             load = {{ kind = \"constant\", power_w = 1000.0 }}"
        ),
        policy_toml: policy_toml.into(),
        ..CableSetup::default()
    }
}

fn socket_node(args: &[&str]) -> std::process::Output {
    Command::new(binary("socket-node").unwrap())
        .args(args)
        .output()
        .unwrap()
}

fn db(socket: &SocketProcess) -> rusqlite::Connection {
    rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap()
}

#[test]
fn an_honest_session_exports_receipts_that_verify_and_one_altered_byte_fails() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket =
        SocketProcess::start(&bitcoind, &dir.path().join("socket"), &socket_setup("")).unwrap();
    // Three quotas of 1000 sat.
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &cable_setup(3_000, 0, ""),
        Amount::from_sat(50_000),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");

    let session: String = db(&socket)
        .query_row("SELECT id FROM sessions", [], |r| r.get(0))
        .unwrap();
    let file = dir.path().join("receipts.json");
    let data_dir = socket.data_dir.to_str().unwrap();
    let export = socket_node(&[
        "receipts",
        &session,
        "--data-dir",
        data_dir,
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(export.status.success(), "{export:?}");
    let record: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let receipts = record["receipts"].as_array().unwrap().len();
    assert!(
        receipts >= 2,
        "one receipt per top-up and one at the end: {record}"
    );
    assert_eq!(record["payments"].as_array().unwrap().len(), 3);
    // Both sides keep the same receipts.
    let cable_receipts: i64 = rusqlite::Connection::open(cable.data_dir.join("cable.sqlite"))
        .unwrap()
        .query_row("SELECT COUNT(*) FROM receipts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(cable_receipts as usize, receipts);

    let verified = socket_node(&["verify-receipts", file.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&verified.stdout);
    assert!(verified.status.success(), "{verified:?}");
    assert!(
        said.contains(&format!("{receipts} receipts and 3 payments verify")),
        "{said}"
    );

    // One byte of the last receipt's body changed: it fails, and says which receipt.
    let mut altered = record.clone();
    let body = altered["receipts"][receipts - 1]["body_hex"]
        .as_str()
        .unwrap()
        .to_owned();
    let flipped = if &body[40..41] == "0" { "1" } else { "0" };
    let body = format!("{}{flipped}{}", &body[..40], &body[41..]);
    altered["receipts"][receipts - 1]["body_hex"] = Value::String(body);
    let altered_file = dir.path().join("altered.json");
    std::fs::write(&altered_file, altered.to_string()).unwrap();
    let failed = socket_node(&["verify-receipts", altered_file.to_str().unwrap()]);
    let why = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(why.contains(&format!("receipt {receipts}:")), "{why}");
}

#[test]
fn a_socket_over_counting_by_ten_percent_is_stopped_within_one_quota_and_flagged() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &socket_setup("meter_error_percent = 10"),
    )
    .unwrap();
    // A budget of ten quotas: only the meter check stops it.
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &cable_setup(10_000, 0, ""),
        Amount::from_sat(50_000),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("flagged the socket: its count runs ahead"),
        "{log}"
    );

    // Stopped within one quota of the count running ahead (~6 Wh in): at most two paid.
    let (payments, energy_mwh): (i64, i64) = db(&socket)
        .query_row(
            "SELECT (SELECT COUNT(*) FROM payments), energy_used_mwh FROM sessions",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!((1..=2).contains(&payments), "{payments} payments");
    assert!(energy_mwh <= 16_000, "{energy_mwh} mWh");

    let registry: Value =
        serde_json::from_str(&cable.cli(&["sockets", "--json"]).unwrap()).unwrap();
    let flagged = &registry[0];
    assert_eq!(flagged["status"], "flagged", "{registry}");
    assert_eq!(
        flagged["identity_key"].as_str().unwrap(),
        socket
            .offer()
            .unwrap()
            .socket_identity_key
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let evidence = &flagged["evidence"];
    let (s, c) = (
        evidence["since_baseline"]["socket_mwh"].as_u64().unwrap(),
        evidence["since_baseline"]["cable_mwh"].as_u64().unwrap(),
    );
    assert!(s * 100 > c * 105, "{evidence}");

    // Its next offer is refused: no new session at the socket.
    let again = cable.run(Duration::from_secs(60)).unwrap();
    let log = String::from_utf8_lossy(&again.stderr).into_owned();
    assert!(!again.status.success());
    assert!(log.contains("flagged in the cable's registry"), "{log}");
    let sessions: i64 = db(&socket)
        .query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sessions, 1);
}

#[test]
fn a_cable_meter_under_reporting_is_found_in_its_receipts() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket =
        SocketProcess::start(&bitcoind, &dir.path().join("socket"), &socket_setup("")).unwrap();
    // The cable's meter reads 15 % low; its own tolerance is loose, so it pays on (four
    // quotas) and its receipts show the gap.
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &cable_setup(4_000, -15, "meter_tolerance_percent = 50"),
        Amount::from_sat(50_000),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");

    let db = db(&socket);
    let (rule, action, evidence, cable_key): (String, String, String, String) = db
        .query_row(
            "SELECT rule, action, evidence, cable_key_hex FROM anomalies",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (rule.as_str(), action.as_str()),
        ("meter-disagreement", "flag")
    );
    let evidence: Value = serde_json::from_str(&evidence).unwrap();
    assert!(
        evidence["receipt_body_hex"].as_str().is_some(),
        "{evidence}"
    );
    let flagged: Option<String> = db
        .query_row(
            "SELECT flagged_reason FROM cables WHERE key_hex = ?1",
            [&cable_key],
            |r| r.get(0),
        )
        .unwrap();
    assert!(flagged.unwrap().contains("meter disagrees"));
}
