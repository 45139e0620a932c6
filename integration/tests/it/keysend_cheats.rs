//! The keysend fast path against a cheating cable: a hand-made cable with a real ldk-node of
//! its own and a real channel to the real `socket-node`. A keysend is credited only when its
//! session record names the session in progress, its payment id is the next one, and it pays
//! exactly price × quota (design.md `lightning`, "Trust").

use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::Amount;
use integration::{Miner, SocketProcess, SocketSetup, OUTLET};
use ln::ldk_node::lightning_invoice::Bolt11Invoice;
use ln::ldk_node::lightning_types::payment::{PaymentHash, PaymentPreimage};
use ln::ldk_node::payment::PaymentStatus;
use ln::ldk_node::Node;
use proto::identity::session_hash;
use proto::lightning::SessionRecord;
use proto::v1::socket_client::SocketClient;
use proto::v1::{self, OutletState};
use regtest::Regtest;
use tokio::runtime::Runtime;
use tonic::transport::Channel;

const QUOTA_MSAT: u64 = 1_000_000;

/// The hand-made cable: its Lightning node, a gRPC client, and the `WatchStatus` link that
/// tells the socket it is plugged in.
struct Cable {
    ln: Arc<Node>,
    socket_id: ln::ldk_node::bitcoin::secp256k1::PublicKey,
    client: SocketClient<Channel>,
    /// The socket as the cable's requests address it.
    to: proto::request_auth::Recipient,
    link: Option<tonic::Streaming<v1::WatchStatusResponse>>,
    runtime: Runtime,
}

impl Cable {
    /// Plug in, open a session and pay its first quota by invoice, as the real cable does.
    fn open_session(&mut self) -> String {
        let mut client = self.client.clone();
        let to = self.to;
        let (link, terms) = self.runtime.block_on(async move {
            let link = client
                .watch_status(integration::cable_signer().sign(
                    &to,
                    v1::WatchStatusRequest {
                        outlet_id: OUTLET.into(),
                        auth: None,
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            let terms = client
                .power_request(integration::cable_signer().sign(
                    &to,
                    v1::PowerRequestRequest {
                        outlet_id: OUTLET.into(),
                        scheme: v1::Scheme::Lightning as i32,
                        session_id: String::new(),
                        max_amount_sat: 0,
                        auth: None,
                        receipt: None,
                        offer_payout_script: Vec::new(),
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            (link, terms)
        });
        self.link = Some(link);
        let invoice: Bolt11Invoice = proto::terms::lightning_terms(&terms)
            .unwrap()
            .bolt11_invoice
            .parse()
            .unwrap();
        let id = self.ln.bolt11_payment().send(&invoice, None).unwrap();
        self.await_payment(id);
        self.wait_for("the first quota credited", |s| {
            s.session_hash == session_hash(&terms.session_id) && s.payments == 1
        });
        terms.session_id
    }

    /// Keysend `amount_msat` with the session record `(session_id, payment_id)`, signed by
    /// the cable's identity key (the one that opened its sessions), as the real cable does.
    fn keysend(&self, session_id: &str, payment_id: u64, amount_msat: u64) {
        self.keysend_signed_by(
            Some(integration::cable_signer()),
            session_id,
            payment_id,
            amount_msat,
        )
    }

    /// Keysend with the session record, its authentication signed by `signer` (`None`: none).
    fn keysend_signed_by(
        &self,
        signer: Option<&cable_node::signer::RequestSigner>,
        session_id: &str,
        payment_id: u64,
        amount_msat: u64,
    ) {
        let record = SessionRecord {
            session_id: session_id.into(),
            payment_id,
        };
        let preimage: [u8; 32] = bitcoin::secp256k1::rand::random();
        let hash = PaymentHash::from(PaymentPreimage(preimage));
        let mut tlvs = vec![ln::session_tlv(&record)];
        if let Some(signer) = signer {
            tlvs.push(ln::session_auth_tlv(signer.sign_keysend(
                &record,
                amount_msat,
                &hash.0,
            )));
        }
        let id = self
            .ln
            .spontaneous_payment()
            .send_with_preimage_and_custom_tlvs(
                amount_msat,
                self.socket_id,
                tlvs,
                PaymentPreimage(preimage),
                None,
            )
            .unwrap();
        self.await_payment(id);
    }

    fn await_payment(&self, id: ln::ldk_node::lightning::ln::channelmanager::PaymentId) {
        integration::wait_until("the payment", Duration::from_secs(30), || {
            self.ln
                .payment(&id)
                .is_some_and(|p| p.status != PaymentStatus::Pending)
        });
        assert_eq!(
            self.ln.payment(&id).unwrap().status,
            PaymentStatus::Succeeded
        );
    }

    fn status(&self) -> v1::GetStatusResponse {
        let mut client = self.client.clone();
        self.runtime.block_on(async move {
            client
                .get_status(v1::GetStatusRequest {
                    outlet_id: OUTLET.into(),
                })
                .await
                .unwrap()
                .into_inner()
        })
    }

    fn wait_for(
        &self,
        what: &str,
        done: impl Fn(&v1::GetStatusResponse) -> bool,
    ) -> v1::GetStatusResponse {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "{what}: {status:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Unplug and wait for the outlet to take a new session.
    fn unplug(&mut self) {
        self.link = None;
        self.wait_for("the outlet back in Standby", |s| {
            s.state == OutletState::Standby as i32 && s.session_hash.is_empty()
        });
    }
}

#[test]
fn the_socket_credits_only_keysends_that_fit_the_session() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = SocketSetup {
        time_scale: 1.0,
        lockout_secs: 1,
        link_debounce_ms: 300,
        ..SocketSetup {
            lightning: true,
            ..SocketSetup::default()
        }
    };
    let socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    let offer = socket.offer().unwrap();
    let ln_offer = proto::terms::offered_lightning(&offer).unwrap();
    assert!(ln_offer.keysend);
    let socket_id =
        ln::ldk_node::bitcoin::secp256k1::PublicKey::from_slice(&ln_offer.node_id).unwrap();

    let ln = integration::ln_node(
        &bitcoind,
        &dir.path().join("cable"),
        &ln::LnSettings::default(),
    );
    integration::fund_ln_node(&bitcoind, &ln, Amount::from_sat(300_000));
    ln.open_channel(
        socket_id,
        ln_offer.address.parse().unwrap(),
        200_000,
        None,
        None,
    )
    .unwrap();
    let miner = Miner::start(&bitcoind, Duration::from_millis(500));
    integration::wait_until("a usable channel", Duration::from_secs(60), || {
        ln.list_channels().iter().any(|c| c.is_usable)
    });
    drop(miner);
    let runtime = Runtime::new().unwrap();
    let endpoint = socket.endpoint.clone();
    let client = runtime.block_on(SocketClient::connect(endpoint)).unwrap();
    let mut cable = Cable {
        ln,
        socket_id,
        client,
        to: socket.recipient(),
        link: None,
        runtime,
    };

    // Strangers (design.md "Blame needs proof"): keysends naming the session in progress that
    // its cable did not sign (none, or a stranger's signature) break every rule, one even pays
    // the next quota exactly: none is credited, nothing is locked out, the honest session goes
    // on and its own keysend after them is credited.
    let first = cable.open_session();
    let stranger = cable_node::signer::RequestSigner::new(
        bitcoin::secp256k1::SecretKey::from_slice(&[0x55; 32]).unwrap(),
    );
    cable.keysend_signed_by(None, &first, 2, 1);
    cable.keysend_signed_by(Some(&stranger), &first, 9, QUOTA_MSAT);
    cable.keysend_signed_by(None, &first, 2, QUOTA_MSAT);
    std::thread::sleep(Duration::from_secs(1));
    let status = cable.status();
    assert_eq!(status.session_hash, session_hash(&first));
    assert_eq!(
        status.payments, 1,
        "a stranger's keysend credited: {status:?}"
    );
    assert_ne!(status.state, OutletState::Lockout as i32, "{status:?}");

    // Honest: the next payment id, exactly one quota, signed by the session's cable.
    cable.keysend(&first, 2, QUOTA_MSAT);
    cable.wait_for("the keysend credited", |s| s.payments == 2);

    // The same payment id paid again: nothing credited, locked out.
    cable.keysend(&first, 2, QUOTA_MSAT);
    let status = cable.wait_for("lockout", |s| s.state == OutletState::Lockout as i32);
    assert!(status.reason.contains("paid before"), "{}", status.reason);
    cable.unplug();

    // Less than price × quota: nothing credited, locked out.
    let second = cable.open_session();
    cable.keysend(&second, 2, QUOTA_MSAT - 1_000);
    let status = cable.wait_for("lockout", |s| s.state == OutletState::Lockout as i32);
    assert!(
        status.reason.contains("not price x quota"),
        "{}",
        status.reason
    );
    cable.unplug();

    // A payment id that skips ahead: nothing credited, locked out.
    let third = cable.open_session();
    cable.keysend(&third, 5, QUOTA_MSAT);
    let status = cable.wait_for("lockout", |s| s.state == OutletState::Lockout as i32);
    assert!(
        status.reason.contains("not the next one"),
        "{}",
        status.reason
    );
    cable.unplug();

    // A keysend naming a session that ended (as when a cable's last payment races the end
    // of its session): recorded against that session, not credited to the session in
    // progress, which goes on undisturbed. One naming no session at all is kept and audited.
    let fourth = cable.open_session();
    cable.keysend(&first, 3, QUOTA_MSAT);
    cable.keysend("no-such-session", 1, QUOTA_MSAT);
    std::thread::sleep(Duration::from_secs(1));
    let status = cable.status();
    assert_eq!(status.session_hash, session_hash(&fourth));
    assert_eq!(status.payments, 1, "{status:?}");
    assert_ne!(status.state, OutletState::Lockout as i32, "{status:?}");

    // On the socket's books: four invoices, the honest keysend and the late one, nothing else.
    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let rows: Vec<(String, i64, i64)> = db
        .prepare(
            "SELECT kind, COUNT(*), SUM(amount_msat) FROM ln_payments GROUP BY kind ORDER BY kind",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        vec![
            ("invoice".to_owned(), 4, 4 * QUOTA_MSAT as i64),
            ("keysend".to_owned(), 2, 2 * QUOTA_MSAT as i64)
        ]
    );
    let late: (String, i64) = db
        .query_row(
            "SELECT session_id, payment_id FROM ln_payments WHERE kind = 'keysend'
             ORDER BY received_at_unix_ms DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(late, (first.clone(), 3));
    let audited = |event: &str| -> i64 {
        db.query_row(
            "SELECT COUNT(*) FROM audit WHERE event = ?1",
            [event],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(audited("keysend-after-end"), 1);
    // Four keysends not credited (the strangers' three, the one naming no session) within a
    // minute: one audit line, the rest summed into the next.
    assert_eq!(audited("keysend-not-credited"), 1);
    // Nobody was flagged for the strangers' keysends: the three anomalies are the cable's
    // own signed cheats.
    let flagged: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM anomalies WHERE rule = 'payment-refused'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(flagged, 3);
    cable.ln.stop().unwrap();
}
