//! A cheating socket: a hand-made `t2t.v1.Socket` server that breaks one rule at a time, against
//! the real `cable-node` binary on a real regtest chain. The cable must refuse with the reason
//! and pay nothing (design.md "Trust"; paper §VII.B). A spillman socket that will not sign the
//! refund, or signs another one, never gets the deposit (seed 003 step 9).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bitcoin::hashes::Hash;
use bitcoin::{Amount, ScriptBuf, WPubkeyHash};
use integration::{CableFiles, CableSetup, Fake, FakeWatchStream, OUTLET};
use proto::v1::{self, OutletState};
use regtest::Regtest;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

#[derive(Clone, Copy, Debug)]
enum Cheat {
    /// Terms pay a script other than the offer's.
    PayoutScript,
    /// The offer's price is above the cable's policy.
    Price,
    /// Terms ask for more than price × quota.
    Amount,
    /// The offer is for mainnet.
    Network,
    /// spillman: the socket will not sign the refund.
    RefundRefused,
    /// spillman: the socket signs another refund than the one asked (a later lock time).
    RefundWrongSignature,
    /// The offer was changed after the socket signed it (a device in the middle lowered the
    /// price shown).
    TamperedOffer,
    /// An offer signed for another request (another nonce) is played back.
    ReplayedOffer,
    /// Takes the first payment, then sends QuotaLow after QuotaLow while more than a quota is
    /// paid and unused (fishing for payments).
    QuotaLowStorm,
    /// Takes each payment, and signs after it a count that says nothing is left
    /// (`quota_remaining = 0`) though little energy was used (1 Wh): paid on its word, it
    /// would take the whole budget for energy never delivered.
    LyingQuotaLow,
}

impl Cheat {
    fn spillman(self) -> bool {
        matches!(self, Cheat::RefundRefused | Cheat::RefundWrongSignature)
    }
}

/// The fake socket's spillman channel key.
fn channel_secret() -> bitcoin::secp256k1::SecretKey {
    bitcoin::secp256k1::SecretKey::from_slice(&[7; 32]).unwrap()
}

struct FakeSocket {
    cheat: Cheat,
    pay_calls: Arc<AtomicUsize>,
}

/// The channel a cable's `OpenChannel` describes, with the fake socket's key.
fn channel_of(request: &v1::OpenChannelRequest) -> proto::spillman::Channel {
    let secp = bitcoin::secp256k1::Secp256k1::signing_only();
    proto::spillman::Channel {
        cable_key: bitcoin::PublicKey::from_slice(&request.cable_channel_key).unwrap(),
        socket_key: bitcoin::PublicKey::new(channel_secret().public_key(&secp)),
        deposit: bitcoin::OutPoint::new(
            request.deposit_txid.parse().unwrap(),
            request.deposit_vout,
        ),
        deposit_value: Amount::from_sat(request.deposit_sat),
        refund_lock_height: request.refund_lock_height,
        fee: Amount::from_sat(request.fee_sat),
        cable_script: ScriptBuf::from_bytes(request.cable_script.clone()),
        socket_script: payout(),
    }
}

fn payout() -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([9; 20]))
}

impl FakeSocket {
    /// The offer of this cheat.
    fn offer_of_cheat(&self) -> v1::Offer {
        let mut offer = v1::Offer {
            socket_identity_key: integration::fake_public_key(1),
            outlet_id: OUTLET.into(),
            network: match self.cheat {
                Cheat::Network => v1::Network::Bitcoin as i32,
                _ => v1::Network::Regtest as i32,
            },
            price_msat_per_wh: match self.cheat {
                Cheat::Price => 250_000,
                _ => 125_000,
            },
            quota_mwh: 8_000,
            schemes: vec![v1::SchemeTerms {
                scheme: v1::Scheme::Onchain as i32,
                min_payment_sat: 546,
                min_fee_rate_sat_per_vb: 0,
                terms: Some(v1::scheme_terms::Terms::Onchain(v1::OnchainOfferTerms {})),
            }],
            payout_script: payout().to_bytes(),
            cable_nonce: Vec::new(),
        };
        if self.cheat.spillman() {
            offer.schemes = vec![v1::SchemeTerms {
                scheme: v1::Scheme::Spillman as i32,
                min_payment_sat: 546,
                min_fee_rate_sat_per_vb: 0,
                terms: Some(v1::scheme_terms::Terms::Spillman(v1::SpillmanOfferTerms {
                    socket_channel_key: bitcoin::PublicKey::new(
                        channel_secret().public_key(&bitcoin::secp256k1::Secp256k1::signing_only()),
                    )
                    .to_bytes(),
                    min_deposit_sat: 2_000,
                    min_lock_blocks: 12,
                    max_lock_blocks: 1_008,
                    close_margin_blocks: 6,
                })),
            }];
        }
        offer
    }
}

#[tonic::async_trait]
impl Fake for FakeSocket {
    fn offer(&self) -> v1::Offer {
        self.offer_of_cheat()
    }

    fn signed_offer(&self, request: &v1::GetOfferRequest) -> v1::GetOfferResponse {
        let mut signed = integration::fake_signed_offer(self.offer(), request);
        match self.cheat {
            Cheat::TamperedOffer => {
                use prost::Message;
                let mut offer = v1::Offer::decode(signed.offer.as_slice()).unwrap();
                offer.price_msat_per_wh = 1_000;
                signed.offer = offer.encode_to_vec();
            }
            Cheat::ReplayedOffer => {
                let earlier = v1::GetOfferRequest {
                    cable_nonce: vec![9; 32],
                    ..request.clone()
                };
                signed = integration::fake_signed_offer(self.offer(), &earlier);
            }
            _ => {}
        }
        signed
    }

    async fn get_status(&self) -> Result<v1::GetStatusResponse, Status> {
        Ok(integration::fake_signed_status(
            v1::GetStatusResponse {
                outlet_id: OUTLET.into(),
                state: OutletState::Standby as i32,
                ..Default::default()
            },
            "",
        ))
    }

    async fn watch_status(&self) -> Result<FakeWatchStream, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let storm = matches!(self.cheat, Cheat::QuotaLowStorm | Cheat::LyingQuotaLow);
        // (quota left, energy used, QuotaLows sent) in the signed count after the first payment.
        let (left_mwh, used_mwh, quota_lows) = match self.cheat {
            Cheat::LyingQuotaLow => (0, 1_000, 6),
            _ => (20_000, 0, 3),
        };
        let pay_calls = Arc::clone(&self.pay_calls);
        tokio::spawn(async move {
            if storm {
                // Once paid: Paid with 20 Wh left (two and a half quotas), and QuotaLows.
                while pay_calls.load(Ordering::SeqCst) == 0 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let status = integration::fake_signed_status(
                    v1::GetStatusResponse {
                        outlet_id: OUTLET.into(),
                        state: OutletState::Paid as i32,
                        power_mw: 1_000_000,
                        quota_remaining_mwh: left_mwh,
                        energy_used_mwh: used_mwh,
                        relay_closed: true,
                        payments: 1,
                        ..Default::default()
                    },
                    "fake-session",
                );
                let mut events = vec![v1::watch_status_response::Event::Status(status.clone())];
                for _ in 0..quota_lows {
                    events.push(v1::watch_status_response::Event::QuotaLow(v1::QuotaLow {
                        quota_remaining_mwh: left_mwh,
                        power_mw: 1_000_000,
                        signed: status.signed.clone(),
                    }));
                }
                for event in events {
                    let _ = tx
                        .send(Ok(v1::WatchStatusResponse { event: Some(event) }))
                        .await;
                }
                tx.closed().await;
                return;
            }
            let _ = tx
                .send(Ok(v1::WatchStatusResponse {
                    event: Some(v1::watch_status_response::Event::Status(
                        integration::fake_signed_status(
                            v1::GetStatusResponse {
                                outlet_id: OUTLET.into(),
                                state: OutletState::Standby as i32,
                                ..Default::default()
                            },
                            "",
                        ),
                    )),
                }))
                .await;
            tx.closed().await;
        });
        Ok(ReceiverStream::new(rx))
    }

    async fn power_request(
        &self,
        _: v1::PowerRequestRequest,
    ) -> Result<v1::PowerRequestResponse, Status> {
        let mut terms = v1::PowerRequestResponse {
            session_id: "fake-session".into(),
            payment_id: self.pay_calls.load(Ordering::SeqCst) as u64 + 1,
            scheme: v1::Scheme::Onchain as i32,
            amount_msat: 1_000_000,
            quota_mwh: 8_000,
            payout_script: payout().to_bytes(),
            terms: Some(v1::power_request_response::Terms::Onchain(
                v1::OnchainPaymentTerms {},
            )),
        };
        match self.cheat {
            Cheat::PayoutScript => {
                terms.payout_script =
                    ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([6; 20])).to_bytes()
            }
            Cheat::Amount => terms.amount_msat = 2_000_000,
            Cheat::Price
            | Cheat::Network
            | Cheat::RefundRefused
            | Cheat::RefundWrongSignature
            | Cheat::TamperedOffer
            | Cheat::ReplayedOffer
            | Cheat::QuotaLowStorm
            | Cheat::LyingQuotaLow => {}
        }
        Ok(terms)
    }

    async fn open_channel(
        &self,
        request: v1::OpenChannelRequest,
    ) -> Result<v1::OpenChannelResponse, Status> {
        if !matches!(self.cheat, Cheat::RefundWrongSignature) {
            return Err(Status::permission_denied("no refund for you"));
        }
        let mut channel = channel_of(&request);
        channel.refund_lock_height += 1_000;
        let later = channel.refund().unwrap();
        let signature = channel.sign(&later, &channel_secret()).unwrap();
        Ok(v1::OpenChannelResponse {
            session_id: "fake-session".into(),
            refund_signature: signature.to_vec(),
        })
    }

    async fn fund_channel(
        &self,
        _: v1::FundChannelRequest,
    ) -> Result<v1::FundChannelResponse, Status> {
        // Handing over the deposit is a payment.
        self.pay_calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::internal("the cable should never get here"))
    }

    async fn pay_transaction(
        &self,
        request: v1::PayTransactionRequest,
    ) -> Result<v1::PayTransactionResponse, Status> {
        self.pay_calls.fetch_add(1, Ordering::SeqCst);
        if !matches!(self.cheat, Cheat::QuotaLowStorm | Cheat::LyingQuotaLow) {
            return Err(Status::internal("a fake socket takes no money"));
        }
        // Taken (and never broadcast): the txid the cable expects.
        let psbt = bitcoin::Psbt::deserialize(&request.psbt).unwrap();
        Ok(v1::PayTransactionResponse {
            txid: psbt.unsigned_tx.compute_txid().to_string(),
            quota_credited_mwh: 8_000,
            state: OutletState::Paid as i32,
        })
    }
}

#[test]
fn the_cable_pays_a_cheating_socket_nothing() {
    let bitcoind = Regtest::start().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (cheat, reason) in [
        (Cheat::PayoutScript, "is not the offer's"),
        (Cheat::Price, "above the policy's maximum"),
        (Cheat::Amount, "is not price x quota"),
        (Cheat::Network, "wrong network"),
        (Cheat::RefundRefused, "no refund for you"),
        (Cheat::RefundWrongSignature, "refund signature"),
        (Cheat::TamperedOffer, "bad signature of the offer"),
        (Cheat::ReplayedOffer, "not our nonce"),
    ] {
        let pay_calls = Arc::new(AtomicUsize::new(0));
        let fake = FakeSocket {
            cheat,
            pay_calls: Arc::clone(&pay_calls),
        };
        let (endpoint, server) = integration::serve_fake(&runtime, fake).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cable = CableFiles::create(
            &bitcoind,
            dir.path(),
            &endpoint,
            &CableSetup {
                schemes: if cheat.spillman() {
                    vec!["spillman".into()]
                } else {
                    CableSetup::default().schemes
                },
                max_session_sat: 10_000,
                ..CableSetup::default()
            },
            Amount::from_sat(50_000),
        )
        .unwrap();
        let out = cable.run(Duration::from_secs(60)).unwrap();
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
            pay_calls.load(Ordering::SeqCst),
            0,
            "{cheat:?}: the cable sent a payment"
        );
        let mempool: Vec<String> = regtest::rpc(bitcoind.client(), "getrawmempool", &[]).unwrap();
        assert!(
            mempool.is_empty(),
            "{cheat:?}: something was broadcast: {mempool:?}"
        );
        server.abort();
    }
}

#[test]
fn the_cable_pays_no_quota_low_storm_and_flags_the_socket() {
    let bitcoind = Regtest::start().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pay_calls = Arc::new(AtomicUsize::new(0));
    let fake = FakeSocket {
        cheat: Cheat::QuotaLowStorm,
        pay_calls: Arc::clone(&pay_calls),
    };
    let (endpoint, server) = integration::serve_fake(&runtime, fake).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cable = CableFiles::create(
        &bitcoind,
        dir.path(),
        &endpoint,
        &CableSetup {
            max_session_sat: 10_000,
            ..CableSetup::default()
        },
        Amount::from_sat(50_000),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(60)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("flagged the socket: a QuotaLow storm"),
        "{log}"
    );
    // The first quota only: none of the three QuotaLows was paid.
    assert_eq!(pay_calls.load(Ordering::SeqCst), 1);
    let registry: serde_json::Value =
        serde_json::from_str(&cable.cli(&["sockets", "--json"]).unwrap()).unwrap();
    assert_eq!(registry[0]["status"], "flagged", "{registry}");
    assert_eq!(registry[0]["evidence"]["quota_remaining_mwh"], 20_000);
    server.abort();
}

/// The cable keeps its own books (design.md "Blame needs proof"): a socket that signs "nothing
/// left" after each payment while its own signed count shows 1 Wh used gets the second quota
/// (one 8 Wh quota paid, 7 Wh unused: at most one left), then nothing more: two quotas paid
/// and 1 Wh used is 15 Wh unused, whatever the socket signs. The third such QuotaLow flags it,
/// with the cable's books in the evidence. Paid on the socket's word, the six QuotaLows would
/// have taken seven quotas.
#[test]
fn the_cable_pays_by_its_own_books_not_by_a_lying_quota_low() {
    let bitcoind = Regtest::start().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let pay_calls = Arc::new(AtomicUsize::new(0));
    let fake = FakeSocket {
        cheat: Cheat::LyingQuotaLow,
        pay_calls: Arc::clone(&pay_calls),
    };
    let (endpoint, server) = integration::serve_fake(&runtime, fake).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cable = CableFiles::create(
        &bitcoind,
        dir.path(),
        &endpoint,
        &CableSetup {
            max_session_sat: 10_000,
            ..CableSetup::default()
        },
        Amount::from_sat(50_000),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(60)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("flagged the socket: a QuotaLow storm"),
        "{log}"
    );
    assert_eq!(pay_calls.load(Ordering::SeqCst), 2, "{log}");
    let registry: serde_json::Value =
        serde_json::from_str(&cable.cli(&["sockets", "--json"]).unwrap()).unwrap();
    assert_eq!(registry[0]["status"], "flagged", "{registry}");
    assert_eq!(registry[0]["evidence"]["quota_remaining_mwh"], 0);
    assert_eq!(registry[0]["evidence"]["cable_paid_unused_mwh"], "15000");
    server.abort();
}
