//! No credited payment is forgotten (design.md "Trust", chain watch): a cable pays an `onchain`
//! quota, is credited, then replaces the payment with a conflicting transaction paying itself
//! (Bitcoin Core relays full-RBF replacements by default). The socket's chain watch finds the
//! conflict, records the payment as lost with its reason, locks the outlet out and bans the
//! cable's identity: its next session is refused. The socket crashes right after recording
//! the loss (crash point `socket-record-loss`, see `crash_points.rs`): nothing of it is lost.

use std::time::{Duration, Instant};

use integration::{SocketProcess, SocketSetup, OUTLET};
use proto::v1::socket_client::SocketClient;
use proto::v1::{self, OutletState};
use regtest::Regtest;

#[test]
fn a_credited_payment_the_cable_replaces_is_found_and_recorded_as_lost() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup {
            payment_timeout_secs: 120,
            lockout_secs: 600,
            ..SocketSetup::default()
        },
    )
    .unwrap();
    socket.env = vec![("FAILPOINTS".into(), "socket-record-loss=return".into())];
    socket.restart().unwrap();
    let mut payer = integration::funded_payer(&bitcoind, 1, 50_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let paid = integration::pay_a_quota_by_hand(&runtime, &socket, &mut payer);

    // The cable takes the money back: the same input, to itself, a higher fee.
    let spent_back = paid.spent_back(&mut payer);
    payer.chain.broadcast(&spent_back).unwrap();
    bitcoind.mine(1).unwrap();

    let db_path = socket.data_dir.join("socket.sqlite");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut crashed = false;
    let status = loop {
        if !socket.is_running() {
            crashed = true;
            socket.env.clear();
            socket.restart().unwrap();
        }
        let db = rusqlite::Connection::open_with_flags(
            &db_path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let status: String = db
            .query_row(
                "SELECT status FROM payments WHERE session_id = ?1 AND payment_id = ?2",
                rusqlite::params![paid.session_id, paid.payment_id as i64],
                |r| r.get(0),
            )
            .unwrap();
        if status == "lost" || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(status, "lost", "socket:\n{}", socket.log_text());
    assert!(
        crashed,
        "no crash at socket-record-loss:\n{}",
        socket.log_text()
    );
    let db =
        rusqlite::Connection::open_with_flags(&db_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let detail: String = db
        .query_row(
            // The anomaly's audit row is written with the loss (one transaction); the
            // `payment-lost` row after it may not be, the socket crashing in between.
            "SELECT detail FROM audit WHERE event IN ('payment-lost', 'anomaly')
             AND session_id = ?1 AND detail LIKE '%was replaced%' LIMIT 1",
            [&paid.session_id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(detail.contains("was replaced"), "{detail}");
    assert!(
        detail.contains(&paid.tx.compute_txid().to_string()),
        "{detail}"
    );
    let outlet = socket.status().unwrap();
    assert_eq!(outlet.state, OutletState::Lockout as i32, "{outlet:?}");
    assert!(outlet.reason.contains("was replaced"), "{outlet:?}");

    // The loss is counted against the cable's identity, which is banned from now on.
    let cable_key = integration::cable_signer().public_key().to_string();
    let (lost_sat, banned): (i64, Option<String>) = db
        .query_row(
            "SELECT lost_sat, banned_reason FROM cables WHERE key_hex = ?1",
            [&cable_key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(lost_sat as u64, paid.amount.to_sat());
    assert!(banned.unwrap().contains("was replaced"));
    // Listed as banned (for good: no `ban_secs`), not as revoked by the operator.
    let listed = socket.operator_cli("devices", &[]).unwrap();
    assert!(
        listed.contains(&format!("{cable_key} cable banned (")),
        "{listed}"
    );
    // The socket was started again since the first connection: a new one.
    let client = runtime
        .block_on(SocketClient::connect(socket.endpoint.clone()))
        .unwrap();
    let to = socket.recipient();
    let open = |signer: &cable_node::signer::RequestSigner| {
        let mut client = client.clone();
        let request = signer.sign(
            &to,
            v1::PowerRequestRequest {
                outlet_id: OUTLET.into(),
                scheme: v1::Scheme::Onchain as i32,
                ..Default::default()
            },
        );
        runtime
            .block_on(client.power_request(request))
            .expect_err("no session now")
    };
    let refused = open(integration::cable_signer());
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(
        proto::errors::reason_of(&refused),
        Some(v1::ErrorReason::CableBanned),
        "{refused:?}"
    );
    // Another cable is not banned: it finds the outlet locked out.
    let other = cable_node::signer::RequestSigner::new(
        bitcoin::secp256k1::SecretKey::from_slice(&[0x55; 32]).unwrap(),
    );
    let refused = open(&other);
    assert_eq!(
        proto::errors::reason_of(&refused),
        Some(v1::ErrorReason::WrongState),
        "{refused:?}"
    );
}
