//! The faucet of a regtest node: a key that receives the coinbase of every block we mine, and
//! pays exact amounts out of matured coinbases.
//!
//! bitcoind here has no wallet (built with `-DENABLE_WALLET=OFF`). The faucet builds the unsigned
//! transaction with rust-bitcoin and has bitcoind sign it with `signrawtransactionwithkey`, which
//! needs no wallet, so no signing code of ours is involved.

use std::str::FromStr;

use bitcoin::absolute::LockTime;
use bitcoin::address::NetworkUnchecked;
use bitcoin::consensus::encode;
use bitcoin::key::Secp256k1;
use bitcoin::transaction::Version;
use bitcoin::{
    Address, Amount, BlockHash, CompressedPublicKey, Network, OutPoint, PrivateKey, ScriptBuf,
    Sequence, Transaction, TxIn, TxOut, Txid, Witness,
};
use corepc_node::Client;
use serde_json::{json, Value};

use crate::RegtestError;

/// Blocks after which a coinbase output may be spent (consensus rule COINBASE_MATURITY).
pub const COINBASE_MATURITY: u32 = 100;
/// Fee of a faucet payment: a flat 1000 sat plus 200 sat per input, well above the minimum
/// relay fee rate for a P2WPKH spend (about 68 vB per input and 31 vB per output).
const BASE_FEE: Amount = Amount::from_sat(1_000);
const FEE_PER_INPUT: Amount = Amount::from_sat(200);
/// Change below this is left to the fee rather than making a dust output (P2WPKH dust: 294 sat).
const DUST_LIMIT: Amount = Amount::from_sat(546);

/// A regtest key that collects block rewards and pays them out.
#[derive(Debug, Clone)]
pub struct Faucet {
    key: PrivateKey,
    address: Address,
}

/// An unspent output found by `scantxoutset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Utxo {
    /// The output.
    pub outpoint: OutPoint,
    /// Its value.
    pub amount: Amount,
    /// Height of the block that confirmed it.
    pub height: u32,
    /// Whether it is a coinbase output (spendable only after [`COINBASE_MATURITY`] blocks).
    pub coinbase: bool,
}

impl Utxo {
    /// Whether it can be spent in the block after `tip` (coinbase maturity, consensus rule).
    pub fn spendable_after(&self, tip: u32) -> bool {
        !self.coinbase || tip + 1 - self.height >= COINBASE_MATURITY
    }
}

/// Call an RPC method and decode its result. Errors with [`RegtestError::Rpc`] naming the
/// method and bitcoind's message.
pub fn rpc<T: serde::de::DeserializeOwned>(
    client: &Client,
    method: &str,
    params: &[Value],
) -> Result<T, RegtestError> {
    client
        .call::<T>(method, params)
        .map_err(|e| RegtestError::Rpc {
            method: method.to_owned(),
            message: e.to_string(),
        })
}

/// Parse `address` and check that it is a regtest address. Errors with
/// [`RegtestError::BadAddress`] saying why.
pub fn parse_regtest_address(address: &str) -> Result<Address, RegtestError> {
    let unchecked: Address<NetworkUnchecked> =
        Address::from_str(address).map_err(|e| RegtestError::BadAddress {
            address: address.to_owned(),
            reason: e.to_string(),
        })?;
    unchecked
        .require_network(Network::Regtest)
        .map_err(|_| RegtestError::BadAddress {
            address: address.to_owned(),
            reason: "not a regtest address (regtest addresses start with bcrt1, m, n or 2)".into(),
        })
}

impl Faucet {
    /// A faucet with a fresh random key.
    pub fn generate() -> Self {
        Self::from_key(PrivateKey::generate(Network::Regtest))
    }

    /// The faucet of a known WIF key (as kept by a persistent node). Errors with
    /// [`RegtestError::Node`] for a malformed key or one that is not compressed.
    pub fn from_wif(wif: &str) -> Result<Self, RegtestError> {
        let key = PrivateKey::from_wif(wif)
            .map_err(|e| RegtestError::Node(format!("faucet key: {e}")))?;
        if !key.compressed {
            return Err(RegtestError::Node("faucet key is not compressed".into()));
        }
        Ok(Self::from_key(key))
    }

    fn from_key(key: PrivateKey) -> Self {
        let secp = Secp256k1::signing_only();
        let public = CompressedPublicKey::from_private_key(&secp, &key)
            .expect("generated keys are compressed");
        Faucet {
            key,
            address: Address::p2wpkh(&public, Network::Regtest),
        }
    }

    /// The faucet's key in WIF.
    pub fn wif(&self) -> String {
        self.key.to_wif()
    }

    /// The faucet's P2WPKH address, where its mined blocks pay.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// Mine `blocks` blocks paying their coinbase to `to`; returns their hashes.
    pub fn mine_to(
        &self,
        client: &Client,
        blocks: u32,
        to: &Address,
    ) -> Result<Vec<BlockHash>, RegtestError> {
        let hashes: Vec<String> = rpc(
            client,
            "generatetoaddress",
            &[json!(blocks), json!(to.to_string())],
        )?;
        hashes
            .iter()
            .map(|h| {
                BlockHash::from_str(h).map_err(|e| RegtestError::Rpc {
                    method: "generatetoaddress".into(),
                    message: format!("bad block hash {h}: {e}"),
                })
            })
            .collect()
    }

    /// Pay exactly `amount` to `to` from the faucet's matured coins, mining the blocks it needs
    /// first, then mine one block so the payment is confirmed. Returns the outpoint paying `to`.
    ///
    /// Errors: [`RegtestError::BadAmount`] for zero, dust, or more than 10 000 BTC; RPC errors.
    pub fn fund(
        &self,
        client: &Client,
        to: &Address,
        amount: Amount,
    ) -> Result<OutPoint, RegtestError> {
        Ok(self.fund_many(client, &[(to.clone(), amount)])?[0])
    }

    /// [`Faucet::fund`] for many payees at once: one transaction with an output per payee (in
    /// order), one block. Returns the outpoints, in the payees' order.
    ///
    /// Errors: as [`Faucet::fund`], for any amount or their sum.
    pub fn fund_many(
        &self,
        client: &Client,
        payees: &[(Address, Amount)],
    ) -> Result<Vec<OutPoint>, RegtestError> {
        let mut amount = Amount::ZERO;
        for (_, each) in payees {
            if *each < DUST_LIMIT {
                return Err(RegtestError::BadAmount(format!(
                    "{each} is below the dust limit of {DUST_LIMIT}"
                )));
            }
            amount += *each;
        }
        if amount > Amount::from_btc(10_000.0).expect("constant") {
            return Err(RegtestError::BadAmount(format!(
                "{amount} is more than the faucet pays at once (10000 BTC)"
            )));
        }
        // About 31 vB per P2WPKH output at 1 sat/vB, above the fee of one payee.
        let per_output = Amount::from_sat(31) * payees.len().saturating_sub(1) as u64;
        let (inputs, total) = self.select_coins(client, amount + per_output)?;
        let fee = BASE_FEE + FEE_PER_INPUT * inputs.len() as u64 + per_output;
        let mut outputs: Vec<TxOut> = payees
            .iter()
            .map(|(to, value)| TxOut {
                value: *value,
                script_pubkey: to.script_pubkey(),
            })
            .collect();
        let change = total - amount - fee;
        if change >= DUST_LIMIT {
            outputs.push(TxOut {
                value: change,
                script_pubkey: self.address.script_pubkey(),
            });
        }
        let unsigned = Transaction {
            version: Version::TWO,
            lock_time: LockTime::ZERO,
            input: inputs
                .iter()
                .map(|coin| TxIn {
                    previous_output: coin.outpoint,
                    script_sig: ScriptBuf::new(),
                    sequence: Sequence::ENABLE_RBF_NO_LOCKTIME,
                    witness: Witness::new(),
                })
                .collect(),
            output: outputs,
        };
        let signed: Value = rpc(
            client,
            "signrawtransactionwithkey",
            &[json!(encode::serialize_hex(&unsigned)), json!([self.wif()])],
        )?;
        if signed["complete"] != json!(true) {
            return Err(RegtestError::Rpc {
                method: "signrawtransactionwithkey".into(),
                message: format!("incomplete signature: {}", signed["errors"]),
            });
        }
        let hex = signed["hex"].as_str().unwrap_or_default();
        let txid: String = rpc(client, "sendrawtransaction", &[json!(hex)])?;
        let txid = Txid::from_str(&txid).map_err(|e| RegtestError::Rpc {
            method: "sendrawtransaction".into(),
            message: format!("bad txid {txid}: {e}"),
        })?;
        self.mine_to(client, 1, &self.address)?;
        Ok((0..payees.len() as u32)
            .map(|vout| OutPoint { txid, vout })
            .collect())
    }

    /// Matured faucet coins covering `amount` plus the fee, largest first; mines 101 blocks to
    /// the faucet when it has too little.
    fn select_coins(
        &self,
        client: &Client,
        amount: Amount,
    ) -> Result<(Vec<Utxo>, Amount), RegtestError> {
        for _ in 0..20 {
            let tip: u32 = rpc(client, "getblockcount", &[])?;
            let mut coins: Vec<Utxo> = scan_utxos(client, &self.address)?
                .into_iter()
                .filter(|c| c.spendable_after(tip))
                .collect();
            coins.sort_by_key(|c| std::cmp::Reverse(c.amount));
            let mut chosen = Vec::new();
            let mut total = Amount::ZERO;
            for coin in coins {
                total += coin.amount;
                chosen.push(coin);
                if total >= amount + BASE_FEE + FEE_PER_INPUT * chosen.len() as u64 {
                    return Ok((chosen, total));
                }
            }
            self.mine_to(client, COINBASE_MATURITY + 1, &self.address)?;
        }
        Err(RegtestError::BadAmount(format!(
            "the faucet could not gather {amount}"
        )))
    }
}

/// The unspent outputs paying `address`, from `scantxoutset` (chain state, not mempool).
pub fn scan_utxos(client: &Client, address: &Address) -> Result<Vec<Utxo>, RegtestError> {
    let scan: Value = rpc(
        client,
        "scantxoutset",
        &[json!("start"), json!([format!("addr({address})")])],
    )?;
    let bad = |what: &str| RegtestError::Rpc {
        method: "scantxoutset".into(),
        message: format!("unexpected {what} in {scan}"),
    };
    let mut coins = Vec::new();
    for u in scan["unspents"].as_array().ok_or_else(|| bad("unspents"))? {
        let txid = u["txid"]
            .as_str()
            .and_then(|t| Txid::from_str(t).ok())
            .ok_or_else(|| bad("txid"))?;
        let vout = u["vout"].as_u64().ok_or_else(|| bad("vout"))? as u32;
        let amount = u["amount"]
            .as_f64()
            .and_then(|btc| Amount::from_btc(btc).ok())
            .ok_or_else(|| bad("amount"))?;
        let height = u["height"].as_u64().ok_or_else(|| bad("height"))? as u32;
        coins.push(Utxo {
            outpoint: OutPoint { txid, vout },
            amount,
            height,
            coinbase: u["coinbase"].as_bool().unwrap_or(false),
        });
    }
    Ok(coins)
}
