//! Seller side of the `lightning` scheme (design.md; BOLT 11 via ldk-node): per quota a BOLT11
//! invoice of exactly price × quota msat; the quota is credited when ldk-node reports the
//! payment received, after the payment is recorded ([`crate::store::Store::receive_ln_payment`]).
//! Keysends carrying the session record ([`proto::lightning::SessionRecord`]) are the fast path.

use crate::error::SocketError;
use ln::ldk_node::lightning_invoice::{Bolt11InvoiceDescription, Description};
use proto::units::PriceMsatPerWh;
use proto::v1;

use super::{Issued, Seller, SellerContext, Verdict};
use crate::shared::Shared;
use crate::store::StoredTerms;
use proto::units::EnergyMwh;
use proto::Scheme;

/// The seller of `lightning`.
pub(crate) struct Lightning;

#[tonic::async_trait]
impl Seller for Lightning {
    async fn reply(
        &self,
        cx: &SellerContext<'_>,
        issued: Issued,
    ) -> Result<v1::PowerRequestResponse, SocketError> {
        // ldk-node's calls are synchronous: let the runtime move other tasks off this worker
        // meanwhile.
        tokio::task::block_in_place(|| {
            reply(cx, issued.session_id, issued.payment_id, issued.terms)
        })
    }

    /// Lightning quotas are paid over Lightning, never with `PayTransaction`.
    async fn pay(
        &self,
        _cx: &SellerContext<'_>,
        _session_id: &str,
        _payment_id: u64,
        _psbt: &[u8],
        _terms: StoredTerms,
    ) -> Verdict {
        Err(SocketError::invalid(
            "this payment is a Lightning invoice: pay it over Lightning",
        ))
    }
}

/// The `PowerRequest` reply: the invoice of this payment, made and stored on first ask.
/// Blocking (ldk-node's calls are synchronous).
fn reply(
    cx: &SellerContext<'_>,
    session_id: String,
    payment_id: u64,
    terms: StoredTerms,
) -> Result<v1::PowerRequestResponse, SocketError> {
    let ln = cx
        .shared
        .ln
        .as_ref()
        .ok_or_else(|| SocketError::wrong_state("this socket has no Lightning node"))?;
    let amount_msat = PriceMsatPerWh(cx.config.price_msat_per_wh)
        .cost_of(terms.quota)
        .map_err(SocketError::internal)?
        .0;
    // Bound first: a store guard in the match scrutinee would live through the arms.
    let issued = cx
        .shared
        .store()
        .invoice_of(&session_id, payment_id)
        .map_err(SocketError::internal)?;
    let bolt11 = match issued {
        Some(bolt11) => bolt11,
        None => {
            let text = format!(
                "t2t {} session {session_id} payment {payment_id}",
                cx.config.id
            );
            let description = Bolt11InvoiceDescription::Direct(
                Description::new(text).map_err(SocketError::internal)?,
            );
            let expiry = cx
                .shared
                .config
                .lightning
                .as_ref()
                .map_or(600, |l| l.invoice_expiry_secs);
            let invoice = ln
                .bolt11_payment()
                .receive(amount_msat, &description, expiry)
                .map_err(SocketError::internal)?;
            let bolt11 = invoice.to_string();
            cx.shared
                .store()
                .issue_invoice(
                    &session_id,
                    payment_id,
                    &proto::lightning::payment_hash_hex(&invoice),
                    &bolt11,
                    amount_msat,
                    terms.quota,
                )
                .map_err(SocketError::internal)?;
            bolt11
        }
    };
    Ok(v1::PowerRequestResponse {
        session_id,
        payment_id,
        scheme: v1::Scheme::Lightning as i32,
        amount_msat,
        quota_mwh: terms.quota.0,
        payout_script: Vec::new(),
        terms: Some(v1::power_request_response::Terms::Lightning(
            v1::LightningPaymentTerms {
                bolt11_invoice: bolt11,
            },
        )),
    })
}

/// What became of a Lightning event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventOutcome {
    /// Done with: mark it handled.
    Handled,
    /// A payment received that the store did not take: leave it unhandled, so that ldk-node
    /// hands it again, and try again in a moment (a payment received is never dropped).
    RetryLater,
}

/// What the station is to apply on a session's outlet after a Lightning event: the seller
/// never calls the outlet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LnVerdict {
    /// Credit `quota` to `session_id`: its payment (`payment_hash`) is recorded. A keysend
    /// (`keysend_payment_id`) whose session is no longer in progress stays recorded against it
    /// and is audited (`keysend-after-end`): there is no energy left to credit.
    Credit {
        session_id: String,
        quota: EnergyMwh,
        payment_hash: String,
        keysend_payment_id: Option<u64>,
    },
    /// The cable of `session_id` signed a keysend (`payment_hash`, `amount_msat`) that breaks a
    /// rule: lock out when it is the session in progress; after its end nobody is blamed and
    /// the keysend is kept and audited like a stray one ([`keysend_not_credited`]).
    LockOut {
        session_id: String,
        reason: String,
        payment_hash: String,
        amount_msat: u64,
    },
}

/// Handle a Lightning event (on the Lightning event thread): a payment received for one of our
/// invoices is recorded, then its quota is to be credited; a keysend goes to
/// [`receive_keysend`]. ldk-node hands an event again after a crash until it is marked handled;
/// the record keyed by payment hash keeps that from crediting twice. Returns what became of
/// the event and what the station is to apply on the outlet.
pub(crate) fn on_event(
    shared: &Shared,
    event: &ln::ldk_node::Event,
) -> (EventOutcome, Option<LnVerdict>) {
    use ln::ldk_node::Event;
    match event {
        Event::PaymentReceived {
            payment_hash,
            amount_msat,
            custom_records,
            ..
        } if custom_records
            .iter()
            .any(|r| r.type_num == proto::lightning::SESSION_TLV_TYPE) =>
        {
            let hash = payment_hash.to_string();
            match receive_keysend(shared, &hash, *amount_msat, custom_records) {
                Ok(verdict) => return (EventOutcome::Handled, verdict),
                Err(KeysendRefusal::Stray(reason)) => {
                    keysend_not_credited(shared, &hash, *amount_msat, &reason)
                }
                Err(KeysendRefusal::Cheat { session_id, reason }) => {
                    return (
                        EventOutcome::Handled,
                        Some(LnVerdict::LockOut {
                            session_id,
                            reason,
                            payment_hash: hash,
                            amount_msat: *amount_msat,
                        }),
                    )
                }
                Err(KeysendRefusal::NotStored(reason)) => {
                    tracing::error!(%hash, amount_msat, "keysend not recorded, tried again: {reason}");
                    return (EventOutcome::RetryLater, None);
                }
            }
        }
        Event::PaymentReceived {
            payment_hash,
            amount_msat,
            ..
        } => {
            let hash = payment_hash.to_string();
            // Bound first: a store guard in the match scrutinee would live through the arms.
            let received = shared.store().receive_ln_payment(&hash, *amount_msat);
            match received {
                Ok(Some((session_id, quota))) => {
                    return (
                        EventOutcome::Handled,
                        Some(LnVerdict::Credit {
                            session_id,
                            quota,
                            payment_hash: hash,
                            keysend_payment_id: None,
                        }),
                    )
                }
                // ldk-node hands the event again when the socket stopped after recording it.
                Ok(None) if shared.store().ln_hash_received(&hash).unwrap_or(false) => {
                    tracing::debug!(%hash, "Lightning payment recorded before")
                }
                Ok(None) => {
                    tracing::warn!(%hash, amount_msat, "Lightning payment not for an open invoice of ours, or short")
                }
                Err(e) => {
                    tracing::error!(%hash, "recording a Lightning payment, tried again: {e}");
                    return (EventOutcome::RetryLater, None);
                }
            }
        }
        Event::ChannelPending {
            counterparty_node_id,
            funding_txo,
            ..
        } => {
            tracing::info!(peer = %counterparty_node_id, %funding_txo, "Lightning channel pending");
        }
        Event::ChannelReady {
            counterparty_node_id,
            ..
        } => {
            tracing::info!(peer = ?counterparty_node_id, "Lightning channel ready");
        }
        Event::ChannelClosed {
            counterparty_node_id,
            reason,
            ..
        } => {
            tracing::info!(peer = ?counterparty_node_id, ?reason, "Lightning channel closed");
        }
        _ => {}
    }
    (EventOutcome::Handled, None)
}

/// A keysend kept and not credited (`reason`): logged, and counted in the audit log's
/// aggregated line ([`STRAY_AUDIT_EVERY`]).
pub(crate) fn keysend_not_credited(shared: &Shared, hash: &str, amount_msat: u64, reason: &str) {
    tracing::warn!(%hash, amount_msat, %reason, "keysend kept, not credited");
    if let Some(line) = STRAY_KEYSENDS.tally(amount_msat, reason) {
        if let Err(e) = shared
            .store()
            .audit("", None, "keysend-not-credited", &line)
        {
            tracing::error!("the audit log did not take a row: {e}");
        }
    }
}

/// Why a keysend was not credited.
pub(crate) enum KeysendRefusal {
    /// It is not signed by the cable of the session it names (anyone can keysend anything:
    /// design.md "Blame needs proof"), names no session here, or keysend is off: kept, audited
    /// (aggregated), nobody blamed. (One its cable signed that breaks a rule for a session
    /// that ended is kept the same way: [`LnVerdict::LockOut`].)
    Stray(String),
    /// Signed by the cable of the session it names, yet it breaks a rule: the cable signed a
    /// cheat, lock out (when that session is in progress).
    Cheat { session_id: String, reason: String },
    /// The store did not answer or take it: handled again later, nothing concluded.
    NotStored(String),
}

/// How often at most a line about keysends not credited goes to the audit log: a stranger can
/// send 1-msat keysends by the thousand, and each would otherwise grow the log.
const STRAY_AUDIT_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Keysends kept but not credited since the last audit line about them.
struct StrayTally {
    count: u64,
    amount_msat: u64,
    last_line: Option<std::time::Instant>,
}

/// The socket's tally of stray keysends (one socket per process).
struct StrayKeysends(std::sync::Mutex<StrayTally>);

static STRAY_KEYSENDS: StrayKeysends = StrayKeysends(std::sync::Mutex::new(StrayTally {
    count: 0,
    amount_msat: 0,
    last_line: None,
}));

impl StrayKeysends {
    /// Count a stray keysend of `amount_msat`; the audit line to write now, if one is due:
    /// the first at once, then at most one per [`STRAY_AUDIT_EVERY`], summing those between.
    fn tally(&self, amount_msat: u64, reason: &str) -> Option<String> {
        let mut tally = self.0.lock().unwrap_or_else(|e| e.into_inner());
        tally.count += 1;
        tally.amount_msat = tally.amount_msat.saturating_add(amount_msat);
        let due = tally
            .last_line
            .is_none_or(|at| at.elapsed() >= STRAY_AUDIT_EVERY);
        if !due {
            return None;
        }
        let line = format!(
            "{} keysend(s), {} msat, kept and not credited; the last: {reason}",
            tally.count, tally.amount_msat
        );
        *tally = StrayTally {
            count: 0,
            amount_msat: 0,
            last_line: Some(std::time::Instant::now()),
        };
        Some(line)
    }
}

/// A keysend received (design.md `lightning`, the fast path): its quota is to be credited when
/// it is signed by the cable that opened the session its record names, that session pays with
/// `lightning`, its payment id is the next one (or the last one issued and still unpaid), and
/// it pays exactly price × quota msat. The payment is recorded (with its terms) before the
/// verdict leaves; a payment hash recorded before (an event delivered again after a restart)
/// credits nothing; a second payment for a payment id paid before is a cheat.
///
/// ldk-node claims a keysend before the socket sees it, so a refused one stays with the socket;
/// one that fits a session that has ended (its cable's last quota racing the end) is recorded
/// against that session and audited when the credit finds it ended, so no payment received is
/// off the books.
pub(crate) fn receive_keysend(
    shared: &Shared,
    payment_hash: &str,
    amount_msat: u64,
    records: &[ln::ldk_node::CustomTlvRecord],
) -> Result<Option<LnVerdict>, KeysendRefusal> {
    let stray = |reason: String| KeysendRefusal::Stray(reason);
    if !shared.config.lightning.as_ref().is_some_and(|l| l.keysend) {
        return Err(stray("this socket does not take keysends".into()));
    }
    let record = ln::session_record(records).map_err(|e| stray(e.to_string()))?;
    authenticate(shared, &record, amount_msat, payment_hash, records)?;
    // ldk-node delivers an event again when the socket stopped before handling it: a keysend
    // recorded before was credited then.
    if shared
        .store()
        .ln_hash_received(payment_hash)
        .map_err(not_stored)?
    {
        tracing::debug!(%payment_hash, "keysend recorded before");
        return Ok(None);
    }
    let (outlet_id, scheme, last) = {
        let store = shared.store();
        let outlet_id = store
            .session_outlet(&record.session_id)
            .map_err(not_stored)?
            .ok_or_else(|| stray(format!("no session {} here", record.session_id)))?;
        let scheme = store
            .session_scheme(&record.session_id)
            .map_err(not_stored)?;
        let last = store
            .last_payment_id(&record.session_id)
            .map_err(not_stored)?;
        (outlet_id, scheme, last)
    };
    let config = shared
        .config
        .outlets
        .iter()
        .find(|o| o.id == outlet_id)
        .ok_or_else(|| stray(format!("no outlet {outlet_id:?} here")))?;
    let cheat = |reason: String| KeysendRefusal::Cheat {
        session_id: record.session_id.clone(),
        reason,
    };
    if scheme != Some(Scheme::Lightning) {
        return Err(cheat(format!(
            "a keysend for session {}, which pays with {scheme:?}",
            record.session_id
        )));
    }
    let terms = super::one_quota(config).map_err(|e| stray(e.to_string()))?;
    let expected_msat = PriceMsatPerWh(config.price_msat_per_wh)
        .cost_of(terms.quota)
        .map_err(|e| stray(e.to_string()))?
        .0;
    if amount_msat != expected_msat {
        return Err(cheat(format!(
            "a keysend of {amount_msat} msat is not price x quota = {expected_msat} msat"
        )));
    }
    let new_terms = if record.payment_id == last + 1 {
        Some(terms)
    } else if record.payment_id == last && last > 0 {
        None
    } else {
        return Err(cheat(format!(
            "keysend payment id {} is not the next one (last issued {last})",
            record.payment_id
        )));
    };
    let recorded = shared.store().receive_keysend(
        payment_hash,
        &record.session_id,
        record.payment_id,
        amount_msat,
        new_terms,
        terms.quota,
    );
    match recorded {
        Ok(true) => Ok(Some(LnVerdict::Credit {
            session_id: record.session_id,
            quota: terms.quota,
            payment_hash: payment_hash.to_owned(),
            keysend_payment_id: Some(record.payment_id),
        })),
        Ok(false) => Err(cheat(format!(
            "payment {} was paid before",
            record.payment_id
        ))),
        Err(e) => Err(not_stored(e)),
    }
}

/// A store that did not answer or take a keysend: handled again later.
fn not_stored(e: impl std::fmt::Display) -> KeysendRefusal {
    KeysendRefusal::NotStored(e.to_string())
}

/// Whether the cable that opened the session `record` names signed this keysend
/// (`proto::lightning::verify_keysend`). Errors: why not ([`KeysendRefusal::Stray`], for the
/// audit log), or [`KeysendRefusal::NotStored`] when the store does not answer.
fn authenticate(
    shared: &Shared,
    record: &proto::lightning::SessionRecord,
    amount_msat: u64,
    payment_hash: &str,
    records: &[ln::ldk_node::CustomTlvRecord],
) -> Result<(), KeysendRefusal> {
    use bitcoin::hex::FromHex;
    let stray = KeysendRefusal::Stray;
    let signature = ln::session_auth(records).ok_or_else(|| {
        stray(format!(
            "a keysend for session {} that its cable did not sign",
            record.session_id
        ))
    })?;
    let key_hex = shared
        .store()
        .session_cable_key(&record.session_id)
        .map_err(|e| KeysendRefusal::NotStored(e.to_string()))?
        .ok_or_else(|| {
            stray(format!(
                "a keysend for session {}, unknown here",
                record.session_id
            ))
        })?;
    let key = bitcoin::secp256k1::PublicKey::from_slice(
        &Vec::<u8>::from_hex(&key_hex).map_err(|e| stray(e.to_string()))?,
    )
    .map_err(|e| stray(e.to_string()))?;
    let hash = <[u8; 32]>::from_hex(payment_hash).map_err(|e| stray(e.to_string()))?;
    proto::lightning::verify_keysend(record, amount_msat, &hash, signature, &key).map_err(|_| {
        stray(format!(
            "a keysend for session {} whose signature is not its cable's",
            record.session_id
        ))
    })
}
