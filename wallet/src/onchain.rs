//! A node's BDK descriptor wallet, persisted in `<data dir>/wallet.sqlite`, synced from bitcoind
//! with bdk_bitcoind_rpc's block emitter.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use bdk_bitcoind_rpc::Emitter;
use bdk_wallet::rusqlite::Connection;
use bdk_wallet::{Balance, KeychainKind, PersistedWallet, SignOptions, Wallet};
use bitcoin::psbt::Psbt;
use bitcoin::{Address, Amount, FeeRate, OutPoint, ScriptBuf, Transaction};

use crate::chain::Chain;
use crate::keys::NodeKeys;
use crate::WalletError;

/// File name of the wallet's SQLite store inside a node's data dir.
pub const WALLET_FILE: &str = "wallet.sqlite";

/// A node's on-chain wallet.
pub struct NodeWallet {
    wallet: PersistedWallet<Connection>,
    db: Connection,
}

fn wallet_error(e: impl std::fmt::Display) -> WalletError {
    WalletError::Wallet(e.to_string())
}

/// A payment built, checked and signed by [`NodeWallet::pay`].
#[derive(Debug, Clone)]
pub struct SignedPayment {
    /// The finalized PSBT (BIP 174), ready for `PayTransaction`.
    pub psbt: Psbt,
    /// The transaction it carries.
    pub tx: Transaction,
    /// Its fee.
    pub fee: Amount,
}

impl NodeWallet {
    /// Open the wallet of `data_dir`, creating it from `keys` on first start. Errors with
    /// [`WalletError::Wallet`] when the store holds another seed's or network's wallet.
    pub fn open(data_dir: &Path, keys: &NodeKeys) -> Result<Self, WalletError> {
        let path = data_dir.join(WALLET_FILE);
        let mut db = Connection::open(&path)
            .map_err(|e| WalletError::Wallet(format!("{}: {e}", path.display())))?;
        let (external, internal) = keys.descriptors();
        let loaded = Wallet::load()
            .descriptor(KeychainKind::External, Some(external.clone()))
            .descriptor(KeychainKind::Internal, Some(internal.clone()))
            .extract_keys()
            .check_network(keys.network())
            .load_wallet(&mut db)
            .map_err(wallet_error)?;
        let wallet = match loaded {
            Some(wallet) => wallet,
            None => Wallet::create(external, internal)
                .network(keys.network())
                .create_wallet(&mut db)
                .map_err(wallet_error)?,
        };
        Ok(NodeWallet { wallet, db })
    }

    fn persist(&mut self) -> Result<(), WalletError> {
        self.wallet.persist(&mut self.db).map_err(wallet_error)?;
        Ok(())
    }

    /// Catch up with bitcoind's blocks. Persists what it learns.
    ///
    /// The mempool is not read: bdk_bitcoind_rpc 0.20 decodes `getrawmempool` with a type that
    /// needs the `bip125-replaceable` field, which Bitcoin Core 30 and later no longer send.
    /// The wallet learns its own unconfirmed payments from [`NodeWallet::record_sent`] instead;
    /// coins received count once confirmed.
    pub fn sync(&mut self, chain: &Chain) -> Result<(), WalletError> {
        match self.sync_blocks(chain) {
            // bitcoind restarted with a new cookie: once more with it.
            Err(_) if chain.reload_cookie() => self.sync_blocks(chain),
            synced => synced,
        }
    }

    fn sync_blocks(&mut self, chain: &Chain) -> Result<(), WalletError> {
        let checkpoint = self.wallet.latest_checkpoint();
        let start = checkpoint.height();
        let client = chain.client();
        let mut emitter = Emitter::new(
            &*client,
            checkpoint,
            start,
            bdk_bitcoind_rpc::NO_EXPECTED_MEMPOOL_TXIDS,
        );
        while let Some(event) = emitter.next_block().map_err(wallet_error)? {
            self.wallet
                .apply_block_connected_to(&event.block, event.block_height(), event.connected_to())
                .map_err(wallet_error)?;
        }
        self.persist()
    }

    /// Confirmed, pending and immature balances.
    pub fn balance(&self) -> Balance {
        self.wallet.balance()
    }

    /// The receive address at `index` of the external keychain, revealing (and persisting) all
    /// addresses up to it.
    pub fn receive_address(&mut self, index: u32) -> Result<Address, WalletError> {
        let address = self
            .wallet
            .peek_address(KeychainKind::External, index)
            .address;
        let _ = self
            .wallet
            .reveal_addresses_to(KeychainKind::External, index)
            .count();
        self.persist()?;
        Ok(address)
    }

    /// Whether `script` belongs to this wallet.
    pub fn is_mine(&self, script: &ScriptBuf) -> bool {
        self.wallet.is_mine(script.clone())
    }

    /// Build and sign a transaction paying exactly `amount` to `payee` at `fee_rate`, the rest
    /// back to ourselves, then check what was built: one output pays `payee` exactly `amount`,
    /// every other output is ours, the fee is at most `max_fee`. Not recorded: once it is sent,
    /// [`NodeWallet::record_sent`] lets the next payment spend its change.
    ///
    /// Errors: [`WalletError::CannotPay`] for too little money or a fee above `max_fee`.
    pub fn pay(
        &mut self,
        payee: &ScriptBuf,
        amount: Amount,
        fee_rate: FeeRate,
        max_fee: Amount,
    ) -> Result<SignedPayment, WalletError> {
        let psbt = self.confirmed_first(|builder| {
            builder
                .add_recipient(payee.clone(), amount)
                .fee_rate(fee_rate);
        })?;
        self.sign_and_check(psbt, payee, max_fee)
    }

    /// Build a transaction with `build` from confirmed coins only when they suffice, else from
    /// any: a payment whose unconfirmed parent is evicted (a mempool's fee floor rising) would
    /// never confirm, and the payee could only refuse it (design.md "Blame needs proof").
    ///
    /// Errors: [`WalletError::CannotPay`] when no coins suffice.
    fn confirmed_first(
        &mut self,
        build: impl Fn(
            &mut bdk_wallet::TxBuilder<
                '_,
                bdk_wallet::coin_selection::DefaultCoinSelectionAlgorithm,
            >,
        ),
    ) -> Result<Psbt, WalletError> {
        let mut confirmed = self.wallet.build_tx();
        build(&mut confirmed);
        confirmed.exclude_unconfirmed();
        if let Ok(psbt) = confirmed.finish() {
            return Ok(psbt);
        }
        let mut any = self.wallet.build_tx();
        build(&mut any);
        any.finish()
            .map_err(|e| WalletError::CannotPay(e.to_string()))
    }

    /// Build and sign a transaction whose one output besides our change is
    /// `OP_RETURN <data>` (value 0), paying only the fee at `fee_rate`: a commitment on chain
    /// (the socket anchors its audit log's head with it). The caller broadcasts it, then
    /// [`NodeWallet::record_sent`]s it (not before: a transaction bitcoind refused must not
    /// hold the wallet's coins as spent). Errors:
    /// [`WalletError::CannotPay`] for too little money or a fee above `max_fee`.
    pub fn commit_data(
        &mut self,
        data: &bitcoin::script::PushBytes,
        fee_rate: FeeRate,
        max_fee: Amount,
    ) -> Result<SignedPayment, WalletError> {
        let mut builder = self.wallet.build_tx();
        builder.add_data(&data).fee_rate(fee_rate);
        let psbt = builder
            .finish()
            .map_err(|e| WalletError::CannotPay(e.to_string()))?;
        self.sign_and_check(psbt, &ScriptBuf::new_op_return(data), max_fee)
    }

    /// Plan an input set for the single-fee scheme (paper seed 000 §VI): select inputs covering
    /// `max` to `payee` plus the fee at `fee_rate`, as if paying `max`. Returns the inputs and
    /// that fee, which every transaction of the set will pay. Nothing is signed.
    pub fn plan_input_set(
        &mut self,
        payee: &ScriptBuf,
        max: Amount,
        fee_rate: FeeRate,
        max_fee: Amount,
    ) -> Result<(Vec<OutPoint>, Amount), WalletError> {
        let psbt = self.confirmed_first(|builder| {
            builder.add_recipient(payee.clone(), max).fee_rate(fee_rate);
        })?;
        let fee = psbt.fee().map_err(wallet_error)?;
        if fee > max_fee {
            return Err(WalletError::CannotPay(format!(
                "fee {fee} is above the cap of {max_fee}"
            )));
        }
        let inputs = psbt
            .unsigned_tx
            .input
            .iter()
            .map(|i| i.previous_output)
            .collect();
        Ok((inputs, fee))
    }

    /// Sign a transaction spending exactly `inputs`, paying `value` to `payee`, exactly `fee` to
    /// miners and the rest back to ourselves; then check what was built, as [`NodeWallet::pay`]
    /// does. Errors: [`WalletError::CannotPay`] when the inputs are gone or do not cover it.
    pub fn pay_from(
        &mut self,
        inputs: &[OutPoint],
        payee: &ScriptBuf,
        value: Amount,
        fee: Amount,
    ) -> Result<SignedPayment, WalletError> {
        let change = self
            .wallet
            .peek_address(KeychainKind::Internal, 0)
            .script_pubkey();
        let mut builder = self.wallet.build_tx();
        builder
            .add_utxos(inputs)
            .map_err(|e| WalletError::CannotPay(e.to_string()))?
            .manually_selected_only()
            .add_recipient(payee.clone(), value)
            .drain_to(change)
            .fee_absolute(fee);
        let psbt = builder
            .finish()
            .map_err(|e| WalletError::CannotPay(e.to_string()))?;
        let signed = self.sign_and_check(psbt, payee, fee)?;
        if signed.fee != fee {
            return Err(WalletError::Wallet(format!(
                "built a transaction with fee {} instead of {fee}",
                signed.fee
            )));
        }
        Ok(signed)
    }

    fn sign_and_check(
        &mut self,
        mut psbt: Psbt,
        payee: &ScriptBuf,
        max_fee: Amount,
    ) -> Result<SignedPayment, WalletError> {
        let finalized = self
            .wallet
            .sign(&mut psbt, SignOptions::default())
            .map_err(wallet_error)?;
        if !finalized {
            return Err(WalletError::Wallet(
                "the PSBT could not be finalized".into(),
            ));
        }
        let fee = psbt.fee().map_err(wallet_error)?;
        if fee > max_fee {
            return Err(WalletError::CannotPay(format!(
                "fee {fee} is above the cap of {max_fee}"
            )));
        }
        let tx = psbt.clone().extract_tx().map_err(wallet_error)?;
        let strangers = tx
            .output
            .iter()
            .filter(|o| &o.script_pubkey != payee && !self.is_mine(&o.script_pubkey))
            .count();
        if strangers > 0 {
            return Err(WalletError::Wallet(format!(
                "built transaction pays {strangers} output(s) that are neither the payee nor ours"
            )));
        }
        Ok(SignedPayment { psbt, tx, fee })
    }

    /// Record `tx` (one of ours, just sent) as unconfirmed, so its change can be spent at once.
    pub fn record_sent(&mut self, tx: &Transaction) -> Result<(), WalletError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.wallet.apply_unconfirmed_txs([(tx.clone(), now)]);
        self.persist()
    }
}
