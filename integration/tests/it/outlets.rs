//! One socket-node, many outlets (design.md "Architecture v2"): cables on different outlets of
//! the same socket pay at the same time with different schemes, each session is credited
//! exactly what its cable paid, and one outlet's lockout leaves the others paying.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bitcoin::Amount;
use integration::{CableFiles, CableSetup, SocketProcess, SocketSetup};
use proto::v1::socket_client::SocketClient;
use proto::v1::{self, OutletState};
use regtest::Regtest;

/// A stranger on outlet-3: plugs in, asks for terms and sends bytes that are no payment. The
/// outlet must lock out; returns the reason the socket gave.
fn cheat_on_outlet_3(socket: &SocketProcess) -> String {
    let to = socket.recipient();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = SocketClient::connect(socket.endpoint.clone())
            .await
            .unwrap();
        let outlet_id = "outlet-3".to_owned();
        // Plugged in while the stream is open.
        let _link = client
            .watch_status(integration::cable_signer().sign(
                &to,
                v1::WatchStatusRequest {
                    outlet_id: outlet_id.clone(),
                    auth: None,
                },
            ))
            .await
            .unwrap();
        let terms = client
            .power_request(integration::cable_signer().sign(
                &to,
                v1::PowerRequestRequest {
                    outlet_id,
                    scheme: v1::Scheme::Onchain as i32,
                    auth: None,
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let refused = client
            .pay_transaction(integration::cable_signer().sign(
                &to,
                v1::PayTransactionRequest {
                    session_id: terms.session_id,
                    payment_id: terms.payment_id,
                    psbt: b"psbt\xff but not really".to_vec(),
                    auth: None,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert_eq!(
            proto::errors::reason_of(&refused),
            Some(v1::ErrorReason::RefusedLockout)
        );
        // An outlet the socket does not have: not found, with its reason code.
        let unknown = client
            .get_offer(v1::GetOfferRequest {
                outlet_id: "outlet-9".into(),
                cable_nonce: vec![1; 32],
            })
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::NotFound);
        assert_eq!(
            proto::errors::reason_of(&unknown),
            Some(v1::ErrorReason::NotFound)
        );
        refused.message().to_owned()
    })
}

/// Per session of the socket's store: (outlet, scheme, quota credited in mWh, payment txids).
fn sessions_of(socket: &SocketProcess) -> Vec<(String, String, u64, BTreeSet<String>)> {
    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let mut statement = db
        .prepare("SELECT id, outlet_id, scheme FROM sessions ORDER BY outlet_id")
        .unwrap();
    let sessions: Vec<(String, String, String)> = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    sessions
        .into_iter()
        .map(|(id, outlet, scheme)| {
            let credited: i64 = db
                .query_row(
                    "SELECT COALESCE(SUM(quota_mwh), 0) FROM payments
                     WHERE session_id = ?1 AND status != 'failed'",
                    [&id],
                    |r| r.get(0),
                )
                .unwrap();
            let mut txids = db
                .prepare("SELECT txid FROM payments WHERE session_id = ?1 AND status != 'failed'")
                .unwrap();
            let txids = txids
                .query_map([&id], |r| r.get::<_, String>(0))
                .unwrap()
                .collect::<Result<BTreeSet<_>, _>>()
                .unwrap();
            (outlet, scheme, credited as u64, txids)
        })
        .collect()
}

#[test]
fn two_cables_pay_two_outlets_at_once_and_a_lockout_stays_on_its_outlet() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup {
            outlets: 3,
            // Long enough that outlet-3 is still locked out when the cables are done.
            lockout_secs: 3_600,
            ..SocketSetup::default()
        },
    )
    .unwrap();
    let cable = |name: &str, outlet: &str, scheme: &str| {
        CableFiles::create(
            &bitcoind,
            &dir.path().join(name),
            &socket.endpoint,
            &CableSetup {
                outlet_id: outlet.into(),
                schemes: vec![scheme.into()],
                ..CableSetup::default()
            },
            Amount::from_sat(100_000),
        )
        .unwrap()
    };
    let onchain = cable("cable-a", "outlet-1", "onchain");
    let single_fee = cable("cable-b", "outlet-2", "single-fee");

    let mut running = [
        onchain.spawn_run().unwrap(),
        single_fee.spawn_run().unwrap(),
    ];
    // Both sessions under way, then a stranger cheats on the third outlet.
    let deadline = Instant::now() + Duration::from_secs(60);
    while ["outlet-1", "outlet-2"]
        .iter()
        .any(|o| socket.status_of(o).unwrap().state != OutletState::Paid as i32)
    {
        assert!(
            Instant::now() < deadline,
            "both outlets Paid:\n{}",
            socket.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let reason = cheat_on_outlet_3(&socket);
    assert!(reason.contains("locked out"), "{reason}");
    let locked = socket.status_of("outlet-3").unwrap();
    assert_eq!(locked.state, OutletState::Lockout as i32, "{locked:?}");
    assert!(!locked.relay_closed);
    for outlet in ["outlet-1", "outlet-2"] {
        let status = socket.status_of(outlet).unwrap();
        assert_ne!(
            status.state,
            OutletState::Lockout as i32,
            "{outlet}: {status:?}"
        );
    }

    for child in &mut running {
        let deadline = Instant::now() + Duration::from_secs(180);
        while child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "a cable ran too long");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let reports = [
        onchain.session_report().unwrap(),
        single_fee.session_report().unwrap(),
    ];
    for (report, cable) in reports.iter().zip([&onchain, &single_fee]) {
        assert_eq!(
            report.outcome,
            "appliance done",
            "{report:?}\n{}\nSOCKET:\n{}",
            std::fs::read_to_string(&cable.log).unwrap_or_default(),
            socket.log_text()
        );
        assert_eq!(report.payments.len(), 5, "{report:?}");
    }

    // Each session is on its own outlet, paid with its own scheme, credited exactly the five
    // quotas its cable paid, with the cable's own transactions; outlet-3 credited nothing.
    let sessions = sessions_of(&socket);
    let expected = [
        ("outlet-1", "onchain", &reports[0]),
        ("outlet-2", "single-fee", &reports[1]),
    ];
    for (outlet, scheme, report) in expected {
        let mine: Vec<_> = sessions.iter().filter(|s| s.0 == outlet).collect();
        assert_eq!(mine.len(), 1, "{sessions:?}");
        let (_, stored_scheme, credited_mwh, txids) = mine[0];
        assert_eq!(stored_scheme, scheme);
        assert_eq!(*credited_mwh, 5 * 8_000, "{outlet}");
        let paid: BTreeSet<String> = report.payments.iter().map(|p| p.txid.clone()).collect();
        assert_eq!(txids, &paid, "{outlet}");
    }
    let cheat: Vec<_> = sessions.iter().filter(|s| s.0 == "outlet-3").collect();
    assert_eq!(cheat.len(), 1, "{sessions:?}");
    assert_eq!(cheat[0].2, 0, "the stranger was credited nothing");
    assert_eq!(
        socket.status_of("outlet-3").unwrap().state,
        OutletState::Lockout as i32
    );
}
