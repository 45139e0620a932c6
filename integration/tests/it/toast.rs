//! The paper's experiment end to end (seed 000 §V, §VII): a cable toasts one slice (1300 W,
//! 40 Wh) paying a socket per 8 Wh quota, two processes over gRPC on a real regtest chain.

use std::time::Duration;

use bitcoin::{Amount, ScriptBuf, Txid};
use integration::{CableFiles, CableSetup, SocketProcess, SocketSetup};
use proto::v1::OutletState;
use regtest::Regtest;
use serde_json::Value;

#[test]
fn toast_is_paid_with_five_confirmed_transactions() {
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
        &CableSetup::default(),
        Amount::from_sat(100_000),
    )
    .unwrap();

    // The payout address offered before the plug-in is the one the session pays.
    let offer_script = payout_script(&socket);
    let out = cable.run(Duration::from_secs(120)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "cable failed:\n{log}\nsocket:\n{}",
        socket.log_text()
    );

    let report = cable.session_report().unwrap();
    if report.outcome != "appliance done" {
        eprintln!("CABLE:\n{log}\nSOCKET:\n{}", socket.log_text());
    }
    assert_eq!(report.outcome, "appliance done", "{report:?}");
    let payments = &report.payments;
    assert_eq!(payments.len(), 5, "{report:?}");
    assert!(report.energy_used_mwh >= 40_000, "{report:?}");

    // The cable kept what the socket reported of its session, signed by the socket's identity
    // key: proof of the energy the socket counted, rising with each quota.
    let socket_key =
        bitcoin::secp256k1::PublicKey::from_slice(&socket.offer().unwrap().socket_identity_key)
            .unwrap();
    let session_id = report.session_id.as_str();
    let store = cable_node::store::CableStore::open(&cable.data_dir).unwrap();
    let reports: Vec<_> = store
        .status_reports(session_id)
        .unwrap()
        .iter()
        .map(|signed| proto::identity::verify_status(signed, &socket_key, integration::OUTLET))
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(reports.len() >= 5, "{reports:?}");
    for pair in reports.windows(2) {
        assert!(pair[0].sequence < pair[1].sequence, "{pair:?}");
        assert!(
            pair[0].energy_used_mwh <= pair[1].energy_used_mwh,
            "{pair:?}"
        );
    }
    assert!(reports
        .iter()
        .all(|r| r.session_hash == proto::identity::session_hash(session_id)));
    assert!(
        reports.last().unwrap().energy_used_mwh >= 24_000,
        "{reports:?}"
    );

    // Every payment confirms and pays the socket's payout script exactly 1000 sat.
    bitcoind.mine(1).unwrap();
    for payment in payments {
        let txid: Txid = payment.txid.as_str().parse().unwrap();
        let tx: Value = regtest::rpc(
            bitcoind.client(),
            "getrawtransaction",
            &[serde_json::json!(txid.to_string()), serde_json::json!(1)],
        )
        .unwrap();
        assert!(tx["confirmations"].as_u64().unwrap() >= 1, "{tx}");
        let to_socket: Vec<&Value> = tx["vout"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o["scriptPubKey"]["hex"] == offer_script)
            .collect();
        assert_eq!(to_socket.len(), 1);
        assert_eq!(
            Amount::from_btc(to_socket[0]["value"].as_f64().unwrap()).unwrap(),
            Amount::from_sat(1_000)
        );
    }

    // The cable unplugged: after the link debounce the socket settles back to Standby.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status = socket.status().unwrap();
        if status.state == OutletState::Standby as i32 && status.session_hash.is_empty() {
            assert!(!status.relay_closed);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "socket stays {status:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The next session is offered a fresh address (the next BIP84 index): none is paid twice.
    assert_ne!(payout_script(&socket), offer_script);
}

fn payout_script(socket: &SocketProcess) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let offer = runtime.block_on(async {
        let mut client = proto::v1::socket_client::SocketClient::connect(socket.endpoint.clone())
            .await
            .unwrap();
        integration::signed_offer(&mut client, integration::OUTLET)
            .await
            .unwrap()
    });
    ScriptBuf::from_bytes(offer.payout_script).to_hex_string()
}

/// The socket publishes its minimum fee rate in the offer (`SchemeTerms.min_fee_rate_sat_per_vb`)
/// and the cable pays at least that: a socket asking 5 sat/vB of a cable whose policy pays 2
/// gets every quota at 5 or more, and locks nobody out (before, the rule was the socket's
/// secret and the honest cable was locked out for breaking it).
#[test]
fn the_cable_pays_at_least_the_fee_rate_the_offer_names() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = SocketProcess::start(
        &bitcoind,
        &dir.path().join("socket"),
        &SocketSetup {
            outlet_toml: "min_fee_rate_sat_per_vb = 5".into(),
            ..SocketSetup::default()
        },
    )
    .unwrap();
    let offer = socket.offer().unwrap();
    assert!(offer.schemes.iter().all(|s| s.min_fee_rate_sat_per_vb == 5));
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &CableSetup {
            schemes: vec!["onchain".into()],
            policy_toml: "fee_rate_sat_per_vb = 2".into(),
            ..CableSetup::default()
        },
        Amount::from_sat(100_000),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    assert!(
        out.status.success(),
        "cable failed:\n{}\nsocket:\n{}",
        String::from_utf8_lossy(&out.stderr),
        socket.log_text()
    );
    let report = cable.session_report().unwrap();
    let payments = &report.payments;
    assert_eq!(payments.len(), 5, "{report:?}");
    for payment in payments {
        let (fee, vsize) = (payment.fee_sat, payment.vsize);
        assert!(fee >= 5 * vsize, "{fee} sat for {vsize} vB: {payment:?}");
    }
    assert!(!socket.log_text().contains("lockout"));
}
