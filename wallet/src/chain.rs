//! The bitcoind RPC calls a node relies on. Results are read as JSON rather than through typed
//! structs so that newer Bitcoin Core versions (31.x here) with extra or renamed fields still work.

use std::path::PathBuf;

use bdk_bitcoind_rpc::bitcoincore_rpc::{Auth, Client, RpcApi};
use bitcoin::consensus::encode;
use bitcoin::{Amount, Network, OutPoint, Transaction, Txid};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::WalletError;

/// Where a node reaches bitcoind, as written in its TOML config (`[chain]`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// RPC endpoint, e.g. `http://127.0.0.1:18443`.
    pub rpc_url: String,
    /// bitcoind's `.cookie` file for RPC auth.
    pub cookie_file: PathBuf,
}

/// bitcoind's verdict on a transaction (`testmempoolaccept`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MempoolVerdict {
    /// Whether bitcoind would accept it into its mempool.
    pub allowed: bool,
    /// Why not, when not (`reject-reason`, with details when given).
    pub reject_reason: String,
    /// Virtual size in vbytes, when allowed.
    pub vsize: u64,
    /// Fee, computed by bitcoind from the chain's own values of the inputs, when allowed.
    pub fee: Amount,
}

/// How an RPC call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpcOutcome {
    /// bitcoind answered with a result.
    Ok,
    /// bitcoind answered with an error (an unknown txid, a transaction it refuses).
    Refused,
    /// No answer: bitcoind unreachable, a broken connection, an answer that does not decode.
    Failed,
}

/// Told of every RPC call a [`Chain`] makes: its method, how long it took, how it ended (for
/// metrics).
pub type RpcObserver = Box<dyn Fn(&str, std::time::Duration, RpcOutcome) + Send + Sync>;

/// An RPC connection to bitcoind for one network.
pub struct Chain {
    /// Rebuilt when bitcoind, restarted, wrote a new cookie ([`Chain::call`]).
    client: std::sync::RwLock<Client>,
    config: ChainConfig,
    /// The cookie the client authenticates with.
    cookie: std::sync::Mutex<Option<String>>,
    network: Network,
    observer: std::sync::OnceLock<RpcObserver>,
    /// Scans of the recent blocks at the current tip ([`crate::facts`]).
    pub(crate) scans: std::sync::Mutex<ScanMemo>,
}

fn rpc_error(method: &str, e: impl std::fmt::Display) -> WalletError {
    WalletError::Rpc {
        method: method.to_owned(),
        code: None,
        message: e.to_string(),
    }
}

impl Chain {
    /// Connect and check that bitcoind runs `network`. Errors: [`WalletError::Unreachable`]
    /// when it does not answer, [`WalletError::Rpc`] when it refuses,
    /// [`WalletError::WrongChain`] when it runs another network.
    pub fn connect(config: &ChainConfig, network: Network) -> Result<Self, WalletError> {
        let cookie = std::fs::read_to_string(&config.cookie_file).ok();
        let client = Client::new(
            &config.rpc_url,
            Auth::CookieFile(config.cookie_file.clone()),
        )
        .map_err(|e| rpc_error("connect", e))?;
        let chain = Chain {
            client: std::sync::RwLock::new(client),
            config: config.clone(),
            cookie: std::sync::Mutex::new(cookie),
            network,
            observer: std::sync::OnceLock::new(),
            scans: std::sync::Mutex::default(),
        };
        let info: Value = chain.call("getblockchaininfo", &[])?;
        let got = info["chain"].as_str().unwrap_or_default().to_owned();
        let expected = match network {
            Network::Bitcoin => "main",
            Network::Testnet => "test",
            Network::Testnet4 => "testnet4",
            Network::Signet => "signet",
            _ => "regtest",
        };
        if got != expected {
            return Err(WalletError::WrongChain {
                expected: expected.into(),
                got,
            });
        }
        Ok(chain)
    }

    /// The network.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The RPC client, for BDK's block emitter (held while the guard lives).
    pub fn client(&self) -> std::sync::RwLockReadGuard<'_, Client> {
        self.client.read().unwrap_or_else(|e| e.into_inner())
    }

    /// bitcoind restarted writes a new `.cookie`: a client still sending the old one is
    /// refused (HTTP 401). Rebuild the client when the file changed; whether it had. [`Chain::call`]
    /// does this itself; callers of [`Chain::client`] do it after a failure.
    pub fn reload_cookie(&self) -> bool {
        let Ok(now) = std::fs::read_to_string(&self.config.cookie_file) else {
            return false;
        };
        let mut cookie = self.cookie.lock().unwrap_or_else(|e| e.into_inner());
        if cookie.as_deref() == Some(now.as_str()) {
            return false;
        }
        let Ok(client) = Client::new(
            &self.config.rpc_url,
            Auth::CookieFile(self.config.cookie_file.clone()),
        ) else {
            return false;
        };
        *self.client.write().unwrap_or_else(|e| e.into_inner()) = client;
        *cookie = Some(now);
        true
    }

    /// Tell `observer` of every later call (once: a second observer is ignored).
    pub fn observe(&self, observer: RpcObserver) {
        let _ = self.observer.set(observer);
    }

    /// Call `method` and decode its result. A call bitcoind does not answer is made once more
    /// when its cookie file changed meanwhile (bitcoind restarted). Errors:
    /// [`WalletError::Rpc`] when bitcoind answers with an error, [`WalletError::Unreachable`]
    /// when it does not answer.
    pub fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        params: &[Value],
    ) -> Result<T, WalletError> {
        use bdk_bitcoind_rpc::bitcoincore_rpc::{jsonrpc, Error};
        let started = std::time::Instant::now();
        let mut result = self.client().call(method, params);
        if matches!(&result, Err(e) if !matches!(e, Error::JsonRpc(jsonrpc::Error::Rpc(_))))
            && self.reload_cookie()
        {
            result = self.client().call(method, params);
        }
        let outcome = match &result {
            Ok(_) => RpcOutcome::Ok,
            Err(Error::JsonRpc(jsonrpc::Error::Rpc(_))) => RpcOutcome::Refused,
            Err(_) => RpcOutcome::Failed,
        };
        if let Some(observer) = self.observer.get() {
            observer(method, started.elapsed(), outcome);
        }
        result.map_err(|e| match &e {
            Error::JsonRpc(jsonrpc::Error::Rpc(rpc)) => WalletError::Rpc {
                method: method.to_owned(),
                code: Some(rpc.code),
                message: rpc.message.clone(),
            },
            _ => WalletError::Unreachable {
                method: method.to_owned(),
                message: e.to_string(),
            },
        })
    }

    /// Height of the chain tip.
    pub fn height(&self) -> Result<u32, WalletError> {
        self.call("getblockcount", &[])
    }

    /// Would bitcoind accept `tx` into its mempool (`testmempoolaccept`)?
    pub fn test_mempool_accept(&self, tx: &Transaction) -> Result<MempoolVerdict, WalletError> {
        let results: Vec<Value> =
            self.call("testmempoolaccept", &[json!([encode::serialize_hex(tx)])])?;
        let result = results
            .first()
            .ok_or_else(|| rpc_error("testmempoolaccept", "empty result"))?;
        let allowed = result["allowed"].as_bool().unwrap_or(false);
        let mut reject_reason = result["reject-reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if let Some(details) = result["reject-details"].as_str() {
            reject_reason = format!("{reject_reason} ({details})");
        }
        let fee = result["fees"]["base"]
            .as_f64()
            .and_then(|btc| Amount::from_btc(btc).ok())
            .unwrap_or(Amount::ZERO);
        Ok(MempoolVerdict {
            allowed,
            reject_reason,
            vsize: result["vsize"].as_u64().unwrap_or(0),
            fee,
        })
    }

    /// Broadcast `tx` (`sendrawtransaction`). A transaction bitcoind already has counts as sent.
    pub fn broadcast(&self, tx: &Transaction) -> Result<Txid, WalletError> {
        match self.call::<Txid>("sendrawtransaction", &[json!(encode::serialize_hex(tx))]) {
            Ok(txid) => Ok(txid),
            Err(e) if e.to_string().contains("already") => Ok(tx.compute_txid()),
            Err(e) => Err(e),
        }
    }

    /// The value of an unspent output, looking in the mempool too (`gettxout`); `None` when it
    /// is spent or never existed on this chain.
    pub fn unspent_value(&self, outpoint: OutPoint) -> Result<Option<Amount>, WalletError> {
        let out: Value = self.call(
            "gettxout",
            &[
                json!(outpoint.txid.to_string()),
                json!(outpoint.vout),
                json!(true),
            ],
        )?;
        if out.is_null() {
            return Ok(None);
        }
        Ok(out["value"]
            .as_f64()
            .and_then(|btc| Amount::from_btc(btc).ok()))
    }

    /// Height of the block that confirmed `txid`, `None` while unconfirmed or unknown to
    /// bitcoind (RPC error -5: without `-txindex` that includes every confirmed transaction
    /// that is not its wallet's, so `None` proves nothing; [`Chain::confirmation`] does without
    /// the index), or in a block no longer in the best chain (reorganized away). Errors: any
    /// other RPC error, or no answer: never read as "not confirmed".
    pub fn confirmation_height(&self, txid: &Txid) -> Result<Option<u32>, WalletError> {
        let tx: Value = match self.call("getrawtransaction", &[json!(txid.to_string()), json!(1)]) {
            Ok(tx) => tx,
            Err(WalletError::Rpc {
                code: Some(RPC_NOT_FOUND),
                ..
            }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(block) = tx["blockhash"].as_str() else {
            return Ok(None);
        };
        let header: Value = self.call("getblockheader", &[json!(block)])?;
        // A block reorganized away still names it (-txindex keeps the entry): -1 confirmations.
        if header["confirmations"].as_i64().unwrap_or(-1) < 1 {
            return Ok(None);
        }
        Ok(header["height"].as_u64().map(|h| h as u32))
    }
}

/// Bitcoin Core's `RPC_INVALID_ADDRESS_OR_KEY`: "No such mempool or blockchain transaction",
/// "Transaction not in mempool", "Block not found".
pub const RPC_NOT_FOUND: i32 = -5;

/// What a scan of the recent blocks looked for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum ScanKey {
    /// The transaction itself.
    Tx(Txid, u32),
    /// A spender of the outpoint.
    Spender(OutPoint, u32),
    /// The transaction, or a spender of any of its inputs (`Chain::fate`).
    Fate(Txid, u32),
}

/// The scans of the recent blocks made at one tip, with what each found (the transaction and
/// its block's height, or nothing): asked again before the next block, the answer is the same,
/// so a chain watch that asks every second scans each transaction once per block, however many
/// inputs it has.
#[derive(Debug, Default)]
pub struct ScanMemo {
    pub(crate) tip: Option<bitcoin::BlockHash>,
    pub(crate) found: std::collections::HashMap<ScanKey, Option<(Transaction, u32)>>,
}

/// At most this many scans are remembered at one tip (then the memo starts again).
pub(crate) const SCANS_REMEMBERED: usize = 10_000;
