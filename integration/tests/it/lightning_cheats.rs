//! A cheating Lightning socket: a hand-made `t2t.v1.Socket` with a real ldk-node of its own,
//! against the real `cable-node`. Each invoice that breaks a rule is refused before anything is
//! paid (design.md "Trust"; BOLT 11).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bitcoin::Amount;
use integration::{free_port, CableFiles, CableSetup, Fake, FakeWatchStream, OUTLET};
use ln::ldk_node::lightning_invoice::{Bolt11InvoiceDescription, Description};
use ln::ldk_node::payment::PaymentDirection;
use ln::ldk_node::Node;
use proto::v1;
use regtest::Regtest;
use tonic::Status;

#[derive(Clone, Copy, Debug)]
enum Cheat {
    /// The invoice asks more than price × quota.
    MoreThanPrice,
    /// The invoice pays another node than the offer's.
    OtherPayee,
    /// After one honest payment, the same invoice again for the next quota.
    AlreadyPaid,
}

struct FakeSocket {
    cheat: Cheat,
    ln: Arc<Node>,
    address: String,
    stranger: Arc<Node>,
    issued: Mutex<Vec<String>>,
    events: tokio::sync::broadcast::Sender<v1::WatchStatusResponse>,
}

fn invoice(node: &Node, msat: u64) -> String {
    let description = Bolt11InvoiceDescription::Direct(Description::new("quota".into()).unwrap());
    node.bolt11_payment()
        .receive(msat, &description, 600)
        .unwrap()
        .to_string()
}

#[tonic::async_trait]
impl Fake for FakeSocket {
    fn offer(&self) -> v1::Offer {
        v1::Offer {
            socket_identity_key: integration::fake_public_key(1),
            outlet_id: OUTLET.into(),
            network: v1::Network::Regtest as i32,
            price_msat_per_wh: 125_000,
            quota_mwh: 8_000,
            schemes: vec![v1::SchemeTerms {
                scheme: v1::Scheme::Lightning as i32,
                min_payment_sat: 1,
                min_fee_rate_sat_per_vb: 0,
                terms: Some(v1::scheme_terms::Terms::Lightning(
                    v1::LightningOfferTerms {
                        node_id: self.ln.node_id().serialize().to_vec(),
                        address: self.address.clone(),
                        keysend: false,
                    },
                )),
            }],
            ..Default::default()
        }
    }

    async fn watch_status(&self) -> Result<FakeWatchStream, Status> {
        Ok(integration::watch_stream(&self.events))
    }

    async fn power_request(
        &self,
        _: v1::PowerRequestRequest,
    ) -> Result<v1::PowerRequestResponse, Status> {
        let mut issued = self.issued.lock().unwrap();
        let bolt11 = match (self.cheat, issued.first()) {
            (Cheat::MoreThanPrice, _) => invoice(&self.ln, 2_000_000),
            (Cheat::OtherPayee, _) => invoice(&self.stranger, 1_000_000),
            (Cheat::AlreadyPaid, Some(paid)) => paid.clone(),
            (Cheat::AlreadyPaid, None) => invoice(&self.ln, 1_000_000),
        };
        issued.push(bolt11.clone());
        let payment_id = issued.len() as u64;
        if payment_id == 1 {
            // Once the first invoice is paid, say so and ask for the next quota.
            let events = self.events.clone();
            let ln = Arc::clone(&self.ln);
            tokio::spawn(async move {
                for _ in 0..600 {
                    if ln.list_payments().iter().any(|p| {
                        p.direction == PaymentDirection::Inbound
                            && p.status == ln::ldk_node::payment::PaymentStatus::Succeeded
                    }) {
                        for event in integration::fake_paid_and_quota_low("fake") {
                            let _ = events.send(event);
                        }
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
        Ok(v1::PowerRequestResponse {
            session_id: "fake".into(),
            payment_id,
            scheme: v1::Scheme::Lightning as i32,
            amount_msat: 1_000_000,
            quota_mwh: 8_000,
            payout_script: Vec::new(),
            terms: Some(v1::power_request_response::Terms::Lightning(
                v1::LightningPaymentTerms {
                    bolt11_invoice: bolt11,
                },
            )),
        })
    }

    async fn pay_transaction(
        &self,
        _: v1::PayTransactionRequest,
    ) -> Result<v1::PayTransactionResponse, Status> {
        Err(Status::unimplemented("invoices are paid over Lightning"))
    }
}

fn ln_node(
    bitcoind: &Regtest,
    dir: &std::path::Path,
    listen: Option<std::net::SocketAddr>,
) -> Arc<Node> {
    integration::ln_node(
        bitcoind,
        dir,
        &ln::LnSettings {
            listen,
            ..ln::LnSettings::default()
        },
    )
}

fn inbound_succeeded(node: &Node) -> usize {
    node.list_payments()
        .iter()
        .filter(|p| {
            p.direction == PaymentDirection::Inbound
                && p.status == ln::ldk_node::payment::PaymentStatus::Succeeded
        })
        .count()
}

#[test]
fn the_cable_refuses_cheating_invoices() {
    let bitcoind = Regtest::start().unwrap();
    let miner = integration::Miner::start(&bitcoind, Duration::from_millis(500));
    let (fake_dir, stranger_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port().unwrap())
        .parse()
        .unwrap();
    let fake_ln = ln_node(&bitcoind, fake_dir.path(), Some(listen));
    let stranger = ln_node(&bitcoind, stranger_dir.path(), None);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    for (cheat, reason, paid) in [
        (Cheat::MoreThanPrice, "not price x quota", 0),
        (Cheat::OtherPayee, "not the offer's", 0),
        (Cheat::AlreadyPaid, "already paid", 1),
    ] {
        let before = inbound_succeeded(&fake_ln);
        let (events, _) = tokio::sync::broadcast::channel(16);
        let fake = FakeSocket {
            cheat,
            ln: Arc::clone(&fake_ln),
            address: listen.to_string(),
            stranger: Arc::clone(&stranger),
            issued: Mutex::default(),
            events,
        };
        let (endpoint, server) = integration::serve_fake(&runtime, fake).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cable = CableFiles::create(
            &bitcoind,
            dir.path(),
            &endpoint,
            &CableSetup {
                schemes: vec!["lightning".into()],
                ..CableSetup::default()
            },
            Amount::from_sat(10_000),
        )
        .unwrap();
        cable
            .fund_lightning(&bitcoind, Amount::from_sat(300_000))
            .unwrap();
        let out = cable.run(Duration::from_secs(120)).unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "{cheat:?}: the cable should refuse:\n{log}"
        );
        assert!(log.contains("refused the socket"), "{cheat:?}:\n{log}");
        assert!(
            log.contains(reason),
            "{cheat:?}: expected {reason:?} in:\n{log}"
        );
        assert_eq!(
            inbound_succeeded(&fake_ln) - before,
            paid,
            "{cheat:?}: paid what it should not"
        );
        assert_eq!(
            inbound_succeeded(&stranger),
            0,
            "{cheat:?}: the stranger was paid"
        );
        server.abort();
    }
    drop(miner);
    fake_ln.stop().unwrap();
    stranger.stop().unwrap();
}
