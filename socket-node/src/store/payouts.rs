//! Payout addresses: each session is paid to a fresh BIP84 receive address of the socket's
//! wallet. An outlet offers one until a session opens on it (bound to that session), and gets
//! the next index when the session ends, so the chain tells sessions apart and no address is
//! paid twice. A session that ends with nothing paid gives its address back to its outlet
//! (`Store::end_session`), so that openings never paid do not walk the receive index past the
//! gap a restore from the seed scans.

use bitcoin::ScriptBuf;
use rusqlite::{params, OptionalExtension};

use super::persist;
use super::{Result, Store};

/// A payout address of the socket's wallet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payout {
    /// Its index on the wallet's external (receive) keychain, BIP84 `m/84'/coin'/0'/0/index`.
    pub index: u32,
    /// Its scriptPubKey.
    pub script: ScriptBuf,
}

impl Store {
    /// The payout address `outlet_id` offers: its latest one not yet bound to a session.
    pub fn offered_payout(&self, outlet_id: &str) -> Result<Option<Payout>> {
        self.db
            .query_row(
                "SELECT payout_index, script_hex FROM payout_addresses
                 WHERE outlet_id = ?1 AND session_id IS NULL
                 ORDER BY payout_index DESC LIMIT 1",
                params![outlet_id],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
            )
            .optional()?
            .map(|(index, hex)| payout_of(index, &hex))
            .transpose()
    }

    /// The index the next payout address takes: one above every index handed out (from 0).
    pub fn next_payout_index(&self) -> Result<u32> {
        self.db.query_row(
            "SELECT COALESCE(MAX(payout_index) + 1, 0) FROM payout_addresses",
            [],
            |r| r.get::<_, i64>(0).map(|i| i as u32),
        )
    }

    /// Record `payout` as the address `outlet_id` offers from now on.
    pub fn add_payout(&self, outlet_id: &str, payout: &Payout) -> Result<()> {
        persist("socket-add-payout", || {
            self.db.execute(
                "INSERT INTO payout_addresses (payout_index, outlet_id, script_hex) VALUES (?1, ?2, ?3)",
                params![payout.index, outlet_id, payout.script.to_hex_string()],
            )?;
            Ok(())
        })
    }

    /// The index of the payout address bound to a session, if any.
    pub fn session_payout_index(&self, session_id: &str) -> Result<Option<u32>> {
        self.db
            .query_row(
                "SELECT payout_index FROM payout_addresses WHERE session_id = ?1",
                params![session_id],
                |r| r.get::<_, i64>(0).map(|i| i as u32),
            )
            .optional()
    }

    /// The payout script of a session, if the session exists and has one (sessions stored
    /// before version 2 have none).
    pub fn session_payout(&self, session_id: &str) -> Result<Option<ScriptBuf>> {
        let hex: Option<String> = self
            .db
            .query_row(
                "SELECT payout_script_hex FROM sessions WHERE id = ?1",
                params![session_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(hex
            .filter(|h| !h.is_empty())
            .and_then(|h| ScriptBuf::from_hex(&h).ok()))
    }
}

fn payout_of(index: i64, hex: &str) -> Result<Payout> {
    let script = ScriptBuf::from_hex(hex).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(1, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Payout {
        index: index as u32,
        script,
    })
}
