//! Cable identities (design.md "Trust"): the last sequence that opened a session, what each
//! made the socket lose, and bans.

use bitcoin::Amount;
use rusqlite::{params, OptionalExtension};

use super::persist;
use super::{unix_ms, Admitted, CableAuth, ChannelStatus, PaymentStatus, Result, Store};

/// What a loss marks lost with it ([`Store::record_loss`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lost {
    /// An on-chain payment of the session, by payment id: status `lost`.
    Payment(u64),
    /// The session's spillman channel: status `lost`.
    Channel,
    /// A single-fee set of the session, by index: status `failed` (no longer watched; its
    /// latest transaction as stored).
    Set(u32),
    /// Value only: nothing to mark.
    Value,
}

/// What a recorded loss does to the cable of the session (design.md "Blame needs proof").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// Proven its doing (a named transaction replaced a payment of its own): the anomaly
    /// `payment-lost` and a ban until `until_unix_ms` (`None`: for good).
    Ban {
        /// End of the ban, Unix ms; `None`: for good.
        until_unix_ms: Option<i64>,
    },
    /// Not proven its doing (a parent of its payment replaced, by whoever could spend the
    /// parent's inputs): recorded in its losses and in `unproven_lost_sat`, which counts
    /// against its `max_unconfirmed_sat` for good, and audited (`payment-lost-unproven`);
    /// nobody flagged or banned.
    Unproven,
}

/// The row of cable `key_hex`, created when first seen.
pub(super) fn ensure_cable(db: &rusqlite::Connection, key_hex: &str) -> Result<()> {
    db.execute(
        "INSERT OR IGNORE INTO cables (key_hex, first_seen_unix_ms) VALUES (?1, ?2)",
        params![key_hex, unix_ms()],
    )?;
    Ok(())
}

impl Store {
    /// The ban on the cable `key_hex` in force now, if any: (reason, until Unix ms; `None`:
    /// for good). Reads only.
    pub fn ban_of(&self, key_hex: &str) -> Result<Option<(String, Option<i64>)>> {
        let row: Option<(Option<String>, Option<i64>)> = self
            .db
            .query_row(
                "SELECT banned_reason, banned_until_unix_ms FROM cables WHERE key_hex = ?1",
                params![key_hex],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match row {
            Some((Some(reason), until)) if until.is_none_or(|until| unix_ms() < until) => {
                Some((reason, until))
            }
            _ => None,
        })
    }

    /// May the cable of `cable` open a session now? Not while banned; not with a sequence at or
    /// below its last opening request's (a request recorded on the link and played back).
    /// When admitted, `cable.sequence` becomes the last opening sequence (persisted first).
    pub fn admit_cable(&self, cable: &CableAuth) -> Result<Admitted> {
        persist("socket-admit-cable", || {
            let key = cable.key.to_string();
            let tx = self.db.unchecked_transaction()?;
            ensure_cable(&tx, &key)?;
            let (last, banned, until): (i64, Option<String>, Option<i64>) = tx.query_row(
                "SELECT last_opening_sequence, banned_reason, banned_until_unix_ms FROM cables
                 WHERE key_hex = ?1",
                params![key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            if let Some(reason) = banned {
                if until.is_none_or(|until| unix_ms() < until) {
                    return Ok(Admitted::Banned {
                        reason,
                        until_unix_ms: until,
                    });
                }
            }
            let sequence = i64::try_from(cable.sequence).unwrap_or(i64::MAX);
            if sequence <= last {
                return Ok(Admitted::Replay {
                    last_sequence: last as u64,
                });
            }
            tx.execute(
                "UPDATE cables SET last_opening_sequence = ?2 WHERE key_hex = ?1",
                params![key, sequence],
            )?;
            tx.commit()?;
            Ok(Admitted::Yes)
        })
    }

    /// The socket lost `amount` of the cable of `session_id`: `lost` marked lost, added to the
    /// cable's losses, and, as `blame` says, the anomaly `payment-lost` (evidence, audit row)
    /// and a ban, in one transaction: a crash cannot keep the mark and lose the ban (the chain
    /// watch stops looking at what is marked lost). Returns the cable's key (hex), or `None`
    /// for a session bound to no key (opened before sessions were; only the mark is written).
    pub fn record_loss(
        &self,
        session_id: &str,
        lost: Lost,
        amount: Amount,
        reason: &str,
        blame: Blame,
    ) -> Result<Option<String>> {
        persist("socket-record-loss", || {
            let tx = self.db.unchecked_transaction()?;
            match lost {
                Lost::Payment(payment_id) => tx.execute(
                    "UPDATE payments SET status = ?3 WHERE session_id = ?1 AND payment_id = ?2",
                    params![session_id, payment_id as i64, PaymentStatus::Lost],
                )?,
                Lost::Channel => tx.execute(
                    "UPDATE spillman_channels SET status = ?2 WHERE session_id = ?1",
                    params![session_id, ChannelStatus::Lost],
                )?,
                Lost::Set(index) => tx.execute(
                    "UPDATE single_fee_sets SET status = ?3 WHERE session_id = ?1 AND set_index = ?2",
                    params![session_id, index as i64, super::SetStatus::Failed],
                )?,
                Lost::Value => 0,
            };
            let Some(key) = self.session_cable(session_id)? else {
                tx.commit()?;
                return Ok(None);
            };
            let Blame::Ban { until_unix_ms } = blame else {
                tx.execute(
                    "UPDATE cables SET lost_sat = lost_sat + ?2,
                         unproven_lost_sat = unproven_lost_sat + ?2
                     WHERE key_hex = ?1",
                    params![key, amount.to_sat() as i64],
                )?;
                // Audited in the same transaction: no loss recorded without its row.
                let outlet_id = self.session_outlet(session_id)?.unwrap_or_default();
                super::audit::append(
                    &tx,
                    &outlet_id,
                    Some(session_id),
                    "payment-lost-unproven",
                    &format!("{amount} lost: {reason}"),
                )?;
                tx.commit()?;
                return Ok(Some(key));
            };
            let outlet_id = self.session_outlet(session_id)?.unwrap_or_default();
            super::anomalies::anomaly_in(
                &tx,
                &outlet_id,
                Some(session_id),
                Some(&key),
                "payment-lost",
                "ban",
                &serde_json::json!({
                    "lost_sat": amount.to_sat(),
                    "banned_until_unix_ms": until_unix_ms,
                    "time_unix_ms": unix_ms(),
                }),
                reason,
            )?;
            tx.execute(
                "UPDATE cables SET lost_sat = lost_sat + ?2, banned_reason = ?3,
                     banned_at_unix_ms = ?4, banned_until_unix_ms = ?5
                 WHERE key_hex = ?1",
                params![
                    key,
                    amount.to_sat() as i64,
                    reason,
                    unix_ms(),
                    until_unix_ms
                ],
            )?;
            tx.commit()?;
            Ok(Some(key))
        })
    }

    /// Count a refused request (an `OpenChannel` the socket would not sign) of the cable `key`.
    pub fn count_refusal(&self, key: &bitcoin::secp256k1::PublicKey) -> Result<()> {
        persist("socket-count-refusal", || {
            let key = key.to_string();
            ensure_cable(&self.db, &key)?;
            self.db.execute(
                "UPDATE cables SET refusals = refusals + 1 WHERE key_hex = ?1",
                params![key],
            )?;
            Ok(())
        })
    }

    /// What the cable `key` (compressed, hex) has credited and not yet final, over all its
    /// sessions: the socket's exposure to it (`max_unconfirmed_sat`, design.md "Trust"): its
    /// `onchain` payments `accepted` or `broadcast` (not `final_confirmations` deep), the
    /// value of its single-fee sets held, or broadcast and not yet confirmed (a set the cable
    /// could still double-spend; a confirmed one is still watched until final), what its
    /// spillman channels credited on a deposit not yet seen confirmed (open, or closed with
    /// the close not yet confirmed), and what the socket lost on its payments without proof it
    /// was the cable's doing (a parent replaced), for good. A proven loss bans the cable
    /// instead, for `ban_secs`.
    pub fn unconfirmed_of_cable(&self, key_hex: &str) -> Result<Amount> {
        let sat: i64 = self.db.query_row(
            "SELECT (SELECT COALESCE(SUM(p.amount_sat), 0) FROM payments p
                     JOIN sessions s ON s.id = p.session_id
                     WHERE s.cable_key_hex = ?1 AND p.status IN ('accepted', 'broadcast'))
                  + (SELECT COALESCE(SUM(f.latest_value_sat), 0) FROM single_fee_sets f
                     JOIN sessions s ON s.id = f.session_id
                     WHERE s.cable_key_hex = ?1 AND f.status IN ('open', 'broadcast')
                       AND f.confirmed_height IS NULL)
                  + (SELECT COALESCE(SUM(c.highest_total_sat), 0) FROM spillman_channels c
                     JOIN sessions s ON s.id = c.session_id
                     WHERE s.cable_key_hex = ?1 AND c.status IN ('funded', 'closed')
                       AND c.deposit_confirmed = 0 AND c.close_confirmed_height IS NULL)
                  + (SELECT COALESCE(MAX(unproven_lost_sat), 0) FROM cables WHERE key_hex = ?1)",
            params![key_hex],
            |r| r.get(0),
        )?;
        Ok(Amount::from_sat(sat as u64))
    }

    /// The cable key (hex) a session is bound to, if any.
    pub fn session_cable(&self, session_id: &str) -> Result<Option<String>> {
        self.db
            .query_row(
                "SELECT cable_key_hex FROM sessions WHERE id = ?1 AND cable_key_hex != ''",
                params![session_id],
                |r| r.get(0),
            )
            .optional()
    }
}
