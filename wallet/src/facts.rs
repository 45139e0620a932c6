//! What the chain says of a transaction, typed (design.md "Blame needs proof"). A node blames a
//! device for a payment only on a fact: the payment confirmed, in the mempool, or replaced by a
//! *named* transaction. An RPC error, a timeout or a missing `-txindex` is no fact: it is an
//! [`Answer::NoAnswer`] or [`Answer::Refused`], and nothing may be concluded from it. Absence
//! proves nothing either: a transaction gone from the mempool with no spender of its inputs was
//! evicted (or its parent was), and is sent again.
//!
//! None of this needs `-txindex`: a transaction's confirmation is read from its outputs
//! (`gettxout` counts confirmations) or found in the recent blocks, a spender in the mempool
//! with `gettxspendingprevout` (Bitcoin Core 25+) or in the recent blocks.

use bitcoin::{OutPoint, Transaction, Txid};
use serde_json::{json, Value};

pub use crate::chain::RPC_NOT_FOUND;
use crate::chain::{Chain, ScanKey, ScanMemo, SCANS_REMEMBERED};
use crate::WalletError;

/// How many blocks below the depth it needs a node looks for a transaction or the spender of
/// an output when bitcoind has no `-txindex` (a day of blocks): a node stopped longer than that
/// may find a payment neither confirmed nor replaced, and blames nobody.
pub const SEARCH_DEPTH_BLOCKS: u32 = 144;

/// How many outputs of a transaction [`Chain::confirmation`] asks `gettxout` about before it
/// looks in the recent blocks: a transaction with many outputs costs no more calls.
const OUTPUTS_ASKED: usize = 4;

/// bitcoind's answer to a question about the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// bitcoind answered with the thing asked for.
    Found(T),
    /// bitcoind answered that there is no such thing (RPC error -5, or an empty result).
    NotFound,
    /// bitcoind did not answer (unreachable, a broken connection, its work queue full, an
    /// answer that does not decode): nothing is known; ask again later.
    NoAnswer(String),
    /// bitcoind answered with another error than "not found": nothing is known either.
    Refused(String),
}

impl<T> Answer<T> {
    /// The answer of a call that ended in `error`: not found for RPC error -5, else no fact.
    pub fn of_error(error: WalletError) -> Self {
        match error {
            WalletError::Rpc {
                code: Some(RPC_NOT_FOUND),
                ..
            } => Answer::NotFound,
            WalletError::Unreachable { .. } => Answer::NoAnswer(error.to_string()),
            _ => Answer::Refused(error.to_string()),
        }
    }

    /// Whether this is a fact (found or not found), not an error.
    pub fn is_fact(&self) -> bool {
        matches!(self, Answer::Found(_) | Answer::NotFound)
    }
}

/// Who spent an outpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spender {
    /// Nobody yet: the output is in the UTXO set (the mempool's view).
    Unspent,
    /// The named transaction, in the mempool (`height` none) or in a block of the best chain
    /// at `height`.
    Tx {
        /// The spender's txid.
        txid: Txid,
        /// The height of its block, when confirmed.
        height: Option<u32>,
    },
}

/// An unspent output as bitcoind sees it (mempool included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Utxo {
    /// Its value.
    pub value: bitcoin::Amount,
    /// Confirmations of the transaction that made it: 0 while in the mempool.
    pub confirmations: u32,
}

/// What became of a transaction a node sent or watches: the chain watch's one reading of the
/// chain (design.md "Blame needs proof"). Only [`Fate::Replaced`] blames anyone, and it names
/// the replacing transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// In a block of the best chain at `height`, `depth` blocks deep (1: in the tip).
    Confirmed {
        /// Its block's height.
        height: u32,
        /// Confirmations.
        depth: u32,
    },
    /// In bitcoind's mempool.
    InMempool,
    /// An input of it was spent by `by`, a transaction that is not it: it will never confirm.
    Replaced {
        /// The input spent elsewhere.
        input: OutPoint,
        /// The transaction that spent it.
        by: Txid,
    },
    /// Neither confirmed, in the mempool, nor replaced: evicted, never relayed, or an input's
    /// transaction is gone (an evicted parent). Send it again; nobody is to blame.
    Missing,
}

impl Chain {
    /// Whether `txid` is in bitcoind's mempool: `false` only when bitcoind says it is not
    /// (RPC error -5). Errors: any other error, or no answer.
    pub fn in_mempool(&self, txid: &Txid) -> Result<bool, WalletError> {
        match self.mempool_entry(txid) {
            Answer::Found(()) => Ok(true),
            Answer::NotFound => Ok(false),
            Answer::NoAnswer(message) => Err(WalletError::Unreachable {
                method: "getmempoolentry".into(),
                message,
            }),
            Answer::Refused(message) => Err(WalletError::Rpc {
                method: "getmempoolentry".into(),
                code: None,
                message,
            }),
        }
    }

    /// What became of `tx` ([`Fate`]), looking `search_depth` blocks back for it or a spender
    /// of its inputs when bitcoind has no `-txindex`. `NoAnswer`/`Refused` when any call on the
    /// way was not answered with a fact: then nothing is concluded.
    pub fn fate(&self, tx: &Transaction, search_depth: u32) -> Answer<Fate> {
        let txid = tx.compute_txid();
        let confirmed = |height: u32| match self.height() {
            Ok(tip) => Answer::Found(Fate::Confirmed {
                height,
                depth: tip.saturating_sub(height) + 1,
            }),
            Err(e) => Answer::of_error(e),
        };
        match self.confirmation_from_outputs(tx) {
            Answer::Found(height) => return confirmed(height),
            Answer::NotFound => {}
            Answer::NoAnswer(e) => return Answer::NoAnswer(e),
            Answer::Refused(e) => return Answer::Refused(e),
        }
        match self.mempool_entry(&txid) {
            Answer::Found(()) => return Answer::Found(Fate::InMempool),
            Answer::NotFound => {}
            Answer::NoAnswer(e) => return Answer::NoAnswer(e),
            Answer::Refused(e) => return Answer::Refused(e),
        }
        let inputs: Vec<OutPoint> = tx.input.iter().map(|i| i.previous_output).collect();
        match self.mempool_spenders(&inputs) {
            Answer::Found(spenders) => {
                if let Some((input, by)) = spenders.into_iter().find(|(_, by)| *by != txid) {
                    return Answer::Found(Fate::Replaced { input, by });
                }
            }
            Answer::NotFound => {}
            Answer::NoAnswer(e) => return Answer::NoAnswer(e),
            Answer::Refused(e) => return Answer::Refused(e),
        }
        // One pass over the recent blocks for the transaction or a spender of any input.
        let found =
            self.find_in_recent_blocks(ScanKey::Fate(txid, search_depth), search_depth, |t| {
                t.compute_txid() == txid
                    || t.input.iter().any(|i| inputs.contains(&i.previous_output))
            });
        match found {
            Answer::Found((block_tx, height)) if block_tx.compute_txid() == txid => {
                confirmed(height)
            }
            Answer::Found((by, _)) => match by
                .input
                .iter()
                .map(|i| i.previous_output)
                .find(|o| inputs.contains(o))
            {
                Some(input) => Answer::Found(Fate::Replaced {
                    input,
                    by: by.compute_txid(),
                }),
                None => Answer::Refused(format!(
                    "{} matched, spending none of {txid}",
                    by.compute_txid()
                )),
            },
            Answer::NotFound => Answer::Found(Fate::Missing),
            Answer::NoAnswer(e) => Answer::NoAnswer(e),
            Answer::Refused(e) => Answer::Refused(e),
        }
    }

    /// The unspent output `outpoint` (`gettxout` with the mempool): `NotFound` when it is
    /// spent or its transaction is neither confirmed nor in the mempool ([`Chain::spender`]
    /// tells those apart).
    pub fn utxo(&self, outpoint: OutPoint) -> Answer<Utxo> {
        let out: Value = match self.call(
            "gettxout",
            &[
                json!(outpoint.txid.to_string()),
                json!(outpoint.vout),
                json!(true),
            ],
        ) {
            Ok(out) => out,
            Err(e) => return Answer::of_error(e),
        };
        if out.is_null() {
            return Answer::NotFound;
        }
        match out["value"]
            .as_f64()
            .and_then(|btc| bitcoin::Amount::from_btc(btc).ok())
        {
            Some(value) => Answer::Found(Utxo {
                value,
                confirmations: out["confirmations"].as_u64().unwrap_or(0) as u32,
            }),
            None => Answer::Refused(format!("gettxout {outpoint}: no value in {out}")),
        }
    }

    /// Check at start that bitcoind answers what the chain watch asks: `gettxspendingprevout`
    /// (Bitcoin Core 25 or later) is required; `-txindex` is not (without it, confirmations
    /// are read from outputs and recent blocks). Returns whether the index is there.
    ///
    /// Errors: [`WalletError::Rpc`] naming what is missing, or bitcoind's own error.
    pub fn check_watch_needs(&self) -> Result<bool, WalletError> {
        /// JSON-RPC "Method not found".
        const RPC_METHOD_NOT_FOUND: i32 = -32601;
        match self.call::<Value>("gettxspendingprevout", &[json!([])]) {
            Err(WalletError::Rpc {
                code: Some(RPC_METHOD_NOT_FOUND),
                ..
            }) => {
                return Err(WalletError::Rpc {
                    method: "gettxspendingprevout".into(),
                    code: Some(RPC_METHOD_NOT_FOUND),
                    message: "bitcoind lacks gettxspendingprevout: the chain watch needs Bitcoin \
                              Core 25 or later"
                        .into(),
                })
            }
            Err(e @ WalletError::Unreachable { .. }) => return Err(e),
            // An empty list is refused as a bad parameter: the method is there.
            Ok(_) | Err(_) => {}
        }
        match self.has_txindex() {
            Answer::Found(txindex) => Ok(txindex),
            Answer::NotFound => Ok(false),
            Answer::NoAnswer(message) => Err(WalletError::Unreachable {
                method: "getindexinfo".into(),
                message,
            }),
            Answer::Refused(message) => Err(WalletError::Rpc {
                method: "getindexinfo".into(),
                code: None,
                message,
            }),
        }
    }

    /// Whether bitcoind keeps a transaction index (`getindexinfo`): without one it finds only
    /// mempool transactions by txid, which this module does without.
    pub fn has_txindex(&self) -> Answer<bool> {
        match self.call::<Value>("getindexinfo", &[json!("txindex")]) {
            Ok(info) => Answer::Found(info.get("txindex").is_some()),
            Err(e) => Answer::of_error(e),
        }
    }

    /// Whether `txid` is in bitcoind's mempool (`getmempoolentry`): `Found(())` or
    /// `NotFound`; any other error is no fact.
    pub fn mempool_entry(&self, txid: &Txid) -> Answer<()> {
        match self.call::<Value>("getmempoolentry", &[json!(txid.to_string())]) {
            Ok(_) => Answer::Found(()),
            Err(e) => Answer::of_error(e),
        }
    }

    /// The transactions `tx` spends from that are in bitcoind's mempool (unconfirmed), each
    /// once: what a node must keep to tell, should `tx` go missing, whether a parent was
    /// evicted (send it again) or replaced (by a named transaction). `NotFound` is never
    /// returned: a confirmed or unknown parent is simply not among them.
    pub fn unconfirmed_parents(&self, tx: &Transaction) -> Answer<Vec<Transaction>> {
        let mut txids: Vec<Txid> = tx.input.iter().map(|i| i.previous_output.txid).collect();
        txids.sort();
        txids.dedup();
        let mut parents = Vec::new();
        for txid in txids {
            match self.mempool_entry(&txid) {
                Answer::Found(()) => {}
                Answer::NotFound => continue,
                Answer::NoAnswer(e) => return Answer::NoAnswer(e),
                Answer::Refused(e) => return Answer::Refused(e),
            }
            // In the mempool: getrawtransaction finds it without -txindex.
            let hex: String = match self.call(
                "getrawtransaction",
                &[json!(txid.to_string()), json!(false)],
            ) {
                Ok(hex) => hex,
                // Confirmed or gone since the line above: not a mempool parent now.
                Err(e) => match Answer::<()>::of_error(e) {
                    Answer::NotFound => continue,
                    Answer::NoAnswer(e) => return Answer::NoAnswer(e),
                    Answer::Refused(e) => return Answer::Refused(e),
                    Answer::Found(()) => continue,
                },
            };
            match bitcoin::consensus::encode::deserialize_hex(&hex) {
                Ok(parent) => parents.push(parent),
                Err(e) => return Answer::NoAnswer(format!("getrawtransaction {txid}: {e}")),
            }
        }
        Answer::Found(parents)
    }

    /// The height of the best-chain block that confirmed `tx`, found without `-txindex`: from
    /// an unspent output of it (`gettxout` counts its confirmations), else in the `depth` most
    /// recent blocks. `NotFound`: neither in the UTXO set with a confirmation nor in those
    /// blocks (unconfirmed, or deeper than `depth` with every output spent).
    pub fn confirmation(&self, tx: &Transaction, depth: u32) -> Answer<u32> {
        match self.confirmation_from_outputs(tx) {
            Answer::NotFound => {}
            known => return known,
        }
        let txid = tx.compute_txid();
        match self.find_in_recent_blocks(ScanKey::Tx(txid, depth), depth, |t| {
            t.compute_txid() == txid
        }) {
            Answer::Found((_, height)) => Answer::Found(height),
            Answer::NotFound => Answer::NotFound,
            Answer::NoAnswer(e) => Answer::NoAnswer(e),
            Answer::Refused(e) => Answer::Refused(e),
        }
    }

    /// The confirmation height of `tx` read from an unspent output of it (`gettxout` counts
    /// its confirmations; at most [`OUTPUTS_ASKED`] outputs asked). `NotFound`: in the mempool,
    /// or none of those outputs unspent.
    fn confirmation_from_outputs(&self, tx: &Transaction) -> Answer<u32> {
        let txid = tx.compute_txid();
        for vout in 0..tx.output.len().min(OUTPUTS_ASKED) as u32 {
            let out: Value = match self.call(
                "gettxout",
                &[json!(txid.to_string()), json!(vout), json!(true)],
            ) {
                Ok(out) => out,
                Err(e) => return Answer::of_error(e),
            };
            let Some(confirmations) = out["confirmations"].as_u64() else {
                continue;
            };
            if confirmations == 0 {
                return Answer::NotFound;
            }
            let tip = match self.height() {
                Ok(tip) => tip,
                Err(e) => return Answer::of_error(e),
            };
            return Answer::Found(tip.saturating_add(1).saturating_sub(confirmations as u32));
        }
        Answer::NotFound
    }

    /// The mempool transactions that spend any of `outpoints` (`gettxspendingprevout`, one
    /// call): (outpoint, spender) for each that one spends.
    pub fn mempool_spenders(&self, outpoints: &[OutPoint]) -> Answer<Vec<(OutPoint, Txid)>> {
        if outpoints.is_empty() {
            return Answer::Found(Vec::new());
        }
        let asked: Vec<Value> = outpoints
            .iter()
            .map(|o| json!({ "txid": o.txid.to_string(), "vout": o.vout }))
            .collect();
        let spending: Vec<Value> = match self.call("gettxspendingprevout", &[json!(asked)]) {
            Ok(spending) => spending,
            Err(e) => return Answer::of_error(e),
        };
        Answer::Found(
            outpoints
                .iter()
                .zip(&spending)
                .filter_map(|(outpoint, s)| {
                    let txid = s["spendingtxid"].as_str()?.parse::<Txid>().ok()?;
                    Some((*outpoint, txid))
                })
                .collect(),
        )
    }

    /// Who spent `outpoint`: nobody (`gettxout` finds it), a mempool transaction
    /// (`gettxspendingprevout`), or one in the `depth` most recent blocks. `NotFound`: the
    /// output is neither unspent nor spent by any transaction found: its transaction is not on
    /// this chain or in the mempool (an evicted parent, or spent deeper than `depth`).
    pub fn spender(&self, outpoint: OutPoint, depth: u32) -> Answer<Spender> {
        match self.unspent_value(outpoint) {
            Ok(Some(_)) => return Answer::Found(Spender::Unspent),
            Ok(None) => {}
            Err(e) => return Answer::of_error(e),
        }
        match self.mempool_spenders(&[outpoint]) {
            Answer::Found(spenders) => {
                if let Some((_, txid)) = spenders.first() {
                    return Answer::Found(Spender::Tx {
                        txid: *txid,
                        height: None,
                    });
                }
            }
            Answer::NotFound => {}
            Answer::NoAnswer(e) => return Answer::NoAnswer(e),
            Answer::Refused(e) => return Answer::Refused(e),
        }
        let spends = |tx: &Transaction| tx.input.iter().any(|i| i.previous_output == outpoint);
        match self.find_in_recent_blocks(ScanKey::Spender(outpoint, depth), depth, spends) {
            Answer::Found((tx, height)) => Answer::Found(Spender::Tx {
                txid: tx.compute_txid(),
                height: Some(height),
            }),
            Answer::NotFound => Answer::NotFound,
            Answer::NoAnswer(e) => Answer::NoAnswer(e),
            Answer::Refused(e) => Answer::Refused(e),
        }
    }

    /// The first transaction that `matches`, with its block's height, in the `depth` most
    /// recent blocks of the best chain, newest first (`getblockhash`, `getblock` with
    /// verbosity 0, decoded with rust-bitcoin). Remembered under `key` until the next block
    /// ([`ScanMemo`]).
    fn find_in_recent_blocks(
        &self,
        key: ScanKey,
        depth: u32,
        matches: impl Fn(&Transaction) -> bool,
    ) -> Answer<(Transaction, u32)> {
        let tip_hash: bitcoin::BlockHash = match self.call("getbestblockhash", &[]) {
            Ok(hash) => hash,
            Err(e) => return Answer::of_error(e),
        };
        let memo = |scans: &ScanMemo| {
            (scans.tip == Some(tip_hash))
                .then(|| scans.found.get(&key).cloned())
                .flatten()
        };
        if let Some(known) = memo(&self.scans.lock().unwrap_or_else(|p| p.into_inner())) {
            return known.map_or(Answer::NotFound, Answer::Found);
        }
        let header: Value = match self.call("getblockheader", &[json!(tip_hash)]) {
            Ok(header) => header,
            Err(e) => return Answer::of_error(e),
        };
        let Some(tip) = header["height"].as_u64().map(|h| h as u32) else {
            return Answer::Refused(format!("getblockheader {tip_hash}: no height"));
        };
        let mut found = None;
        let mut hash = tip_hash;
        for height in (tip.saturating_sub(depth.saturating_sub(1))..=tip).rev() {
            let hex = match self.call::<String>("getblock", &[json!(hash), json!(0)]) {
                Ok(hex) => hex,
                Err(e) => return Answer::of_error(e),
            };
            let block: bitcoin::Block = match bitcoin::consensus::encode::deserialize_hex(&hex) {
                Ok(block) => block,
                Err(e) => return Answer::Refused(format!("block {height} does not decode: {e}")),
            };
            if let Some(tx) = block.txdata.into_iter().find(|tx| matches(tx)) {
                found = Some((tx, height));
                break;
            }
            hash = block.header.prev_blockhash;
        }
        let mut scans = self.scans.lock().unwrap_or_else(|p| p.into_inner());
        if scans.tip != Some(tip_hash) || scans.found.len() >= SCANS_REMEMBERED {
            scans.tip = Some(tip_hash);
            scans.found.clear();
        }
        scans.found.insert(key, found.clone());
        found.map_or(Answer::NotFound, Answer::Found)
    }
}
