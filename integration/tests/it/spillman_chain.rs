//! The `spillman` channel's transactions (proto::spillman; seed 003 steps 4–17) against a real
//! regtest bitcoind: a deposit to `wsh(multi(2,cable,socket))`, a refund both sign before the
//! deposit is broadcast, rising payments of which the highest closes the channel, and the
//! refund that bitcoind takes only from its lock height on.

use bitcoin::secp256k1::{rand, Secp256k1, SecretKey};
use bitcoin::{Amount, FeeRate, OutPoint, PublicKey, ScriptBuf, Transaction};
use integration::{funded_payer, Payer};
use proto::spillman::{Channel, Signer};
use regtest::Regtest;

const DEPOSIT_SAT: u64 = 20_000;
const QUOTA_SAT: u64 = 1_000;

fn keypair() -> (SecretKey, PublicKey) {
    let secret = SecretKey::new(&mut rand::thread_rng());
    (
        secret,
        PublicKey::new(secret.public_key(&Secp256k1::signing_only())),
    )
}

/// A deposit from `payer` to a new channel whose refund unlocks at `lock_height`; the deposit
/// transaction is signed, not broadcast.
fn open(payer: &mut Payer, lock_height: u32) -> (Channel, SecretKey, SecretKey, Transaction) {
    let (cable_secret, cable_key) = keypair();
    let (socket_secret, socket_key) = keypair();
    let mut channel = Channel {
        cable_key,
        socket_key,
        deposit: OutPoint::null(),
        deposit_value: Amount::from_sat(DEPOSIT_SAT),
        refund_lock_height: lock_height,
        fee: Amount::from_sat(300),
        cable_script: payer.wallet.receive_address(7).unwrap().script_pubkey(),
        socket_script: ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_raw_hash(
            bitcoin::hashes::Hash::from_byte_array([4; 20]),
        )),
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
    (channel, cable_secret, socket_secret, deposit)
}

#[test]
fn the_highest_payment_closes_the_channel_and_the_refund_waits_for_its_lock_height() {
    let bitcoind = Regtest::start().unwrap();
    let mut payer = funded_payer(&bitcoind, 2, 50_000);
    let height = bitcoind.height().unwrap();

    // Steps 4–11: the refund is signed by both before the deposit goes out.
    let (channel, cable_secret, socket_secret, deposit) = open(&mut payer, height + 20);
    let refund = channel.refund().unwrap();
    channel.check_refund(&refund).unwrap();
    let socket_on_refund = channel.sign(&refund, &socket_secret).unwrap();
    channel
        .verify(&refund, Signer::Socket, &socket_on_refund)
        .unwrap();
    let refund = channel
        .finalize(
            &refund,
            channel.sign(&refund, &cable_secret).unwrap(),
            socket_on_refund,
        )
        .unwrap();
    payer.chain.broadcast(&deposit).unwrap();
    bitcoind.mine(1).unwrap();
    let verdict = payer.chain.test_mempool_accept(&refund).unwrap();
    assert!(!verdict.allowed);
    assert!(
        verdict.reject_reason.contains("non-final"),
        "{}",
        verdict.reject_reason
    );

    // Steps 12–16: five payments, each a quota higher; the socket co-signs the highest.
    let mut highest = None;
    for quota in 1..=5 {
        let total = Amount::from_sat(quota * QUOTA_SAT);
        let tx = channel.payment(total).unwrap();
        let signature = channel.sign(&tx, &cable_secret).unwrap();
        channel.check_payment(&tx, total, &signature).unwrap();
        highest = Some((tx, signature));
    }
    let (tx, cable_signature) = highest.unwrap();
    let close = channel
        .finalize(
            &tx,
            cable_signature,
            channel.sign(&tx, &socket_secret).unwrap(),
        )
        .unwrap();
    let verdict = payer.chain.test_mempool_accept(&close).unwrap();
    assert!(verdict.allowed, "{}", verdict.reject_reason);
    assert_eq!(verdict.fee, channel.fee);
    let txid = payer.chain.broadcast(&close).unwrap();
    bitcoind.mine(1).unwrap();
    assert!(payer.chain.confirmation_height(&txid).unwrap().is_some());
    assert_eq!(
        payer.chain.unspent_value(OutPoint::new(txid, 0)).unwrap(),
        Some(Amount::from_sat(5 * QUOTA_SAT))
    );
    assert_eq!(
        payer.chain.unspent_value(OutPoint::new(txid, 1)).unwrap(),
        Some(Amount::from_sat(DEPOSIT_SAT - 5 * QUOTA_SAT) - channel.fee)
    );
    // The refund is void now: its input is spent.
    assert!(!payer.chain.test_mempool_accept(&refund).unwrap().allowed);

    // A channel the socket never closes: from the lock height on, the refund alone returns
    // the whole deposit less the fee.
    payer.wallet.sync(&payer.chain).unwrap();
    let height = bitcoind.height().unwrap();
    let (channel, cable_secret, socket_secret, deposit) = open(&mut payer, height + 10);
    let unsigned = channel.refund().unwrap();
    let refund = channel
        .finalize(
            &unsigned,
            channel.sign(&unsigned, &cable_secret).unwrap(),
            channel.sign(&unsigned, &socket_secret).unwrap(),
        )
        .unwrap();
    payer.chain.broadcast(&deposit).unwrap();
    bitcoind.mine(9).unwrap();
    assert!(!payer.chain.test_mempool_accept(&refund).unwrap().allowed);
    bitcoind.mine(1).unwrap();
    let txid = payer.chain.broadcast(&refund).unwrap();
    bitcoind.mine(1).unwrap();
    assert_eq!(
        payer.chain.unspent_value(OutPoint::new(txid, 0)).unwrap(),
        Some(Amount::from_sat(DEPOSIT_SAT) - channel.fee)
    );
}
