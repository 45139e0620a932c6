//! The tamper-evident audit log (design.md "Attestation"; seed 004 §5) of a real `socket-node`
//! on regtest: its head is anchored by a transaction of the socket's wallet that confirms,
//! `socket-node audit verify` passes, and one audit row edited in SQLite makes it fail at that
//! row.

use std::process::Command;
use std::time::Duration;

use bitcoin::Amount;
use integration::{binary, CableFiles, CableSetup, SocketProcess, SocketSetup};
use regtest::Regtest;

fn verify(socket: &SocketProcess, config: &std::path::Path) -> (bool, String) {
    let out = Command::new(binary("socket-node").unwrap())
        .args(["audit", "verify", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(&socket.data_dir)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_audit_log_is_anchored_on_chain_and_an_edited_row_is_found() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = SocketSetup {
        top_toml: "anchor_interval_secs = 1\nanchor_fee_rate_sat_per_vb = 1".into(),
        ..SocketSetup::default()
    };
    let mut socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    let config = dir.path().join("socket").join("socket.toml");
    // A session pays the socket's wallet: the coins an anchor spends, once confirmed.
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &CableSetup {
            max_session_sat: 2_000,
            ..CableSetup::default()
        },
        Amount::from_sat(50_000),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bitcoind.mine(1).unwrap();

    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let anchors = || {
        db.query_row("SELECT COUNT(*) FROM audit_anchors", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap()
    };
    integration::wait_until("an anchor", Duration::from_secs(60), || anchors() > 0);
    socket.kill();
    let (rows, anchored_seq, vsize, fee_sat): (i64, i64, i64, i64) = db
        .query_row(
            "SELECT (SELECT COUNT(*) FROM audit), seq, vsize, fee_sat FROM audit_anchors
             ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert!(rows >= 2, "the session wrote its rows");
    println!("anchor of {anchored_seq} rows: {vsize} vB, {fee_sat} sat at 1 sat/vB");
    assert!((150..=200).contains(&vsize), "anchor of {vsize} vB");
    bitcoind.mine(1).unwrap();

    let (ok, text) = verify(&socket, &config);
    assert!(ok, "{text}");
    assert!(text.contains("the hash chain holds"), "{text}");
    assert!(text.contains("head matches"), "{text}");
    assert!(!text.contains("NOT ON CHAIN"), "{text}");
    assert!(text.contains("confirmations"), "{text}");

    // Someone with the database edits one row: verify names it.
    db.execute(
        "UPDATE audit SET detail = 'nothing to see' WHERE seq = 2",
        [],
    )
    .unwrap();
    let (ok, text) = verify(&socket, &config);
    assert!(!ok, "an edited audit log verified:\n{text}");
    assert!(text.contains("BROKEN at row 2 (edited)"), "{text}");
}
