//! The node wallet against a real regtest bitcoind: funded, synced, paying exact amounts that
//! bitcoind accepts, spending its own unconfirmed change.

use bitcoin::hashes::Hash;
use bitcoin::{Amount, FeeRate, Network, ScriptBuf};
use regtest::Regtest;
use wallet::chain::{Chain, ChainConfig};
use wallet::keys::NodeKeys;
use wallet::onchain::NodeWallet;
use wallet::WalletError;

fn chain_of(node: &Regtest) -> Chain {
    let config = ChainConfig {
        rpc_url: node.rpc_url(),
        cookie_file: node.cookie_file().to_owned(),
    };
    Chain::connect(&config, Network::Regtest).unwrap()
}

#[test]
fn funded_wallet_pays_exact_amounts_twice() {
    let node = Regtest::start().unwrap();
    let chain = chain_of(&node);
    let dir = tempfile::tempdir().unwrap();
    let keys = NodeKeys::load_or_create(dir.path(), Network::Regtest).unwrap();
    let mut wallet = NodeWallet::open(dir.path(), &keys).unwrap();
    let address = wallet.receive_address(0).unwrap();
    node.fund(&address, Amount::from_sat(100_000)).unwrap();
    wallet.sync(&chain).unwrap();
    assert_eq!(wallet.balance().confirmed, Amount::from_sat(100_000));

    let payee = ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([7; 20]));
    let fee_rate = FeeRate::from_sat_per_vb(2).unwrap();
    for _ in 0..2 {
        let payment = wallet
            .pay(
                &payee,
                Amount::from_sat(1_000),
                fee_rate,
                Amount::from_sat(2_000),
            )
            .unwrap();
        let verdict = chain.test_mempool_accept(&payment.tx).unwrap();
        assert!(verdict.allowed, "{}", verdict.reject_reason);
        assert_eq!(verdict.fee, payment.fee);
        let txid = chain.broadcast(&payment.tx).unwrap();
        assert!(chain.in_mempool(&txid).unwrap());
        wallet.record_sent(&payment.tx).unwrap();
    }
    node.mine(1).unwrap();
    wallet.sync(&chain).unwrap();
    let balance = wallet.balance();
    assert!(balance.confirmed < Amount::from_sat(98_000));
    assert!(balance.confirmed > Amount::from_sat(97_000));

    // Reopened from disk, the wallet knows the same coins.
    drop(wallet);
    let reopened = NodeWallet::open(dir.path(), &keys).unwrap();
    assert_eq!(reopened.balance(), balance);

    // Too little money and too low a fee cap are refused before anything is signed.
    let mut wallet = reopened;
    assert!(matches!(
        wallet.pay(
            &payee,
            Amount::from_sat(1_000_000),
            fee_rate,
            Amount::from_sat(2_000)
        ),
        Err(WalletError::CannotPay(_))
    ));
    assert!(matches!(
        wallet.pay(
            &payee,
            Amount::from_sat(1_000),
            fee_rate,
            Amount::from_sat(10)
        ),
        Err(WalletError::CannotPay(_))
    ));
}

#[test]
fn a_node_refuses_bitcoind_of_another_network() {
    let node = Regtest::start().unwrap();
    let config = ChainConfig {
        rpc_url: node.rpc_url(),
        cookie_file: node.cookie_file().to_owned(),
    };
    assert!(matches!(
        Chain::connect(&config, Network::Signet),
        Err(WalletError::WrongChain { .. })
    ));
}

#[test]
fn an_input_set_signs_rising_values_over_the_same_inputs_and_fee() {
    let node = Regtest::start().unwrap();
    let chain = chain_of(&node);
    let dir = tempfile::tempdir().unwrap();
    let keys = NodeKeys::load_or_create(dir.path(), Network::Regtest).unwrap();
    let mut wallet = NodeWallet::open(dir.path(), &keys).unwrap();
    node.fund(
        &wallet.receive_address(0).unwrap(),
        Amount::from_sat(30_000),
    )
    .unwrap();
    node.fund(
        &wallet.receive_address(1).unwrap(),
        Amount::from_sat(30_000),
    )
    .unwrap();
    wallet.sync(&chain).unwrap();

    let payee = ScriptBuf::new_p2wpkh(&bitcoin::WPubkeyHash::from_byte_array([7; 20]));
    let rate = FeeRate::from_sat_per_vb(2).unwrap();
    let (inputs, fee) = wallet
        .plan_input_set(
            &payee,
            Amount::from_sat(40_000),
            rate,
            Amount::from_sat(5_000),
        )
        .unwrap();
    assert_eq!(inputs.len(), 2, "40 000 sat needs both coins");
    let mut last = None;
    for k in 1..=5u64 {
        let payment = wallet
            .pay_from(&inputs, &payee, Amount::from_sat(k * 8_000), fee)
            .unwrap();
        assert_eq!(payment.fee, fee);
        let mut spent: Vec<_> = payment.tx.input.iter().map(|i| i.previous_output).collect();
        let mut planned = inputs.clone();
        spent.sort();
        planned.sort();
        assert_eq!(spent, planned);
        let verdict = chain.test_mempool_accept(&payment.tx).unwrap();
        assert!(verdict.allowed, "{}", verdict.reject_reason);
        last = Some(payment.tx);
    }
    chain.broadcast(&last.unwrap()).unwrap();
}
