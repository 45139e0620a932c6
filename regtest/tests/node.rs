//! A real regtest bitcoind through the `regtest` crate: mining, maturity, funding, cleanup.

use bitcoin::key::Secp256k1;
use bitcoin::{Address, Amount, CompressedPublicKey, Network, PrivateKey};
use regtest::faucet::COINBASE_MATURITY;
use regtest::{parse_regtest_address, rpc, Regtest, RegtestError};
use serde_json::{json, Value};

fn fresh_address() -> Address {
    let key = PrivateKey::generate(Network::Regtest);
    let public = CompressedPublicKey::from_private_key(&Secp256k1::new(), &key).unwrap();
    Address::p2wpkh(&public, Network::Regtest)
}

#[test]
fn mines_101_blocks_and_finds_the_matured_coins() {
    let node = Regtest::start().unwrap();
    assert_eq!(node.height().unwrap(), 0);
    let address = fresh_address();
    let hashes = node.mine_to(101, &address).unwrap();
    assert_eq!(hashes.len(), 101);
    assert_eq!(node.height().unwrap(), 101);

    let utxos = node.utxos(&address).unwrap();
    assert_eq!(utxos.len(), 101);
    assert!(utxos
        .iter()
        .all(|u| u.coinbase && u.amount == Amount::from_int_btc(50)));
    let matured: Vec<_> = utxos.iter().filter(|u| u.spendable_after(101)).collect();
    // The coinbase of block 1 has 101 confirmations: spendable in block 102.
    assert!(matured.iter().any(|u| u.height == 1));
    assert!(matured
        .iter()
        .all(|u| 101 + 1 - u.height >= COINBASE_MATURITY));
    assert!(!utxos
        .iter()
        .find(|u| u.height == 101)
        .unwrap()
        .spendable_after(101));

    // bitcoind agrees that the block-1 coinbase is a confirmed coin of 50 BTC.
    let coin = utxos.iter().find(|u| u.height == 1).unwrap();
    let txout: Value = rpc(
        node.client(),
        "gettxout",
        &[
            json!(coin.outpoint.txid.to_string()),
            json!(coin.outpoint.vout),
        ],
    )
    .unwrap();
    assert_eq!(txout["confirmations"], json!(101));
    assert_eq!(txout["coinbase"], json!(true));
}

#[test]
fn fund_pays_exact_amounts_in_confirmed_transactions() {
    let node = Regtest::start().unwrap();
    let address = fresh_address();
    let first = node.fund(&address, Amount::from_sat(12_345_678)).unwrap();
    let second = node.fund(&address, Amount::from_sat(50_000)).unwrap();
    let tip = node.height().unwrap();

    let mut utxos = node.utxos(&address).unwrap();
    utxos.sort_by_key(|u| u.height);
    assert_eq!(utxos.len(), 2);
    assert_eq!(utxos[0].outpoint, first);
    assert_eq!(utxos[0].amount, Amount::from_sat(12_345_678));
    assert_eq!(utxos[1].outpoint, second);
    assert_eq!(utxos[1].amount, Amount::from_sat(50_000));
    assert!(utxos.iter().all(|u| !u.coinbase));
    // Each payment was mined in the block right after it: the second is in the tip.
    assert_eq!(utxos[1].height, tip);
    let mempool: Vec<String> = rpc(node.client(), "getrawmempool", &[]).unwrap();
    assert!(mempool.is_empty());
}

#[test]
fn bad_addresses_and_amounts_are_refused() {
    let node = Regtest::start().unwrap();
    let mainnet = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq";
    match parse_regtest_address(mainnet) {
        Err(RegtestError::BadAddress { reason, .. }) => assert!(reason.contains("regtest")),
        other => panic!("expected a bad address error, got {other:?}"),
    }
    assert!(matches!(
        parse_regtest_address("bcrt1-not-an-address"),
        Err(RegtestError::BadAddress { .. })
    ));
    let address = fresh_address();
    assert!(matches!(
        node.fund(&address, Amount::from_sat(100)),
        Err(RegtestError::BadAmount(_))
    ));
    assert!(node.utxos(&address).unwrap().is_empty());
}

#[test]
fn drop_stops_the_node_and_deletes_its_datadir() {
    let node = Regtest::start().unwrap();
    let datadir = node.datadir();
    let pid = std::fs::read_to_string(datadir.join("regtest").join("bitcoind.pid")).unwrap();
    let process = std::path::PathBuf::from(format!("/proc/{}", pid.trim()));
    assert!(process.exists());
    drop(node);
    assert!(!datadir.exists());
    assert!(!process.exists(), "bitcoind {} still runs", pid.trim());
}
