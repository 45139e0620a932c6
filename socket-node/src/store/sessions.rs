//! Sessions: opened per outlet, their energy, how they ended, what was credited.

use proto::units::EnergyMwh;
use proto::Scheme;
use rusqlite::types::Type;
use rusqlite::{params, OptionalExtension};

use super::persist;
use super::{unix_ms, Authorized, CableAuth, Payout, Result, Store, StoredSession};

impl Store {
    /// Record a new session, paid to `payout` (the address its outlet offered, bound to it
    /// from now on) and to the cable of `cable` (its first request's sequence), in one
    /// transaction. Errors: `StatementChangedRows(0)` when `payout` is not
    /// offered (unknown, or bound to another session).
    pub fn open_session(
        &self,
        id: &str,
        outlet_id: &str,
        scheme: Scheme,
        payout: &Payout,
        cable: &CableAuth,
    ) -> Result<()> {
        persist("socket-open-session", || {
            let tx = self.db.unchecked_transaction()?;
            tx.execute(
                "INSERT INTO sessions (id, outlet_id, scheme, started_at_unix_ms, payout_script_hex,
                                       cable_key_hex, last_sequence)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    id,
                    outlet_id,
                    scheme.name(),
                    unix_ms(),
                    payout.script.to_hex_string(),
                    cable.key.to_string(),
                    cable.sequence as i64
                ],
            )?;
            let bound = tx.execute(
                "UPDATE payout_addresses SET session_id = ?1
                 WHERE payout_index = ?2 AND session_id IS NULL",
                params![id, payout.index],
            )?;
            // An address is bound to one session at a time (one nothing paid gives it back).
            if bound != 1 {
                return Err(rusqlite::Error::StatementChangedRows(bound));
            }
            tx.commit()
        })
    }

    /// Accept a request of `session_id` signed by `cable.key` with `cable.sequence`: the key
    /// must be the session's and the sequence above the last accepted, which it becomes
    /// (persisted before the request is acted on).
    pub fn authorize(&self, session_id: &str, cable: &CableAuth) -> Result<Authorized> {
        persist("socket-authorize", || {
            let key = cable.key.to_string();
            let accepted = self.db.execute(
                "UPDATE sessions SET last_sequence = ?3
                 WHERE id = ?1 AND cable_key_hex = ?2 AND last_sequence < ?3",
                params![session_id, key, cable.sequence as i64],
            )?;
            if accepted == 1 {
                return Ok(Authorized::Yes);
            }
            let row: Option<(String, i64)> = self
                .db
                .query_row(
                    "SELECT cable_key_hex, last_sequence FROM sessions WHERE id = ?1",
                    params![session_id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            Ok(match row {
                None => Authorized::NoSession,
                Some((bound, _)) if bound != key => Authorized::OtherCable,
                Some((_, last)) => Authorized::Replay {
                    last_sequence: last as u64,
                },
            })
        })
    }

    /// The identity key (hex of the 33-byte compressed key) of the cable that opened a session,
    /// if the session exists: the key its keysends must be signed by.
    pub fn session_cable_key(&self, session_id: &str) -> Result<Option<String>> {
        self.db
            .query_row(
                "SELECT cable_key_hex FROM sessions WHERE id = ?1",
                params![session_id],
                |r| r.get(0),
            )
            .optional()
    }

    /// The outlet a session is on, if the session exists.
    pub fn session_outlet(&self, session_id: &str) -> Result<Option<String>> {
        self.db
            .query_row(
                "SELECT outlet_id FROM sessions WHERE id = ?1",
                params![session_id],
                |r| r.get(0),
            )
            .optional()
    }

    /// The scheme a session pays with, if the session exists.
    pub fn session_scheme(&self, session_id: &str) -> Result<Option<Scheme>> {
        self.db
            .query_row(
                "SELECT scheme FROM sessions WHERE id = ?1",
                params![session_id],
                |r| {
                    let name: String = r.get(0)?;
                    name.parse::<Scheme>().map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(0, Type::Text, e.into())
                    })
                },
            )
            .optional()
    }

    /// Save the energy delivered so far in each of `energies`' sessions still open (an ended
    /// session keeps its final count), in one SQLite transaction.
    pub fn save_energies(&mut self, energies: &[(String, EnergyMwh)]) -> Result<()> {
        persist("socket-save-energies", || {
            let tx = self.db.transaction()?;
            {
                let mut update = tx.prepare_cached(
                    "UPDATE sessions SET energy_used_mwh = ?2 WHERE id = ?1 AND ended_at_unix_ms IS NULL",
                )?;
                for (session_id, used) in energies {
                    update.execute(params![session_id, used.0 as i64])?;
                }
            }
            tx.commit()
        })
    }

    /// Close a session with its final energy and why it ended.
    pub fn end_session(&self, session_id: &str, used: EnergyMwh, reason: &str) -> Result<()> {
        persist("socket-end-session", || {
            let tx = self.db.unchecked_transaction()?;
            tx.execute(
                "UPDATE sessions SET ended_at_unix_ms = ?2, end_reason = ?3, energy_used_mwh = ?4
                 WHERE id = ?1 AND ended_at_unix_ms IS NULL",
                params![session_id, unix_ms(), reason, used.0 as i64],
            )?;
            // A session nothing paid (no payment, input set or channel of any kind: an
            // abandoned opening, maybe a stranger's) gives its payout address back to its
            // outlet, so that openings never paid do not walk the wallet's receive index past
            // what a restore from the seed scans.
            tx.execute(
                "UPDATE payout_addresses SET session_id = NULL
                 WHERE session_id = ?1
                   AND NOT EXISTS (SELECT 1 FROM payments WHERE session_id = ?1)
                   AND NOT EXISTS (SELECT 1 FROM single_fee_sets WHERE session_id = ?1)
                   AND NOT EXISTS (SELECT 1 FROM spillman_channels WHERE session_id = ?1)
                   AND NOT EXISTS (SELECT 1 FROM ln_payments WHERE session_id = ?1)",
                params![session_id],
            )?;
            tx.commit()
        })
    }

    /// The session of `outlet_id` that has not ended, if any.
    pub fn open_session_of(&self, outlet_id: &str) -> Result<Option<StoredSession>> {
        let row = self
            .db
            .query_row(
                "SELECT id, energy_used_mwh FROM sessions
                 WHERE outlet_id = ?1 AND ended_at_unix_ms IS NULL
                 ORDER BY started_at_unix_ms DESC LIMIT 1",
                params![outlet_id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
            )
            .optional()?;
        let Some((id, used)) = row else {
            return Ok(None);
        };
        let (credited, payments) = self.credit_of(&id)?;
        Ok(Some(StoredSession {
            id,
            energy_used: EnergyMwh(used as u64),
            credited,
            payments,
        }))
    }

    /// The highest payment id issued terms in a session (0: none yet).
    pub fn last_payment_id(&self, session_id: &str) -> Result<u64> {
        let last: i64 = self.db.query_row(
            "SELECT COALESCE(MAX(payment_id), 0) FROM terms WHERE session_id = ?1",
            params![session_id],
            |r| r.get(0),
        )?;
        Ok(last as u64)
    }

    /// Energy credited to a session and the number of payments behind it (on chain and over
    /// Lightning).
    pub fn credit_of(&self, session_id: &str) -> Result<(EnergyMwh, u64)> {
        self.db.query_row(
            "SELECT COALESCE(SUM(quota_mwh), 0), COUNT(*) FROM (
                 SELECT quota_mwh FROM payments WHERE session_id = ?1 AND status != 'failed'
                 UNION ALL
                 SELECT quota_mwh FROM ln_payments WHERE session_id = ?1)",
            params![session_id],
            |r| {
                Ok((
                    EnergyMwh(r.get::<_, i64>(0)? as u64),
                    r.get::<_, i64>(1)? as u64,
                ))
            },
        )
    }
}
