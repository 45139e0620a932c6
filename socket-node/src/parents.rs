//! The unconfirmed parents of what the socket credits (design.md "Blame needs proof"): a
//! payment, a single-fee set's transaction or a spillman deposit spending from a transaction
//! still in the mempool is kept with that parent (`Store::parents_of`). Should the child go
//! missing from the mempool, the parent tells why: evicted (sent again, then the child) or
//! replaced by a named transaction (the child can never confirm: a loss, not proven the
//! cable's, since whoever could spend the parent's inputs may have replaced it).

use bitcoin::{OutPoint, Transaction, Txid};
use wallet::facts::{Answer, Fate};

use crate::shared::Shared;
use crate::store::{PaymentStatus, StoredPayment};
use wallet::WalletError;

/// Send first each payment `tx` spends from that the socket credited but could not send yet
/// (bitcoind did not answer its broadcast; the chain watch would send it within a second):
/// without it bitcoind knows none of its outputs, and the honest cable's next payment, paid
/// from its change, would be refused as `missing-inputs`. Blocking (bitcoind RPC); failures
/// are left to the check that follows and to the chain watch.
pub(crate) fn send_unsent_parents(shared: &Shared, tx: &Transaction) {
    let parents: std::collections::BTreeSet<bitcoin::Txid> =
        tx.input.iter().map(|i| i.previous_output.txid).collect();
    let unsent = match shared.store().unbroadcast_payments() {
        Ok(unsent) => unsent,
        Err(e) => return tracing::error!("reading the payments not yet sent: {e}"),
    };
    for parent in unsent
        .iter()
        .filter(|p| parents.contains(&p.tx.compute_txid()))
    {
        if let Err(e) = send_accepted(shared, parent) {
            tracing::debug!(txid = %parent.tx.compute_txid(), "sending a parent first: {e}");
        }
    }
}

/// What the kept parents of a transaction gone from the mempool say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Missing {
    /// `parent` was replaced: its input `input` spent by `by`. The child can never confirm.
    ParentReplaced {
        /// The parent replaced.
        parent: Txid,
        /// Its input spent elsewhere.
        input: OutPoint,
        /// The transaction that spent it.
        by: Txid,
    },
    /// No parent replaced (those evicted were sent again): send the child again.
    SendAgain,
}

/// Why `child` (credited, gone from the mempool, nobody spent its inputs) is missing: each kept
/// parent is looked up `depth` blocks back; a missing one is sent again. Blocking (bitcoind
/// RPC); a parent bitcoind does not answer for counts as not replaced.
pub(crate) fn why_missing(shared: &Shared, child: &Transaction, depth: u32) -> Missing {
    let parents = match shared.store().parents_of(&child.compute_txid()) {
        Ok(parents) => parents,
        Err(e) => {
            tracing::error!("reading the parents of {}: {e}", child.compute_txid());
            return Missing::SendAgain;
        }
    };
    for parent in &parents {
        let txid = parent.compute_txid();
        match shared.chain.fate(parent, depth) {
            Answer::Found(Fate::Replaced { input, by }) => {
                return Missing::ParentReplaced {
                    parent: txid,
                    input,
                    by,
                }
            }
            Answer::Found(Fate::Missing) => match shared.chain.broadcast(parent) {
                Ok(_) => {
                    tracing::info!(%txid, "an evicted parent of a credited transaction sent again")
                }
                Err(e) => tracing::debug!(%txid, "sending a parent again: {e}"),
            },
            _ => {}
        }
    }
    Missing::SendAgain
}

/// Send a payment the socket credited but could not send yet (`accepted`: bitcoind did not
/// answer its broadcast) and mark it `broadcast`; a store that does not take the mark is
/// logged (the chain watch writes it again). Blocking (bitcoind RPC). Errors: bitcoind's.
pub(crate) fn send_accepted(shared: &Shared, payment: &StoredPayment) -> Result<(), WalletError> {
    let txid = shared.chain.broadcast(&payment.tx)?;
    tracing::info!(session = %payment.session_id, %txid, "payment sent, after bitcoind did not answer");
    if let Err(e) = shared.store().set_payment_status(
        &payment.session_id,
        payment.payment_id,
        PaymentStatus::Broadcast,
    ) {
        tracing::error!("store (the chain watch writes it again): {e}");
    }
    Ok(())
}
