//! The socket's chain watch of what it credited on chain (design.md "Trust", "Blame needs
//! proof"): `onchain` payments, closed single-fee sets, and the held set of each outlet, each
//! followed until final. Run by the settler thread every second (`Station::run_settler`), on
//! the handles it needs: the shared state and the outlets.

use wallet::facts::{Answer, Fate, Spender, SEARCH_DEPTH_BLOCKS as WATCH_DEPTH_BLOCKS};
use wallet::WalletError;

use crate::outlet::Outlets;
use crate::shared::Shared;
use crate::store::{Lost, PaymentStatus};

use crate::parents::{self, send_accepted, Missing};

/// The chain watch's handles: the socket's shared state and its outlets (to lock out a
/// session whose payment its cable replaced).
pub(crate) struct ChainWatch<'a> {
    /// The store, bitcoind and the config.
    pub shared: &'a Shared,
    /// The outlets by id.
    pub outlets: &'a Outlets,
}

impl ChainWatch<'_> {
    /// The chain watch of credited `onchain` payments (design.md "Trust"): each is followed
    /// until `final_confirmations` deep. One that left the mempool unconfirmed with an input
    /// spent elsewhere was replaced by the cable (full RBF): recorded as lost, and the session
    /// locked out if still in progress. One merely evicted (inputs unspent) is sent again, with
    /// its evicted parents, as is one whose broadcast bitcoind did not answer (still
    /// `accepted`); one whose parent was replaced is recorded lost, nobody blamed
    /// ([`parents::why_missing`]). bitcoind unreachable: try again next time, blame nobody.
    pub(crate) fn watch_payments(&self) {
        let Ok(watched) = self.shared.store().watched_payments() else {
            return;
        };
        if watched.is_empty() {
            return;
        }
        let chain = &self.shared.chain;
        let final_confirmations = self.shared.config.final_confirmations;
        for payment in watched {
            let txid = payment.tx.compute_txid();
            let (session_id, payment_id) = (payment.session_id.as_str(), payment.payment_id);
            if payment.status == PaymentStatus::Accepted {
                // Credited while bitcoind did not answer its broadcast: send it now.
                match send_accepted(self.shared, &payment) {
                    Ok(()) => continue,
                    Err(WalletError::Unreachable { .. }) => return,
                    // Refused: the checks below tell a replacement from the rest.
                    Err(e) => {
                        tracing::warn!(session = %session_id, %txid, "payment refused on sending: {e}")
                    }
                }
            }
            let depth = final_confirmations.max(1) + WATCH_DEPTH_BLOCKS;
            let (input, by) = match chain.fate(&payment.tx, depth) {
                Answer::Found(Fate::Confirmed { depth, .. }) => {
                    if depth >= final_confirmations {
                        if let Err(e) = self.shared.store().set_payment_status(
                            session_id,
                            payment_id,
                            PaymentStatus::Confirmed,
                        ) {
                            tracing::error!("store (written again on the next round): {e}");
                        }
                    }
                    continue;
                }
                Answer::Found(Fate::InMempool) => continue,
                // Evicted (mempool full, fee floor risen), or its parent was (sent again with
                // it): no blame. A parent replaced: lost, not proven the cable's.
                Answer::Found(Fate::Missing) => {
                    match parents::why_missing(self.shared, &payment.tx, depth) {
                        Missing::ParentReplaced { parent, input, by } => {
                            let outlet_id = self.outlet_of(session_id);
                            self.shared.payment_lost_unproven(
                                &outlet_id,
                                session_id,
                                Lost::Payment(payment_id),
                                payment.amount,
                                &format!(
                                    "payment {payment_id} ({txid}) can never confirm: its parent \
                                     {parent} was replaced (its input {input} spent by {by})"
                                ),
                            );
                        }
                        Missing::SendAgain => {
                            tracing::info!(session = %session_id, %txid, "payment left the mempool: sending it again");
                            if let Err(e) = chain.broadcast(&payment.tx) {
                                tracing::warn!(session = %session_id, %txid, "payment not sent again (evicted parent?): {e}");
                            }
                        }
                    }
                    continue;
                }
                Answer::Found(Fate::Replaced { input, by }) => (input, by),
                Answer::NotFound | Answer::NoAnswer(_) | Answer::Refused(_) => return,
            };
            let reason = format!(
                "payment {payment_id} ({txid}) was replaced: its input {input} was spent by {by}"
            );
            let outlet_id = self.outlet_of(session_id);
            self.shared.payment_lost(
                &outlet_id,
                session_id,
                Lost::Payment(payment_id),
                payment.amount,
                "payment-lost",
                &reason,
            );
            if let Ok(outlet) = self.outlets.get(&outlet_id) {
                outlet.lock_out_blocking(session_id.to_owned(), reason);
            }
        }
    }

    /// The outlet of `session_id` (empty when the store does not say).
    fn outlet_of(&self, session_id: &str) -> String {
        self.shared
            .store()
            .session_outlet(session_id)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// What `tx` pays to the payout address of `session_id`.
    fn value_to_payout(&self, session_id: &str, tx: &bitcoin::Transaction) -> bitcoin::Amount {
        let payout = self
            .shared
            .store()
            .session_payout(session_id)
            .ok()
            .flatten();
        tx.output
            .iter()
            .filter(|o| Some(&o.script_pubkey) == payout.as_ref())
            .map(|o| o.value)
            .sum()
    }

    /// The chain watch of closed single-fee sets (design.md "Trust"), like `onchain`
    /// payments: each set's latest transaction is followed until `final_confirmations` deep;
    /// missing (evicted, or its broadcast refused or unanswered) it is sent again, with its
    /// evicted parents; replaced by a named transaction (the cable spent an input elsewhere)
    /// its value is recorded lost, the cable banned, and its session locked out if still in
    /// progress; a parent of it replaced, its value is recorded lost, nobody blamed.
    pub(crate) fn watch_sets(&self) {
        let chain = &self.shared.chain;
        let final_confirmations = self.shared.config.final_confirmations;
        let Ok(tip) = chain.height() else { return };
        let Ok(sets) = self.shared.store().sets_not_final(tip, final_confirmations) else {
            return;
        };
        let depth = final_confirmations.max(1) + WATCH_DEPTH_BLOCKS;
        for (set, seen_at) in sets {
            let Some(tx) = &set.latest else { continue };
            let txid = tx.compute_txid();
            let (session_id, index) = (set.session_id.as_str(), set.index);
            let store = || self.shared.store();
            let outlet_id = self.outlet_of(session_id);
            let fate = chain.fate(tx, depth);
            if let (Some(_), Answer::Found(Fate::InMempool | Fate::Missing)) = (seen_at, &fate) {
                tracing::warn!(session = %session_id, set = index, %txid, "input set's block reorganized away: watched again");
                if let Err(e) = store().set_confirmed(session_id, index, None) {
                    tracing::error!("store (written again on the next round): {e}");
                }
            }
            match fate {
                Answer::Found(Fate::Confirmed { height, .. }) => {
                    if seen_at != Some(height) {
                        tracing::info!(session = %session_id, set = index, %txid, height, "input set confirmed");
                        if let Err(e) = store().set_confirmed(session_id, index, Some(height)) {
                            tracing::error!("store (written again on the next round): {e}");
                        }
                        if let Err(e) = store().audit(
                            &outlet_id,
                            Some(session_id),
                            "set-confirmed",
                            &format!("{txid} at {height}"),
                        ) {
                            tracing::error!("the audit log did not take a row: {e}");
                        }
                    }
                }
                Answer::Found(Fate::InMempool) => {}
                Answer::Found(Fate::Missing) => {
                    match parents::why_missing(self.shared, tx, depth) {
                        Missing::ParentReplaced { parent, input, by } => {
                            let reason = format!(
                            "input set {index} ({txid}) can never confirm: its parent {parent} \
                             was replaced (its input {input} spent by {by})"
                        );
                            let value = self.value_to_payout(session_id, tx);
                            self.shared.payment_lost_unproven(
                                &outlet_id,
                                session_id,
                                Lost::Set(index),
                                value,
                                &reason,
                            );
                        }
                        Missing::SendAgain => {
                            if let Err(e) = chain.broadcast(tx) {
                                tracing::debug!(session = %session_id, set = index, %txid, "sending the set again: {e}");
                            }
                        }
                    }
                }
                Answer::Found(Fate::Replaced { input, by }) => {
                    let reason = format!(
                        "input set {index} ({txid}) was replaced: its input {input} was spent by {by}"
                    );
                    let value = self.value_to_payout(session_id, tx);
                    self.shared.payment_lost(
                        &outlet_id,
                        session_id,
                        Lost::Set(index),
                        value,
                        "set-lost",
                        &reason,
                    );
                    if let Ok(outlet) = self.outlets.get(&outlet_id) {
                        outlet.lock_out_blocking(session_id.to_owned(), reason);
                    }
                }
                Answer::NotFound | Answer::NoAnswer(_) | Answer::Refused(_) => return,
            }
        }
    }

    /// Check each outlet's held single-fee set against the chain: inputs spent by the very
    /// transaction held (the cable broadcast it at its session end) settle the set; spent by
    /// another named transaction, the cable double-spent them: the set is lost (recorded
    /// `failed` with its value lost against the cable, banned) and its session locked out.
    /// What we hold is not sent: it pays the same fee as the set's other transactions, so
    /// bitcoind would not take it over the double spend. An unknown or unanswered spender
    /// blames nobody.
    pub(crate) fn watch_held_sets(&self) {
        for outlet in self.outlets.iter() {
            let held = self
                .shared
                .sets
                .snapshot(outlet.id())
                .filter(|s| s.seller.latest().is_some());
            let Some(set) = held else { continue };
            let chain = &self.shared.chain;
            let depth = self.shared.config.final_confirmations.max(1) + WATCH_DEPTH_BLOCKS;
            let spent = set.seller.inputs().into_iter().find_map(|input| {
                match chain.spender(input, depth) {
                    Answer::Found(Spender::Tx { txid, .. }) => Some((input, txid)),
                    _ => None,
                }
            });
            let Some((input, by)) = spent else { continue };
            // Decided on the set as it is now, under its lock: a payment held since the
            // snapshot may be the very transaction that spent the inputs.
            let (session_id, index) = (set.session_id.clone(), set.index);
            let Some(set) = self
                .shared
                .sets
                .take_if(outlet.id(), |s| s.is(&session_id, index))
            else {
                continue;
            };
            if set.seller.latest().map(|tx| tx.compute_txid()) == Some(by) {
                tracing::info!(outlet = %outlet.id(), session = %session_id, set = index, "input set broadcast by the cable");
                self.shared.settle(set);
                continue;
            }
            let reason = format!(
                "double spend: input {input} of the held payments was spent by {by}; {} held unpaid",
                set.seller.value()
            );
            // The set marked failed with the loss and the ban, in one transaction.
            self.shared.payment_lost(
                outlet.id(),
                &session_id,
                Lost::Set(index),
                set.seller.value(),
                "set-lost",
                &reason,
            );
            outlet.lock_out_blocking(session_id, reason);
        }
    }
}
