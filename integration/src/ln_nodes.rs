//! Bare Lightning nodes (a hub, or a hand-made cable or socket) and their funding.

use std::fs;
use std::path::Path;
use std::time::Duration;

use bitcoin::{Address, Amount, Network};
use regtest::Regtest;
use wallet::keys::NodeKeys;

use crate::wait_until;

/// Start a bare Lightning node (a hub, or a hand-made cable or socket) on its own seed under
/// `dir`, against `bitcoind`, with `settings`.
pub fn ln_node(
    bitcoind: &Regtest,
    dir: &Path,
    settings: &ln::LnSettings,
) -> std::sync::Arc<ln::ldk_node::Node> {
    fs::create_dir_all(dir).expect("the node's dir");
    let keys = NodeKeys::load_or_create(dir, Network::Regtest).expect("the node's seed");
    let chain = wallet::chain::ChainConfig {
        rpc_url: bitcoind.rpc_url(),
        cookie_file: bitcoind.cookie_file().to_owned(),
    };
    ln::start_node(dir, &keys, &chain, settings).expect("the Lightning node starts")
}

/// Fund the on-chain wallet of a Lightning node with `amount` (confirmed) and wait until it is
/// spendable.
pub fn fund_ln_node(bitcoind: &Regtest, node: &ln::ldk_node::Node, amount: Amount) {
    let address = node.onchain_payment().new_address().expect("an address");
    let address = Address::from_script(&address.script_pubkey(), Network::Regtest)
        .expect("a regtest address");
    bitcoind.fund(&address, amount).expect("the faucet pays");
    wait_until("the Lightning deposit", Duration::from_secs(30), || {
        node.sync_wallets().is_ok()
            && node.list_balances().spendable_onchain_balance_sats >= amount.to_sat()
    });
}
