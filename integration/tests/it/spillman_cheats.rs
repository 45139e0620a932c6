//! A cheating spillman cable: a hand-made cable (its own wallet, channel key and gRPC client)
//! against the real `socket-node` on a real regtest chain. Each payment that is not exactly the
//! channel's next one, signed by the cable, is refused and locks the outlet out; a deposit
//! double-spent before it confirms stops the crediting (seed 003; design.md "Trust"). A refused
//! channel counts against the cable, also across a crash.

use std::time::Duration;

use bitcoin::consensus::encode;
use bitcoin::psbt::Psbt;
use bitcoin::secp256k1::{rand, Secp256k1, SecretKey};
use bitcoin::{Amount, FeeRate, OutPoint, PublicKey};
use integration::{funded_payer, Payer, SocketProcess, SocketSetup, OUTLET};
use proto::spillman::{Channel, Signer};
use proto::v1::socket_client::SocketClient;
use proto::v1::{self, OutletState};
use regtest::Regtest;
use tonic::transport;

#[derive(Clone, Copy, Debug)]
enum Cheat {
    /// A payment of less than one quota more.
    LowerTotal,
    /// The right total, but less change back to the cable (more fee).
    WrongChange,
    /// The right payment, signed by another key.
    BadSignature,
    /// The deposit's coin spent elsewhere after one honest payment.
    DoubleSpend,
}

/// The hand-made cable's channel, open with the socket.
struct OpenChannel {
    /// The socket as the cable's requests address it.
    to: proto::request_auth::Recipient,
    session_id: String,
    channel: Channel,
    secret: SecretKey,
    deposit: bitcoin::Transaction,
}

async fn open_channel(
    client: &mut SocketClient<transport::Channel>,
    offer: &v1::Offer,
    payer: &mut Payer,
    height: u32,
) -> OpenChannel {
    let terms = proto::terms::offered_spillman(offer).unwrap();
    let to = proto::request_auth::Recipient::of_offer(offer).unwrap();
    let secret = SecretKey::new(&mut rand::thread_rng());
    let mut channel = Channel {
        cable_key: PublicKey::new(secret.public_key(&Secp256k1::signing_only())),
        socket_key: PublicKey::from_slice(&terms.socket_channel_key).unwrap(),
        deposit: OutPoint::null(),
        deposit_value: Amount::from_sat(10_000),
        refund_lock_height: height + 100,
        fee: Amount::from_sat(400),
        cable_script: payer.wallet.receive_address(9).unwrap().script_pubkey(),
        socket_script: bitcoin::ScriptBuf::from_bytes(offer.payout_script.clone()),
    };
    let script = channel.deposit_script_pubkey().unwrap();
    let deposit = payer
        .wallet
        .pay(
            &script,
            channel.deposit_value,
            FeeRate::from_sat_per_vb(2).unwrap(),
            Amount::from_sat(2_000),
        )
        .unwrap()
        .tx;
    let vout = deposit
        .output
        .iter()
        .position(|o| o.script_pubkey == script)
        .unwrap();
    channel.deposit = OutPoint::new(deposit.compute_txid(), vout as u32);
    let refund = channel.refund().unwrap();
    let opened = client
        .open_channel(integration::cable_signer().sign(
            &to,
            v1::OpenChannelRequest {
                outlet_id: OUTLET.into(),
                cable_channel_key: channel.cable_key.to_bytes(),
                deposit_txid: channel.deposit.txid.to_string(),
                deposit_vout: channel.deposit.vout,
                deposit_sat: channel.deposit_value.to_sat(),
                refund_lock_height: channel.refund_lock_height,
                fee_sat: channel.fee.to_sat(),
                cable_script: channel.cable_script.to_bytes(),
                refund_tx: encode::serialize(&refund),
                auth: None,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let signature = bitcoin::ecdsa::Signature::from_slice(&opened.refund_signature).unwrap();
    channel.verify(&refund, Signer::Socket, &signature).unwrap();
    client
        .fund_channel(integration::cable_signer().sign(
            &to,
            v1::FundChannelRequest {
                session_id: opened.session_id.clone(),
                deposit_tx: encode::serialize(&deposit),
                auth: None,
            },
        ))
        .await
        .unwrap();
    OpenChannel {
        to,
        session_id: opened.session_id,
        channel,
        secret,
        deposit,
    }
}

/// Ask for the next quota's terms and send `tx` signed with `key` as its payment.
async fn pay(
    client: &mut SocketClient<transport::Channel>,
    open: &OpenChannel,
    make: impl FnOnce(Amount) -> bitcoin::Transaction,
    key: &SecretKey,
) -> Result<v1::PayTransactionResponse, tonic::Status> {
    let terms = client
        .power_request(integration::cable_signer().sign(
            &open.to,
            v1::PowerRequestRequest {
                outlet_id: OUTLET.into(),
                scheme: v1::Scheme::Spillman as i32,
                session_id: open.session_id.clone(),
                max_amount_sat: 0,
                auth: None,
                receipt: None,
                offer_payout_script: Vec::new(),
            },
        ))
        .await?
        .into_inner();
    let tx = make(Amount::from_sat(
        proto::terms::spillman_terms(&terms).unwrap().value_sat,
    ));
    let signature = open.channel.sign(&tx, key).unwrap();
    let mut psbt = Psbt::from_unsigned_tx(tx).unwrap();
    psbt.inputs[0]
        .partial_sigs
        .insert(open.channel.cable_key, signature);
    client
        .pay_transaction(integration::cable_signer().sign(
            &open.to,
            v1::PayTransactionRequest {
                session_id: open.session_id.clone(),
                payment_id: terms.payment_id,
                psbt: psbt.serialize(),
                auth: None,
            },
        ))
        .await
        .map(|r| r.into_inner())
}

#[test]
fn the_socket_refuses_every_payment_that_is_not_the_channels_next() {
    let bitcoind = Regtest::start().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for (cheat, reason) in [
        (Cheat::LowerTotal, "not the channel's payment"),
        (Cheat::WrongChange, "not the channel's payment"),
        (Cheat::BadSignature, "bad signature by the cable"),
        (Cheat::DoubleSpend, "double-spent"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let setup = SocketSetup {
            spillman: true,
            ..SocketSetup::default()
        };
        let socket = SocketProcess::start(&bitcoind, dir.path(), &setup).unwrap();
        let to = socket.recipient();
        let offer = socket.offer().unwrap();
        let mut payer = funded_payer(&bitcoind, 1, 50_000);
        let height = bitcoind.height().unwrap();
        let endpoint = socket.endpoint.clone();
        let status = runtime.block_on(async {
            let mut client = SocketClient::connect(endpoint).await.unwrap();
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
            let open = open_channel(&mut client, &offer, &mut payer, height).await;
            let channel = open.channel.clone();
            let refused = match cheat {
                Cheat::LowerTotal => pay(
                    &mut client,
                    &open,
                    |total| channel.payment(total - Amount::from_sat(1)).unwrap(),
                    &open.secret,
                )
                .await
                .unwrap_err(),
                Cheat::WrongChange => pay(
                    &mut client,
                    &open,
                    |total| {
                        let mut tx = channel.payment(total).unwrap();
                        tx.output[1].value -= Amount::from_sat(100);
                        tx
                    },
                    &open.secret,
                )
                .await
                .unwrap_err(),
                Cheat::BadSignature => pay(
                    &mut client,
                    &open,
                    |total| channel.payment(total).unwrap(),
                    &SecretKey::new(&mut rand::thread_rng()),
                )
                .await
                .unwrap_err(),
                Cheat::DoubleSpend => {
                    pay(
                        &mut client,
                        &open,
                        |t| channel.payment(t).unwrap(),
                        &open.secret,
                    )
                    .await
                    .unwrap();
                    // The deposit's coin paid back to the cable at a higher fee (full RBF).
                    let conflict = payer
                        .wallet
                        .pay_from(
                            &[open.deposit.input[0].previous_output],
                            &channel.cable_script,
                            Amount::from_sat(40_000),
                            Amount::from_sat(5_000),
                        )
                        .unwrap()
                        .tx;
                    payer.chain.broadcast(&conflict).unwrap();
                    pay(
                        &mut client,
                        &open,
                        |t| channel.payment(t).unwrap(),
                        &open.secret,
                    )
                    .await
                    .unwrap_err()
                }
            };
            assert!(
                refused.message().contains(reason),
                "{cheat:?}: {}",
                refused.message()
            );
            client
                .get_status(v1::GetStatusRequest {
                    outlet_id: OUTLET.into(),
                })
                .await
                .unwrap()
                .into_inner()
        });
        assert_eq!(
            status.state,
            OutletState::Lockout as i32,
            "{cheat:?}: {status:?}"
        );
        assert!(!status.relay_closed);
        // Credited: nothing, or the one honest payment before the double spend.
        let db = rusqlite::Connection::open(dir.path().join("socket-data/socket.sqlite")).unwrap();
        let held: i64 = db
            .query_row("SELECT COUNT(*) FROM payments", [], |r| r.get(0))
            .unwrap();
        let expected = matches!(cheat, Cheat::DoubleSpend) as i64;
        assert_eq!(held, expected, "{cheat:?}");
        if matches!(cheat, Cheat::DoubleSpend) {
            // Nothing left to close with: the channel is recorded as lost, not retried forever.
            integration::wait_until("the channel marked lost", Duration::from_secs(10), || {
                db.query_row("SELECT status FROM spillman_channels", [], |r| {
                    r.get::<_, String>(0)
                })
                .is_ok_and(|s| s == "lost")
            });
            // The one payment credited from it is lost to the socket: the cable is banned.
            let (lost_sat, banned): (i64, Option<String>) = db
                .query_row("SELECT lost_sat, banned_reason FROM cables", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .unwrap();
            assert!(lost_sat > 0, "{cheat:?}");
            assert!(banned.is_some_and(|r| r.contains("spent")), "{cheat:?}");
        }
    }
}

/// A channel the socket refuses (no deposit named) counts against the cable's
/// identity; the socket crashes right after counting it (crash point `socket-count-refusal`,
/// see `crash_points.rs`) and the count is still there, the next refusal adding to it.
#[test]
fn a_refused_channel_counts_against_the_cable_across_a_crash() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut socket = SocketProcess::start(
        &bitcoind,
        dir.path(),
        &SocketSetup {
            spillman: true,
            ..SocketSetup::default()
        },
    )
    .unwrap();
    socket.env = vec![("FAILPOINTS".into(), "socket-count-refusal=return".into())];
    socket.restart().unwrap();
    let to = socket.recipient();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let refuse = |endpoint: String| {
        runtime.block_on(async {
            let mut client = SocketClient::connect(endpoint).await.unwrap();
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
            client
                .open_channel(integration::cable_signer().sign(
                    &to,
                    v1::OpenChannelRequest {
                        outlet_id: OUTLET.into(),
                        cable_channel_key: vec![2; 33],
                        ..Default::default()
                    },
                ))
                .await
                .expect_err("no channel")
        })
    };
    let refusals = |socket: &SocketProcess| -> i64 {
        let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
        db.query_row(
            "SELECT refusals FROM cables WHERE key_hex = ?1",
            [integration::cable_signer().public_key().to_string()],
            |r| r.get(0),
        )
        .unwrap()
    };
    // The socket dies right after counting: the cable sees no answer.
    let lost = refuse(socket.endpoint.clone());
    assert_ne!(lost.code(), tonic::Code::InvalidArgument, "{lost:?}");
    // The link breaks as the process exits: give the exit a moment to complete.
    integration::wait_until(
        "the socket to crash at socket-count-refusal",
        Duration::from_secs(10),
        || !socket.is_running(),
    );
    assert_eq!(refusals(&socket), 1);
    socket.env.clear();
    socket.restart().unwrap();
    // Started again: the next one is refused with its reason and counted too.
    let refused = refuse(socket.endpoint.clone());
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert_eq!(
        proto::errors::reason_of(&refused),
        Some(v1::ErrorReason::ChannelRefused),
        "{refused:?}"
    );
    assert_eq!(refusals(&socket), 2);
}

/// What a channel credits on a deposit not yet confirmed counts in the cable's
/// `max_unconfirmed_sat` (a double spend of the deposit would take it back): past it the
/// socket answers UNAVAILABLE, blaming nobody, and takes the same payment once the deposit
/// confirms.
#[test]
fn credit_on_an_unconfirmed_deposit_stays_within_the_unconfirmed_limit() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = SocketProcess::start(
        &bitcoind,
        dir.path(),
        &SocketSetup {
            spillman: true,
            // Two quotas of 1000 sat; real time, so that no quota runs out meanwhile.
            top_toml: "max_unconfirmed_sat = 2000".into(),
            time_scale: 1.0,
            ..SocketSetup::default()
        },
    )
    .unwrap();
    let to = socket.recipient();
    let offer = socket.offer().unwrap();
    let mut payer = funded_payer(&bitcoind, 1, 50_000);
    let height = bitcoind.height().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (mut client, _link, open) = runtime.block_on(async {
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
        let open = open_channel(&mut client, &offer, &mut payer, height).await;
        (client, link, open)
    });
    let channel = open.channel.clone();
    let mut next = || {
        runtime.block_on(pay(
            &mut client,
            &open,
            |total| channel.payment(total).unwrap(),
            &open.secret,
        ))
    };
    next().unwrap();
    next().unwrap();
    let refused = next().unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(
        refused.message().contains("await confirmation"),
        "{refused:?}"
    );
    // The deposit confirms: the same payment is taken.
    bitcoind.mine(1).unwrap();
    next().unwrap();
    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let (held, anomalies, banned): (i64, i64, i64) = db
        .query_row(
            "SELECT (SELECT COUNT(*) FROM payments), (SELECT COUNT(*) FROM anomalies),
                    (SELECT COUNT(*) FROM cables WHERE banned_reason IS NOT NULL)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (held, anomalies, banned),
        (3, 0, 0),
        "{}",
        socket.log_text()
    );
}
