//! Cheating in the single-fee scheme (paper seed 000 §VI), on a real regtest chain:
//! - a cable crafting payments by hand against the real `socket-node`: each refused with its
//!   reason and a Lockout; a double spend of the set's inputs is seen and locked out, and the
//!   socket loses at most the increments it held unbroadcast;
//! - a fake socket asking the real `cable-node` for more than the rules allow: refused, never
//!   signed.

use proto::request_auth::Recipient;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::{Amount, FeeRate, OutPoint, ScriptBuf, Txid, WPubkeyHash};
use integration::{
    funded_payer, CableFiles, CableSetup, Fake, FakeWatchStream, SocketProcess, SocketSetup, OUTLET,
};
use proto::single_fee::outpoints_to_proto;
use proto::v1::socket_client::SocketClient;
use proto::v1::{self, OutletState};
use regtest::Regtest;
use tonic::transport::Channel;
use tonic::{Response, Status};

const RATE: u64 = 2;

#[derive(Clone, Copy, Debug)]
enum CableCheat {
    OtherInputs,
    SameValueAgain,
    LowerValue,
    ChangedFee,
    PayoutElsewhere,
}

async fn power_request(
    client: &mut SocketClient<Channel>,
    to: Recipient,
    session: &str,
) -> v1::PowerRequestResponse {
    client
        .power_request(integration::cable_signer().sign(
            &to,
            v1::PowerRequestRequest {
                outlet_id: OUTLET.into(),
                scheme: v1::Scheme::SingleFee as i32,
                session_id: session.into(),
                max_amount_sat: 5_000,
                auth: None,
                receipt: None,
                offer_payout_script: Vec::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn pay(
    client: &mut SocketClient<Channel>,
    to: Recipient,
    terms: &v1::PowerRequestResponse,
    psbt: &Psbt,
) -> Result<v1::PayTransactionResponse, Status> {
    client
        .pay_transaction(integration::cable_signer().sign(
            &to,
            v1::PayTransactionRequest {
                session_id: terms.session_id.clone(),
                payment_id: terms.payment_id,
                psbt: psbt.serialize(),
                auth: None,
            },
        ))
        .await
        .map(Response::into_inner)
}

async fn status(client: &mut SocketClient<Channel>) -> v1::GetStatusResponse {
    client
        .get_status(v1::GetStatusRequest {
            outlet_id: OUTLET.into(),
        })
        .await
        .unwrap()
        .into_inner()
}

async fn wait_for(
    client: &mut SocketClient<Channel>,
    what: &str,
    done: impl Fn(&v1::GetStatusResponse) -> bool,
) -> v1::GetStatusResponse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(client).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "socket never {what}: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mempool(bitcoind: &Regtest) -> Vec<String> {
    regtest::rpc(bitcoind.client(), "getrawmempool", &[]).unwrap()
}

#[test]
fn the_socket_refuses_cheating_single_fee_payments() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = SocketSetup {
        time_scale: 1.0,
        lockout_secs: 1,
        link_debounce_ms: 200,
        ..SocketSetup::default()
    };
    let socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    let to = socket.recipient();
    let mut payer = funded_payer(&bitcoind, 3, 40_000);
    let mut other = funded_payer(&bitcoind, 3, 40_000);
    let rate = FeeRate::from_sat_per_vb(RATE).unwrap();
    let cap = Amount::from_sat(5_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    for (cheat, reason) in [
        (
            CableCheat::OtherInputs,
            "does not spend exactly the inputs of the set",
        ),
        (CableCheat::SameValueAgain, "one increment above the last"),
        (CableCheat::LowerValue, "one increment above the last"),
        (CableCheat::ChangedFee, "the fee changed"),
        (
            CableCheat::PayoutElsewhere,
            "output(s) to the payout script",
        ),
    ] {
        runtime.block_on(async {
            let mut client = SocketClient::connect(socket.endpoint.clone())
                .await
                .unwrap();
            wait_for(&mut client, "in Standby", |s| {
                s.state == OutletState::Standby as i32 && s.session_hash.is_empty()
            })
            .await;
            let _link = client
                .watch_status(integration::cable_signer().sign(
                    &to,
                    v1::WatchStatusRequest {
                        outlet_id: OUTLET.into(),
                        auth: None,
                    },
                ))
                .await
                .unwrap();
            let first = power_request(&mut client, to, "").await;
            let first_terms = proto::terms::single_fee_terms(&first).unwrap();
            assert!(
                first_terms.inputs.is_empty() && first_terms.value_sat == 1_000,
                "{first:?}"
            );
            let payout = ScriptBuf::from_bytes(first.payout_script.clone());
            let (inputs, fee) = payer
                .wallet
                .plan_input_set(&payout, Amount::from_sat(5_000), rate, cap)
                .unwrap();
            let one = payer
                .wallet
                .pay_from(&inputs, &payout, Amount::from_sat(1_000), fee)
                .unwrap();
            pay(&mut client, to, &first, &one.psbt).await.unwrap();
            let mut held = one.tx.clone();
            let mut next = power_request(&mut client, to, &first.session_id).await;
            if let CableCheat::LowerValue = cheat {
                let two = payer
                    .wallet
                    .pay_from(&inputs, &payout, Amount::from_sat(2_000), fee)
                    .unwrap();
                pay(&mut client, to, &next, &two.psbt).await.unwrap();
                held = two.tx.clone();
                next = power_request(&mut client, to, &first.session_id).await;
            }
            let value = Amount::from_sat(proto::terms::single_fee_terms(&next).unwrap().value_sat);
            let crafted = match cheat {
                CableCheat::OtherInputs => {
                    let (theirs, their_fee) = other
                        .wallet
                        .plan_input_set(&payout, Amount::from_sat(5_000), rate, cap)
                        .unwrap();
                    other
                        .wallet
                        .pay_from(&theirs, &payout, value, their_fee)
                        .unwrap()
                }
                CableCheat::SameValueAgain => payer
                    .wallet
                    .pay_from(&inputs, &payout, Amount::from_sat(1_000), fee)
                    .unwrap(),
                CableCheat::LowerValue => payer
                    .wallet
                    .pay_from(&inputs, &payout, Amount::from_sat(1_000), fee)
                    .unwrap(),
                CableCheat::ChangedFee => payer
                    .wallet
                    .pay_from(&inputs, &payout, value, fee + Amount::from_sat(100))
                    .unwrap(),
                CableCheat::PayoutElsewhere => {
                    let own = payer.wallet.receive_address(9).unwrap().script_pubkey();
                    payer.wallet.pay_from(&inputs, &own, value, fee).unwrap()
                }
            };
            let refused = pay(&mut client, to, &next, &crafted.psbt)
                .await
                .expect_err("the socket must refuse");
            assert_eq!(
                refused.code(),
                tonic::Code::PermissionDenied,
                "{cheat:?}: {refused:?}"
            );
            assert!(
                refused.message().contains(reason),
                "{cheat:?}: {}",
                refused.message()
            );
            let locked = status(&mut client).await;
            assert_eq!(locked.state, OutletState::Lockout as i32, "{cheat:?}");
            assert!(!locked.relay_closed, "{cheat:?}");

            // The socket settles what it held: the honest payments, nothing of the cheat.
            let held_txid = held.compute_txid().to_string();
            let deadline = Instant::now() + Duration::from_secs(10);
            while !mempool(&bitcoind).contains(&held_txid) {
                assert!(
                    Instant::now() < deadline,
                    "{cheat:?}: the held payment was not broadcast"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let crafted_txid = crafted.tx.compute_txid().to_string();
            if crafted_txid != held_txid {
                assert!(
                    !mempool(&bitcoind).contains(&crafted_txid),
                    "{cheat:?}: the cheat reached the chain"
                );
            }
            payer.wallet.record_sent(&held).unwrap();
        });
        bitcoind.mine(1).unwrap();
        payer.wallet.sync(&payer.chain).unwrap();
    }
}

#[test]
fn a_double_spend_of_the_held_inputs_is_locked_out_at_bounded_loss() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = SocketSetup {
        time_scale: 1.0,
        link_debounce_ms: 200,
        ..SocketSetup::default()
    };
    let socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    let to = socket.recipient();
    let mut payer = funded_payer(&bitcoind, 3, 40_000);
    let rate = FeeRate::from_sat_per_vb(RATE).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut client = SocketClient::connect(socket.endpoint.clone())
            .await
            .unwrap();
        let _link = client
            .watch_status(integration::cable_signer().sign(
                &to,
                v1::WatchStatusRequest {
                    outlet_id: OUTLET.into(),
                    auth: None,
                },
            ))
            .await
            .unwrap();
        let mut terms = power_request(&mut client, to, "").await;
        let payout = ScriptBuf::from_bytes(terms.payout_script.clone());
        let (inputs, fee) = payer
            .wallet
            .plan_input_set(
                &payout,
                Amount::from_sat(5_000),
                rate,
                Amount::from_sat(5_000),
            )
            .unwrap();
        let mut held = None;
        for k in 1..=2u64 {
            let payment = payer
                .wallet
                .pay_from(&inputs, &payout, Amount::from_sat(k * 1_000), fee)
                .unwrap();
            pay(&mut client, to, &terms, &payment.psbt).await.unwrap();
            held = Some(payment.tx);
            terms = power_request(&mut client, to, &terms.session_id).await;
        }
        // Mid-session the cable spends the set's inputs to itself, paying the same fee.
        let own = payer.wallet.receive_address(9).unwrap().script_pubkey();
        let escape = payer
            .wallet
            .pay_from(&inputs, &own, Amount::from_sat(1_000), fee)
            .unwrap();
        payer.chain.broadcast(&escape.tx).unwrap();

        let locked = wait_for(&mut client, "locked out", |s| {
            s.state == OutletState::Lockout as i32
        })
        .await;
        assert!(locked.reason.contains("double spend"), "{}", locked.reason);
        assert!(!locked.relay_closed);
        // Nothing is credited after the escape: two payments, and the next one is refused.
        let after = power_request_err(&mut client, to, &terms.session_id).await;
        assert_eq!(after.code(), tonic::Code::FailedPrecondition);

        // The socket tried its held payment and lost the race: its loss is the two increments
        // it held unbroadcast, no more.
        let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let (status, value): (String, i64) = loop {
            let row: (String, i64) = db
                .query_row(
                    "SELECT status, latest_value_sat FROM single_fee_sets",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            if row.0 != "open" || Instant::now() > deadline {
                break row;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!((status.as_str(), value), ("failed", 2_000));
        let credited: i64 = db
            .query_row("SELECT COUNT(*) FROM payments", [], |r| r.get(0))
            .unwrap();
        assert_eq!(credited, 2);
        // The loss is the cable identity's: recorded, and no new session for it.
        let (lost_sat, banned): (i64, Option<String>) = db
            .query_row(
                "SELECT lost_sat, banned_reason FROM cables WHERE key_hex = ?1",
                [integration::cable_signer().public_key().to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(lost_sat, 2_000);
        assert!(banned.unwrap().contains("double spend"));
        let banned = power_request_err(&mut client, to, "").await;
        assert_eq!(
            proto::errors::reason_of(&banned),
            Some(v1::ErrorReason::CableBanned),
            "{banned:?}"
        );
        let pool = mempool(&bitcoind);
        assert!(pool.contains(&escape.tx.compute_txid().to_string()));
        assert!(!pool.contains(&held.unwrap().compute_txid().to_string()));
    });
}

/// A set the socket has broadcast is watched until final (design.md "Trust"): the cable that
/// unplugs and then replaces the set's transaction with one paying itself (full RBF, a higher
/// fee) is found, the set recorded lost and the cable banned. Before, a broadcast set was
/// forgotten: free energy, again at every session.
#[test]
fn a_broadcast_set_the_cable_replaces_is_found_and_recorded_as_lost() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let setup = SocketSetup {
        time_scale: 1.0,
        link_debounce_ms: 200,
        ..SocketSetup::default()
    };
    let socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    let to = socket.recipient();
    let mut payer = funded_payer(&bitcoind, 3, 40_000);
    let rate = FeeRate::from_sat_per_vb(RATE).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let db = || rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let set_row = || -> (String, i64, Option<String>) {
        db().query_row(
            "SELECT status, latest_value_sat, txid FROM single_fee_sets",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    };
    runtime.block_on(async {
        let mut client = SocketClient::connect(socket.endpoint.clone())
            .await
            .unwrap();
        let link = client
            .watch_status(integration::cable_signer().sign(
                &to,
                v1::WatchStatusRequest {
                    outlet_id: OUTLET.into(),
                    auth: None,
                },
            ))
            .await
            .unwrap();
        let mut terms = power_request(&mut client, to, "").await;
        let payout = ScriptBuf::from_bytes(terms.payout_script.clone());
        let (inputs, fee) = payer
            .wallet
            .plan_input_set(
                &payout,
                Amount::from_sat(5_000),
                rate,
                Amount::from_sat(5_000),
            )
            .unwrap();
        for k in 1..=2u64 {
            let payment = payer
                .wallet
                .pay_from(&inputs, &payout, Amount::from_sat(k * 1_000), fee)
                .unwrap();
            pay(&mut client, to, &terms, &payment.psbt).await.unwrap();
            terms = power_request(&mut client, to, &terms.session_id).await;
        }
        // Unplug: the session ends and the socket broadcasts the set it holds.
        drop(link);
        integration::wait_until("the set broadcast", Duration::from_secs(30), || {
            set_row().0 == "broadcast"
        });
        let sent: Txid = set_row().2.unwrap().parse().unwrap();
        assert!(mempool(&bitcoind).contains(&sent.to_string()));

        // The cable takes it back: the same inputs to itself, a higher fee (full RBF).
        let own = payer.wallet.receive_address(9).unwrap().script_pubkey();
        let back = payer
            .wallet
            .pay_from(
                &inputs,
                &own,
                Amount::from_sat(1_000),
                fee + Amount::from_sat(2_000),
            )
            .unwrap();
        payer.chain.broadcast(&back.tx).unwrap();
        let pool = mempool(&bitcoind);
        assert!(!pool.contains(&sent.to_string()), "not replaced: {pool:?}");

        integration::wait_until("the set recorded lost", Duration::from_secs(30), || {
            set_row().0 == "failed"
        });
        let (lost_sat, banned): (i64, Option<String>) = db()
            .query_row(
                "SELECT lost_sat, banned_reason FROM cables WHERE key_hex = ?1",
                [integration::cable_signer().public_key().to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(lost_sat, 2_000);
        let banned = banned.unwrap();
        assert!(
            banned.contains(&back.tx.compute_txid().to_string()),
            "{banned}"
        );
        let refused = power_request_err(&mut client, to, "").await;
        assert_eq!(
            proto::errors::reason_of(&refused),
            Some(v1::ErrorReason::CableBanned),
            "{refused:?}"
        );
    });
}

async fn power_request_err(
    client: &mut SocketClient<Channel>,
    to: Recipient,
    session: &str,
) -> Status {
    client
        .power_request(integration::cable_signer().sign(
            &to,
            v1::PowerRequestRequest {
                outlet_id: OUTLET.into(),
                scheme: v1::Scheme::SingleFee as i32,
                session_id: session.into(),
                max_amount_sat: 5_000,
                auth: None,
                receipt: None,
                offer_payout_script: Vec::new(),
            },
        ))
        .await
        .expect_err("no terms in a locked-out session")
}

#[derive(Clone, Copy, Debug)]
enum SocketCheat {
    JumpOfTwo,
    OtherInputs,
    HigherFee,
}

/// The inputs and fee of the set the fake socket learned from the first payment.
type LearnedSet = Arc<Mutex<Option<(Vec<OutPoint>, Amount)>>>;

/// A socket that takes one honest single-fee payment, then asks for a cheating second one.
struct FakeSocket {
    cheat: SocketCheat,
    pay_calls: Arc<AtomicUsize>,
    set: LearnedSet,
    events: tokio::sync::broadcast::Sender<v1::WatchStatusResponse>,
}

fn fake_payout() -> ScriptBuf {
    ScriptBuf::new_p2wpkh(&WPubkeyHash::from_byte_array([9; 20]))
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
                scheme: v1::Scheme::SingleFee as i32,
                min_payment_sat: 546,
                min_fee_rate_sat_per_vb: 0,
                terms: Some(v1::scheme_terms::Terms::SingleFee(
                    v1::SingleFeeOfferTerms {
                        max_amount_sat: 5_000,
                    },
                )),
            }],
            payout_script: fake_payout().to_bytes(),
            cable_nonce: Vec::new(),
        }
    }

    async fn watch_status(&self) -> Result<FakeWatchStream, Status> {
        Ok(integration::watch_stream(&self.events))
    }

    async fn power_request(
        &self,
        _: v1::PowerRequestRequest,
    ) -> Result<v1::PowerRequestResponse, Status> {
        let mut payment_id = 1;
        let mut terms = v1::SingleFeePaymentTerms {
            value_sat: 1_000,
            max_amount_sat: 5_000,
            ..Default::default()
        };
        if let Some((inputs, fee)) = self.set.lock().unwrap().clone() {
            payment_id = 2;
            terms.value_sat = 2_000;
            terms.inputs = outpoints_to_proto(&inputs);
            terms.fee_sat = fee.to_sat();
            match self.cheat {
                SocketCheat::JumpOfTwo => terms.value_sat = 3_000,
                SocketCheat::OtherInputs => {
                    terms.inputs = outpoints_to_proto(&[OutPoint {
                        txid: Txid::from_byte_array([7; 32]),
                        vout: 1,
                    }])
                }
                SocketCheat::HigherFee => terms.fee_sat += 500,
            }
        }
        Ok(v1::PowerRequestResponse {
            session_id: "fake".into(),
            payment_id,
            scheme: v1::Scheme::SingleFee as i32,
            amount_msat: 1_000_000,
            quota_mwh: 8_000,
            payout_script: fake_payout().to_bytes(),
            terms: Some(v1::power_request_response::Terms::SingleFee(terms)),
        })
    }

    async fn pay_transaction(
        &self,
        request: v1::PayTransactionRequest,
    ) -> Result<v1::PayTransactionResponse, Status> {
        self.pay_calls.fetch_add(1, Ordering::SeqCst);
        let psbt = Psbt::deserialize(&request.psbt)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let fee = psbt
            .fee()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let tx = psbt.extract_tx_unchecked_fee_rate();
        *self.set.lock().unwrap() =
            Some((tx.input.iter().map(|i| i.previous_output).collect(), fee));
        // Paid, drawing power, and the quota already low: the cable is asked for more.
        for event in integration::fake_paid_and_quota_low("fake") {
            let _ = self.events.send(event);
        }
        Ok(v1::PayTransactionResponse {
            txid: tx.compute_txid().to_string(),
            quota_credited_mwh: 8_000,
            state: OutletState::Paid as i32,
        })
    }
}

#[test]
fn the_cable_refuses_a_single_fee_socket_asking_too_much() {
    let bitcoind = Regtest::start().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (cheat, reason) in [
        (SocketCheat::JumpOfTwo, "one increment above the last"),
        (SocketCheat::OtherInputs, "other inputs than the set's"),
        (SocketCheat::HigherFee, "the fee changed"),
    ] {
        let pay_calls = Arc::new(AtomicUsize::new(0));
        let (events, _) = tokio::sync::broadcast::channel(16);
        let fake = FakeSocket {
            cheat,
            pay_calls: Arc::clone(&pay_calls),
            set: Arc::default(),
            events,
        };
        let (endpoint, server) = integration::serve_fake(&runtime, fake).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cable = CableFiles::create(
            &bitcoind,
            dir.path(),
            &endpoint,
            &CableSetup {
                schemes: vec!["single-fee".into()],
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
            1,
            "{cheat:?}: the cable signed the cheat"
        );
        let db = rusqlite::Connection::open(cable.data_dir.join("cable.sqlite")).unwrap();
        let signed: i64 = db
            .query_row("SELECT COUNT(*) FROM payments", [], |r| r.get(0))
            .unwrap();
        assert_eq!(signed, 1, "{cheat:?}: a second signature exists");
        server.abort();
    }
}
