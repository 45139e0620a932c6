//! Blame needs proof (design.md): a bitcoind without `-txindex` (the Raspberry Pi guide's
//! node) cannot find a confirmed transaction by txid, and a chain watch that read that as
//! "gone" banned every honest cable once its payment confirmed. Here an `onchain` and a
//! `spillman` session run to their end against such a node, their transactions confirm past
//! `final_confirmations`, and the socket finds them confirmed: nobody is flagged, banned or
//! charged a loss.

use std::time::Duration;

use bitcoin::Amount;
use integration::{CableFiles, CableSetup, SocketProcess, SocketSetup};
use regtest::Regtest;
use serde_json::Value;

/// Count the rows of the socket's store that `sql` selects.
fn count(socket: &SocketProcess, sql: &str) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        socket.data_dir.join("socket.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row(sql, [], |r| r.get(0)).unwrap()
}

fn run(cable: &CableFiles, socket: &SocketProcess) {
    let out = cable.run(Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success(),
        "cable failed:\n{}\nsocket:\n{}",
        String::from_utf8_lossy(&out.stderr),
        socket.log_text()
    );
}

#[test]
fn onchain_and_spillman_sessions_on_a_bitcoind_without_txindex_ban_nobody() {
    let bitcoind = Regtest::start_with(&["-txindex=0"]).unwrap();
    let info: Value = regtest::rpc(bitcoind.client(), "getindexinfo", &[]).unwrap();
    assert!(info.get("txindex").is_none(), "{info}");
    let dir = tempfile::tempdir().unwrap();
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup {
            spillman: true,
            ..SocketSetup::default()
        },
    )
    .unwrap();
    assert!(
        socket.log_text().contains("no -txindex"),
        "the socket says what bitcoind lacks:\n{}",
        socket.log_text()
    );

    let onchain = CableFiles::create(
        &bitcoind,
        &dir.path().join("onchain"),
        &socket.endpoint,
        &CableSetup {
            schemes: vec!["onchain".into()],
            ..CableSetup::default()
        },
        Amount::from_sat(100_000),
    )
    .unwrap();
    run(&onchain, &socket);
    let spillman = CableFiles::create(
        &bitcoind,
        &dir.path().join("spillman"),
        &socket.endpoint,
        &CableSetup {
            schemes: vec!["spillman".into()],
            max_session_sat: 10_000,
            spillman_lock_blocks: 144,
            ..CableSetup::default()
        },
        Amount::from_sat(50_000),
    )
    .unwrap();
    run(&spillman, &socket);

    // Confirm everything well past final_confirmations; the watch then finds each payment
    // and the channel's close confirmed, from their outputs and the recent blocks.
    integration::wait_until("the close in the mempool", Duration::from_secs(30), || {
        count(
            &socket,
            "SELECT COUNT(*) FROM spillman_channels WHERE close_tx_hex IS NOT NULL",
        ) == 1
    });
    bitcoind.mine(8).unwrap();
    integration::wait_until(
        "every onchain payment confirmed",
        Duration::from_secs(60),
        || {
            count(
                &socket,
                "SELECT COUNT(*) FROM payments WHERE status != 'confirmed'
                 AND session_id IN (SELECT id FROM sessions WHERE scheme = 'onchain')",
            ) == 0
        },
    );
    assert_eq!(
        count(
            &socket,
            "SELECT COUNT(*) FROM payments WHERE status = 'confirmed'
             AND session_id IN (SELECT id FROM sessions WHERE scheme = 'onchain')"
        ),
        5
    );
    integration::wait_until("the close confirmed", Duration::from_secs(60), || {
        count(
            &socket,
            "SELECT COUNT(*) FROM spillman_channels WHERE close_confirmed_height IS NOT NULL",
        ) == 1
    });
    // A few more rounds of the watch over confirmed transactions: still nobody blamed.
    std::thread::sleep(Duration::from_secs(3));
    let log = socket.log_text();
    assert_eq!(count(&socket, "SELECT COUNT(*) FROM anomalies"), 0, "{log}");
    assert_eq!(
        count(
            &socket,
            "SELECT COUNT(*) FROM cables WHERE banned_reason IS NOT NULL OR lost_sat > 0"
        ),
        0,
        "{log}"
    );
    assert!(!log.contains("was replaced"), "{log}");
}
