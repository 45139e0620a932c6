//! A cheating cable: payments crafted by hand against the real `socket-node` binary on a real
//! regtest chain. Each must be refused with its reason, lock the outlet out, never close the
//! relay, and never reach the chain (design.md "Trust"; paper §V, §VII.B).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::hashes::Hash;
use bitcoin::psbt::Psbt;
use bitcoin::{Amount, FeeRate, ScriptBuf, Txid};
use integration::{funded_payer, Payer, SocketProcess, SocketSetup, OUTLET};
use proto::v1::socket_client::SocketClient;
use proto::v1::{self, OutletState};
use regtest::Regtest;
use tonic::transport::Channel;

#[derive(Clone, Copy, Debug)]
enum Cheat {
    PaysLess,
    PaysItself,
    SpendsForeignInput,
    BadSignature,
    GarbagePsbt,
    WrongNetwork,
}

/// A signed payment of `amount` to `to` from `payer`'s wallet.
fn signed(payer: &mut Payer, to: &ScriptBuf, amount: Amount) -> Psbt {
    payer
        .wallet
        .pay(
            to,
            amount,
            FeeRate::from_sat_per_vb(2).unwrap(),
            Amount::from_sat(5_000),
        )
        .unwrap()
        .psbt
}

/// The PSBT a cheating cable sends for `terms`.
fn crafted(
    cheat: Cheat,
    terms: &v1::PowerRequestResponse,
    payer: &mut Payer,
    other: &mut Payer,
) -> Vec<u8> {
    let payout = ScriptBuf::from_bytes(terms.payout_script.clone());
    let amount = Amount::from_sat(terms.amount_msat / 1_000);
    match cheat {
        Cheat::PaysLess => signed(payer, &payout, amount - Amount::from_sat(1)).serialize(),
        Cheat::PaysItself => {
            let own = payer.wallet.receive_address(1).unwrap().script_pubkey();
            signed(payer, &own, amount).serialize()
        }
        Cheat::SpendsForeignInput => {
            // A correct payment whose first input is swapped for another wallet's coin: the
            // signature no longer matches what it spends.
            let mut psbt = signed(payer, &payout, amount);
            let foreign = signed(other, &payout, amount).unsigned_tx.input[0].previous_output;
            psbt.unsigned_tx.input[0].previous_output = foreign;
            psbt.serialize()
        }
        Cheat::BadSignature => {
            let mut psbt = signed(payer, &payout, amount);
            let witness = psbt.inputs[0].final_script_witness.as_mut().unwrap();
            let mut items: Vec<Vec<u8>> = witness.iter().map(<[u8]>::to_vec).collect();
            items[0][10] ^= 0x01;
            *witness = bitcoin::Witness::from_slice(&items);
            psbt.serialize()
        }
        Cheat::GarbagePsbt => b"psbt\xff but not really".to_vec(),
        Cheat::WrongNetwork => {
            // Coins of another chain: the inputs do not exist on this regtest chain.
            let mut psbt = signed(payer, &payout, amount);
            psbt.unsigned_tx.input[0].previous_output.txid = Txid::from_byte_array([0x42; 32]);
            psbt.serialize()
        }
    }
}

async fn wait_for_standby(client: &mut SocketClient<Channel>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = client
            .get_status(v1::GetStatusRequest {
                outlet_id: OUTLET.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if status.state == OutletState::Standby as i32 && status.session_hash.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "socket never back to Standby: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_socket_refuses_a_cheating_cable_and_locks_out() {
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
    let mut payer = funded_payer(&bitcoind, 1, 50_000);
    let mut other = funded_payer(&bitcoind, 1, 50_000);
    let runtime = tokio::runtime::Runtime::new().unwrap();

    for (cheat, reason) in [
        (Cheat::PaysLess, "to the payout script, not exactly"),
        (Cheat::PaysItself, "in 0 output(s) to the payout script"),
        (
            Cheat::SpendsForeignInput,
            "bitcoind refuses the transaction",
        ),
        (Cheat::BadSignature, "bitcoind refuses the transaction"),
        (Cheat::GarbagePsbt, "bad PSBT"),
        (Cheat::WrongNetwork, "missing-inputs"),
    ] {
        runtime.block_on(async {
            let mut client = SocketClient::connect(socket.endpoint.clone())
                .await
                .unwrap();
            wait_for_standby(&mut client).await;

            // Plug in, and watch the relay for the whole attempt.
            let mut stream = client
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
            let relay_closed = Arc::new(AtomicBool::new(false));
            let saw_lockout = Arc::new(AtomicBool::new(false));
            let watcher = {
                let (relay_closed, saw_lockout) =
                    (Arc::clone(&relay_closed), Arc::clone(&saw_lockout));
                tokio::spawn(async move {
                    while let Ok(Some(message)) = stream.message().await {
                        if let Some(v1::watch_status_response::Event::Status(s)) = message.event {
                            relay_closed.fetch_or(s.relay_closed, Ordering::SeqCst);
                            if s.state == OutletState::Lockout as i32 {
                                saw_lockout.store(true, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                })
            };
            let terms = client
                .power_request(integration::cable_signer().sign(
                    &to,
                    v1::PowerRequestRequest {
                        outlet_id: OUTLET.into(),
                        scheme: v1::Scheme::Onchain as i32,
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
            let psbt = crafted(cheat, &terms, &mut payer, &mut other);
            let refused = client
                .pay_transaction(integration::cable_signer().sign(
                    &to,
                    v1::PayTransactionRequest {
                        session_id: terms.session_id.clone(),
                        payment_id: terms.payment_id,
                        psbt,
                        auth: None,
                    },
                ))
                .await
                .expect_err("the socket must refuse");
            assert!(
                refused.message().contains(reason),
                "{cheat:?}: {}",
                refused.message()
            );
            if let Cheat::WrongNetwork = cheat {
                // Coins bitcoind does not know prove nothing (an evicted parent looks the
                // same): refused, nobody blamed (design.md "Blame needs proof").
                assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
                let status = client
                    .get_status(v1::GetStatusRequest {
                        outlet_id: OUTLET.into(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_ne!(status.state, OutletState::Lockout as i32, "{status:?}");
                assert!(!saw_lockout.load(Ordering::SeqCst));
                return;
            }
            assert_eq!(
                refused.code(),
                tonic::Code::PermissionDenied,
                "{cheat:?}: {refused:?}"
            );

            let status = client
                .get_status(v1::GetStatusRequest {
                    outlet_id: OUTLET.into(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(status.state, OutletState::Lockout as i32, "{cheat:?}");
            assert!(
                status.reason.contains(reason),
                "{cheat:?}: {}",
                status.reason
            );
            assert!(!status.relay_closed, "{cheat:?}");
            tokio::time::timeout(Duration::from_secs(5), watcher)
                .await
                .unwrap()
                .unwrap();
            assert!(saw_lockout.load(Ordering::SeqCst), "{cheat:?}");
            assert!(
                !relay_closed.load(Ordering::SeqCst),
                "{cheat:?}: the relay closed"
            );
        });
        let mempool: Vec<String> = regtest::rpc(bitcoind.client(), "getrawmempool", &[]).unwrap();
        assert!(
            mempool.is_empty(),
            "{cheat:?}: a cheat reached the chain: {mempool:?}"
        );
    }

    // The socket credited nothing and stored no payment for any of it.
    let store = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let payments: i64 = store
        .query_row("SELECT COUNT(*) FROM payments", [], |r| r.get(0))
        .unwrap();
    assert_eq!(payments, 0);
    let refused: i64 = store
        .query_row(
            "SELECT COUNT(*) FROM anomalies WHERE rule = 'payment-refused' AND action = 'halt'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(refused, 5, "the five cheats, not the unknown coin");
    drop(payer.chain);
}
