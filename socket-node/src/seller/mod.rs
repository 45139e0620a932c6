//! The seller side of each payment scheme (design.md "Payment schemes"; paper seed 000 §V,
//! §VI), and what they share: the checks against the chain and the lockout of a cheater.
//!
//! Every payment is hostile until checked. A seller returns its [`Verdict`]: a payment that
//! passes is persisted and its quota is to be credited; one that breaks a rule in a request the
//! session's cable signed is refused with [`SocketError::Cheat`] and locks the outlet out; any
//! other refusal blames nobody. The service (or the station, for Lightning) applies the verdict
//! on the outlet: a seller never calls the outlet. A seller sees only its [`SellerContext`]: the
//! shared store and chain, and the config of the one outlet it sells on.

pub mod lightning;
pub mod onchain;
pub mod single_fee;
pub mod spillman;

use std::sync::Arc;

use crate::error::SocketError;
use bitcoin::{OutPoint, ScriptBuf, Transaction};
use proto::units::EnergyMwh;
use proto::v1;
use proto::Scheme;
use wallet::facts::Answer;

use crate::config::OutletConfig;
use crate::sets::OpenSet;
use crate::shared::Shared;
use crate::store::{CheckedTx, StoredTerms};

/// A payment a seller checked and persisted: its quota is to be credited.
#[derive(Debug, Clone)]
pub(crate) struct Credit {
    /// The quota it buys.
    pub(crate) quota: EnergyMwh,
    /// Its txid (hex), as the reply names it.
    pub(crate) txid: String,
}

/// A seller's verdict on a payment (design.md "Blame needs proof"): `Ok` credit its quota (it
/// is persisted); `Err(SocketError::Cheat(reason))` lock the outlet out (the session's cable
/// signed a payment that breaks a rule: the reason is the proof); any other error refuses it
/// without blame.
pub(crate) type Verdict = Result<Credit, SocketError>;

/// The seller side of one payment scheme (design.md "Architecture v2"). Adding a scheme is
/// one implementation of this trait (its rules live in `proto`), named in [`seller_of`].
#[tonic::async_trait]
pub(crate) trait Seller: Send + Sync {
    /// Whether a session of this scheme opens with its first `PowerRequest` (spillman opens
    /// with `OpenChannel`).
    fn opens_with_power_request(&self) -> bool {
        true
    }

    /// The terms of the next payment of `session_id` on the outlet of `config`, in the
    /// outlet's task (stored by the caller before they leave; no store guard is held when
    /// called): one quota at price × quota unless the scheme says otherwise.
    fn new_terms(
        &self,
        _shared: &Shared,
        config: &OutletConfig,
        _payout: &ScriptBuf,
        _session_id: &str,
        _request: &v1::PowerRequestRequest,
    ) -> Result<StoredTerms, SocketError> {
        one_quota(config).map_err(SocketError::internal)
    }

    /// Whether terms issued before and not paid yet may be issued again as they are.
    fn terms_still_valid(
        &self,
        _shared: &Shared,
        _config: &OutletConfig,
        _session_id: &str,
        _terms: &StoredTerms,
    ) -> bool {
        true
    }

    /// The `PowerRequest` reply for terms the outlet issued.
    async fn reply(
        &self,
        cx: &SellerContext<'_>,
        issued: Issued,
    ) -> Result<v1::PowerRequestResponse, SocketError>;

    /// Check and persist a payment delivered with `PayTransaction`; the [`Verdict`] says
    /// whether to credit it, lock out, or refuse it without blame.
    async fn pay(
        &self,
        cx: &SellerContext<'_>,
        session_id: &str,
        payment_id: u64,
        psbt: &[u8],
        terms: StoredTerms,
    ) -> Verdict;
}

/// The terms of one quota on the outlet of `config`: price × quota (paper seed 000 Table I).
pub(crate) fn one_quota(config: &OutletConfig) -> anyhow::Result<StoredTerms> {
    Ok(StoredTerms {
        amount: config.quota_amount()?,
        quota: EnergyMwh(config.quota_mwh),
        single_fee: None,
    })
}

/// The seller of `scheme`.
pub(crate) fn seller_of(scheme: Scheme) -> &'static dyn Seller {
    match scheme {
        Scheme::Onchain => &onchain::Onchain,
        Scheme::SingleFee => &single_fee::SingleFee,
        Scheme::Spillman => &spillman::Spillman,
        Scheme::Lightning => &lightning::Lightning,
    }
}

/// How long a payment check waits for bitcoind before it answers `UNAVAILABLE`: longer than one
/// RPC call may take (bitcoind's client times out after 15 s), well within a cable's call.
pub(crate) const CHAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Terms the outlet's task issued for a `PowerRequest`.
pub(crate) struct Issued {
    /// The session (opened by this request when it was its first).
    pub(crate) session_id: String,
    /// The payment the terms are for.
    pub(crate) payment_id: u64,
    /// Where the session is paid (its payout address).
    pub(crate) payout_script: ScriptBuf,
    /// The terms.
    pub(crate) terms: StoredTerms,
    /// single-fee: the set in progress as the terms were issued.
    pub(crate) set: Option<OpenSet>,
}

/// What a seller may use while it handles one request: the store, bitcoind and the Lightning
/// node ([`Shared`]), and the config of the outlet it sells on.
pub(crate) struct SellerContext<'a> {
    /// Store, chain, Lightning node, keys.
    pub(crate) shared: &'a Arc<Shared>,
    /// The config of the session's outlet.
    pub(crate) config: &'a OutletConfig,
}

impl SellerContext<'_> {
    /// Where `session_id` is paid. Errors: `NOT_FOUND` for a session without a payout address.
    pub(crate) fn session_payout(&self, session_id: &str) -> Result<ScriptBuf, SocketError> {
        self.shared
            .store()
            .session_payout(session_id)
            .map_err(SocketError::internal)?
            .ok_or_else(|| SocketError::not_found(format!("session {session_id} has no payout")))
    }

    /// Run the chain checks of `tx` ([`check_on_chain`]) off the async workers, at most
    /// `max_chain_calls` at once and [`CHAIN_WAIT`] long; map a refusal to its verdict
    /// ([`SocketError::Cheat`] to lock out, or a refusal without blame).
    pub(crate) async fn checked_on_chain(
        &self,
        tx: &Transaction,
    ) -> Result<CheckedTx, SocketError> {
        let checked = {
            let tx = tx.clone();
            let min_rate = self.config.min_fee_rate_sat_per_vb;
            self.with_chain(move |shared| check_on_chain(shared, &tx, min_rate))
                .await?
        };
        match checked {
            Ok(checked) => Ok(checked),
            Err(Refusal::Cheat(reason)) => Err(SocketError::Cheat(reason)),
            Err(Refusal::Unavailable(reason)) => Err(SocketError::unavailable(format!(
                "cannot check the payment now: {reason}"
            ))),
            Err(Refusal::Policy(reason)) => Err(SocketError::invalid(format!(
                "payment not taken (no blame): {reason}"
            ))),
        }
    }

    /// Run `f` with bitcoind off the async workers, within the `max_chain_calls` bound. A
    /// bitcoind that does not answer within [`CHAIN_WAIT`] (its calls queue behind one another
    /// on the RPC connection) gets `UNAVAILABLE`, so the cable hears it before its call times
    /// out; the call itself finishes in the background.
    pub(crate) async fn with_chain<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> R + Send + 'static,
    ) -> Result<R, SocketError> {
        tokio::time::timeout(CHAIN_WAIT, self.with_chain_to_the_end(f))
            .await
            .unwrap_or_else(|_| {
                Err(SocketError::unavailable(format!(
                    "bitcoind did not answer within {CHAIN_WAIT:?}; retry"
                )))
            })
    }

    /// [`SellerContext::with_chain`] without the time bound: for the broadcast of what is
    /// already persisted, whose outcome the reply must tell (a payment recorded is answered
    /// again, never checked again).
    pub(crate) async fn with_chain_to_the_end<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Shared) -> R + Send + 'static,
    ) -> Result<R, SocketError> {
        let shared = Arc::clone(self.shared);
        let _permit = self
            .shared
            .chain_permits
            .acquire()
            .await
            .map_err(SocketError::internal)?;
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(SocketError::internal)
    }
}

/// Why a payment was refused: the cable's fault (lock out) or nobody's (do not); design.md
/// "Blame needs proof".
pub(crate) enum Refusal {
    /// The payment, in a request the cable signed, breaks a rule: refuse and lock out.
    Cheat(String),
    /// We could not check it (bitcoind down, store error): refuse without blame, retry.
    Unavailable(String),
    /// bitcoind will not take it now for a reason that proves nothing against the cable (its
    /// mempool's fee floor or chain limits, a parent not found, a conflict in the mempool):
    /// refuse without blame (`INVALID_ARGUMENT`), the cable pays again otherwise.
    Policy(String),
}

/// `testmempoolaccept` or `sendrawtransaction` reject reasons that prove nothing against the
/// cable (Bitcoin Core `validation.cpp`, `policy/`): the state of this node's mempool (fee
/// floor, chain limits, a conflict, the transaction already there), this node's view of the
/// chain (a lock time or sequence not final at our tip, an input it does not know: an evicted
/// or unseen parent, another network) and this node's standardness policy. Nobody's fault.
const POLICY_REJECTS: &[&str] = &[
    "min relay fee not met",
    "mempool min fee not met",
    "mempool full",
    "too-long-mempool-chain",
    "package-mempool-limits",
    "insufficient fee",
    "txn-mempool-conflict",
    "txn-already-in-mempool",
    "txn-already-known",
    "replacement-adds-unconfirmed",
    "too many potential replacements",
    "non-final",
    "non-BIP68-final",
    "missing-inputs",
    "inputs-missingorspent",
    "dust",
    "scriptpubkey",
    "tx-size-small",
    "non-mandatory-script-verify-flag",
    "bad-txns-nonstandard-inputs",
    "bare-multisig",
    "multi-op-return",
];

/// Judge bitcoind's refusal of a payment (`reason`, its reject reason): a refusal of policy or
/// of this node's view ([`POLICY_REJECTS`]) is nobody's fault and is only refused; anything
/// else (a bad signature, an invalid script, an input spent twice inside it) breaks a rule of
/// consensus in a transaction the cable signed. Cheap: no chain lookups (a cable can send
/// made-up inputs as often as its rate allows).
pub(crate) fn judge_reject(reason: &str) -> Refusal {
    if POLICY_REJECTS.iter().any(|p| reason.contains(p)) {
        return Refusal::Policy(format!("bitcoind will not take it now: {reason}"));
    }
    Refusal::Cheat(format!("bitcoind refuses the transaction: {reason}"))
}

/// The most inputs a payment or deposit from a cable may spend: far above what a wallet needs
/// for a quota, low enough that checking one costs little (design.md "Trust", limits).
pub(crate) const MAX_INPUTS: usize = 50;

/// The largest payment or deposit from a cable, in weight units (a tenth of bitcoind's
/// standard limit).
pub(crate) const MAX_WEIGHT_WU: u64 = 40_000;

/// The most unconfirmed transactions a payment or deposit may spend from (each at most
/// [`MAX_WEIGHT_WU`]): the socket keeps them, and the chain watch judges them, should the
/// payment go missing ([`parents`]). More is refused without blame until a block confirms some.
pub(crate) const MAX_UNCONFIRMED_PARENTS: usize = 4;

/// Checks against the chain, cheap ones first: at most [`MAX_INPUTS`] inputs and
/// [`MAX_WEIGHT_WU`]; bitcoind would accept the transaction (one `testmempoolaccept`; when it
/// names missing inputs, each input is looked up to say which); the fee rate is at least
/// `min_rate_sat_per_vb`. Returns the fee and vsize. Blocking (bitcoind RPC).
pub(crate) fn check_on_chain(
    shared: &Shared,
    tx: &Transaction,
    min_rate_sat_per_vb: u64,
) -> Result<CheckedTx, Refusal> {
    let unavailable = |e: wallet::WalletError| Refusal::Unavailable(e.to_string());
    if tx.input.len() > MAX_INPUTS {
        return Err(Refusal::Cheat(format!(
            "{} inputs: at most {MAX_INPUTS}",
            tx.input.len()
        )));
    }
    let weight = tx.weight().to_wu();
    if weight > MAX_WEIGHT_WU {
        return Err(Refusal::Cheat(format!(
            "{weight} weight units: at most {MAX_WEIGHT_WU}"
        )));
    }
    crate::parents::send_unsent_parents(shared, tx);
    let verdict = shared.chain.test_mempool_accept(tx).map_err(unavailable)?;
    if !verdict.allowed {
        return Err(judge_reject(&verdict.reject_reason));
    }
    // bitcoind (full RBF) accepts a replacement of a mempool transaction that pays more: the
    // socket never broadcasts one, lest it replace a payment it credited.
    let inputs: Vec<OutPoint> = tx.input.iter().map(|i| i.previous_output).collect();
    match shared.chain.mempool_spenders(&inputs) {
        Answer::Found(spenders) => {
            if let Some((input, by)) = spenders.first() {
                return Err(Refusal::Policy(format!(
                    "input {input} is spent by {by}, in the mempool: the socket replaces no transaction"
                )));
            }
        }
        Answer::NotFound => {}
        Answer::NoAnswer(e) | Answer::Refused(e) => return Err(Refusal::Unavailable(e)),
    }
    if verdict.fee.to_sat() < min_rate_sat_per_vb * verdict.vsize {
        return Err(Refusal::Cheat(format!(
            "fee {} for {} vB is below {min_rate_sat_per_vb} sat/vB",
            verdict.fee, verdict.vsize
        )));
    }
    // Kept with it: should it go missing, they tell an evicted parent from a replaced one. As
    // many and as large as the chain watch can judge each second: more waits for a block.
    let parents = match shared.chain.unconfirmed_parents(tx) {
        Answer::Found(parents) => parents,
        Answer::NotFound => Vec::new(),
        Answer::NoAnswer(e) | Answer::Refused(e) => return Err(Refusal::Unavailable(e)),
    };
    if parents.len() > MAX_UNCONFIRMED_PARENTS
        || parents.iter().any(|p| p.weight().to_wu() > MAX_WEIGHT_WU)
    {
        return Err(Refusal::Unavailable(format!(
            "it spends from {} unconfirmed transactions (at most {MAX_UNCONFIRMED_PARENTS}, each \
             of at most {MAX_WEIGHT_WU} weight units): pay from confirmed coins, or after the \
             next block",
            parents.len()
        )));
    }
    Ok(CheckedTx {
        fee: verdict.fee,
        vsize: verdict.vsize,
        parents,
    })
}
