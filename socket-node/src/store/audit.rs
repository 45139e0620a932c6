//! The audit log: what happened on each outlet, in order, as a hash chain (design.md
//! "Attestation"; seed 004 §5, an immutable and auditable trail).
//!
//! The encoding is the spec of `operator.proto` ("The socket's audit log and its anchors"),
//! with test vectors in `proto/testvectors/audit.json`. Row `seq` (1, 2, 3, ... with no gap)
//! carries
//! `hash = TaggedHash("t2t/audit", prev_hash || encoding(row))`, where `prev_hash` is the hash of
//! row `seq - 1` (32 zero bytes for row 1) and `encoding(row)` is
//! `u64-BE seq || i64-BE at_unix_ms || str(outlet_id) || u8 has_session || str(session_id or "")
//! || str(event) || str(detail)`, each `str` a u32-BE byte length and the UTF-8 bytes. An edited
//! row no longer hashes to its `hash`; a removed or reordered row breaks `seq` or the link to
//! `prev_hash`; rewriting the whole chain after a row changes the head, which the anchors on
//! Bitcoin ([`Store::record_anchor`]) hold. [`Store::verify_audit`] finds and names the first
//! row that does not hold.

use bitcoin::hashes::{sha256t_hash_newtype, Hash};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::persist;
use super::{unix_ms, Result, Store};

sha256t_hash_newtype! {
    /// Tag `t2t/audit`.
    pub struct AuditTag = hash_str("t2t/audit");
    /// BIP 340 tagged hash of an audit row and the hash of the row before it.
    #[hash_newtype(forward)]
    pub struct AuditHash(_);
}

/// The hash of the row before the first one.
pub const GENESIS: [u8; 32] = [0; 32];

/// The hash of the audit row `seq` given the hash of the row before it (see the module doc).
pub fn row_hash(
    prev_hash: &[u8; 32],
    seq: u64,
    at_unix_ms: i64,
    outlet_id: &str,
    session_id: Option<&str>,
    event: &str,
    detail: &str,
) -> [u8; 32] {
    fn text(message: &mut Vec<u8>, s: &str) {
        message.extend_from_slice(&(s.len() as u32).to_be_bytes());
        message.extend_from_slice(s.as_bytes());
    }
    let mut message = Vec::with_capacity(32 + 16 + 17 + detail.len() + 64);
    message.extend_from_slice(prev_hash);
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(&at_unix_ms.to_be_bytes());
    text(&mut message, outlet_id);
    message.push(u8::from(session_id.is_some()));
    text(&mut message, session_id.unwrap_or_default());
    text(&mut message, event);
    text(&mut message, detail);
    AuditHash::hash(&message).to_byte_array()
}

fn hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = bitcoin::hex::FromHex::from_hex(text).ok()?;
    Some(bytes)
}

/// Append one row to the chain on `db` (inside the caller's SQLite transaction, if any).
pub(super) fn append(
    db: &Connection,
    outlet_id: &str,
    session_id: Option<&str>,
    event: &str,
    detail: &str,
) -> Result<()> {
    use bitcoin::hex::DisplayHex;
    let last: Option<(i64, String)> = db
        .query_row(
            "SELECT seq, hash_hex FROM audit WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let (seq, prev) = match last {
        Some((seq, hash)) => (seq as u64 + 1, hex32(&hash).unwrap_or(GENESIS)),
        None => (1, GENESIS),
    };
    let at = unix_ms();
    let hash = row_hash(&prev, seq, at, outlet_id, session_id, event, detail);
    db.execute(
        "INSERT INTO audit (seq, at_unix_ms, outlet_id, session_id, event, detail, hash_hex)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            seq as i64,
            at,
            outlet_id,
            session_id,
            event,
            detail,
            hash.to_lower_hex_string()
        ],
    )?;
    Ok(())
}

/// Give every row written before the chain existed (schema version 6 and older) its place in
/// the chain, in the order written. Run once at open; nothing when there are none.
pub(super) fn chain_old_rows(db: &mut Connection) -> Result<()> {
    use bitcoin::hex::DisplayHex;
    let tx = db.transaction()?;
    let old: Vec<(i64, i64, String, Option<String>, String, String)> = {
        let mut statement = tx.prepare(
            "SELECT rowid, at_unix_ms, outlet_id, session_id, event, detail FROM audit
             WHERE seq IS NULL ORDER BY rowid",
        )?;
        let rows = statement.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        rows.collect::<Result<_>>()?
    };
    if old.is_empty() {
        return Ok(());
    }
    let mut prev = GENESIS;
    let mut seq = 0u64;
    for (rowid, at, outlet, session, event, detail) in old {
        seq += 1;
        let hash = row_hash(&prev, seq, at, &outlet, session.as_deref(), &event, &detail);
        tx.execute(
            "UPDATE audit SET seq = ?2, hash_hex = ?3 WHERE rowid = ?1",
            params![rowid, seq as i64, hash.to_lower_hex_string()],
        )?;
        prev = hash;
    }
    tx.commit()
}

/// Where the chain does not hold ([`Store::verify_audit`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditBreak {
    /// The first row that does not hold (its `seq`, or the `seq` expected there).
    pub seq: u64,
    /// What is wrong: `edited`, `removed`, `out-of-order`.
    pub kind: &'static str,
    /// For people.
    pub detail: String,
}

/// An anchor of the chain's head on Bitcoin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditAnchor {
    /// The last row the anchor covers.
    pub seq: u64,
    /// That row's hash, the head anchored (hex).
    pub head_hash_hex: String,
    /// The anchor transaction (its OP_RETURN output carries the head).
    pub txid: String,
    /// When it was broadcast, Unix ms.
    pub at_unix_ms: i64,
    /// Its fee, sat.
    pub fee_sat: u64,
    /// Its size, vbytes.
    pub vsize: u64,
}

impl Store {
    /// Append to the audit log (one row of the hash chain).
    pub fn audit(
        &self,
        outlet_id: &str,
        session_id: Option<&str>,
        event: &str,
        detail: &str,
    ) -> Result<()> {
        persist("socket-audit", || {
            append(&self.db, outlet_id, session_id, event, detail)
        })
    }

    /// The chain's head: the last row's `seq` and hash; `None` for an empty log.
    pub fn audit_head(&self) -> Result<Option<(u64, [u8; 32])>> {
        let head: Option<(i64, String)> = self
            .db
            .query_row(
                "SELECT seq, hash_hex FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(head.and_then(|(seq, hash)| Some((seq as u64, hex32(&hash)?))))
    }

    /// Recompute the chain from its first row: `Ok(rows checked)` when every row holds, or the
    /// first break, named. Also checks that each anchor's head is the hash of its row.
    pub fn verify_audit(&self) -> Result<std::result::Result<u64, AuditBreak>> {
        let mut statement = self.db.prepare(
            "SELECT seq, at_unix_ms, outlet_id, session_id, event, detail, hash_hex FROM audit
             ORDER BY rowid",
        )?;
        let mut rows = statement.query([])?;
        let mut prev = GENESIS;
        let mut expected = 1u64;
        let mut hashes = std::collections::HashMap::new();
        while let Some(r) = rows.next()? {
            let seq: Option<i64> = r.get(0)?;
            let Some(seq) = seq.map(|s| s as u64) else {
                return Ok(Err(AuditBreak {
                    seq: expected,
                    kind: "edited",
                    detail: "a row without a place in the chain".into(),
                }));
            };
            if seq != expected {
                let kind = if seq > expected {
                    "removed"
                } else {
                    "out-of-order"
                };
                return Ok(Err(AuditBreak {
                    seq: expected,
                    kind,
                    detail: format!("row {expected} expected, row {seq} found"),
                }));
            }
            let session: Option<String> = r.get(3)?;
            let hash = row_hash(
                &prev,
                seq,
                r.get(1)?,
                &r.get::<_, String>(2)?,
                session.as_deref(),
                &r.get::<_, String>(4)?,
                &r.get::<_, String>(5)?,
            );
            let stored: String = r.get(6)?;
            if hex32(&stored) != Some(hash) {
                return Ok(Err(AuditBreak {
                    seq,
                    kind: "edited",
                    detail: format!(
                        "row {seq} ({}) does not hash to its stored hash",
                        r.get::<_, String>(4)?
                    ),
                }));
            }
            hashes.insert(seq, hash);
            prev = hash;
            expected += 1;
        }
        for anchor in self.audit_anchors()? {
            let Some(hash) = hashes.get(&anchor.seq) else {
                return Ok(Err(AuditBreak {
                    seq: anchor.seq,
                    kind: "removed",
                    detail: format!(
                        "anchor {} names row {} that is gone",
                        anchor.txid, anchor.seq
                    ),
                }));
            };
            if hex32(&anchor.head_hash_hex) != Some(*hash) {
                return Ok(Err(AuditBreak {
                    seq: anchor.seq,
                    kind: "edited",
                    detail: format!(
                        "row {} no longer hashes to the head anchored by {}",
                        anchor.seq, anchor.txid
                    ),
                }));
            }
        }
        Ok(Ok(expected - 1))
    }

    /// Record an anchor transaction of the head `(seq, hash)`.
    pub fn record_anchor(
        &self,
        seq: u64,
        head: &[u8; 32],
        txid: &bitcoin::Txid,
        fee: bitcoin::Amount,
        vsize: u64,
    ) -> Result<()> {
        persist("socket-record-anchor", || {
            use bitcoin::hex::DisplayHex;
            self.db.execute(
                "INSERT INTO audit_anchors (seq, head_hash_hex, txid, at_unix_ms, fee_sat, vsize)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    seq as i64,
                    head.to_lower_hex_string(),
                    txid.to_string(),
                    unix_ms(),
                    fee.to_sat() as i64,
                    vsize as i64
                ],
            )?;
            Ok(())
        })
    }

    /// Every anchor, oldest first.
    pub fn audit_anchors(&self) -> Result<Vec<AuditAnchor>> {
        let mut statement = self.db.prepare(
            "SELECT seq, head_hash_hex, txid, at_unix_ms, fee_sat, vsize FROM audit_anchors
             ORDER BY seq",
        )?;
        let rows = statement.query_map([], |r| {
            Ok(AuditAnchor {
                seq: r.get::<_, i64>(0)? as u64,
                head_hash_hex: r.get(1)?,
                txid: r.get(2)?,
                at_unix_ms: r.get(3)?,
                fee_sat: r.get::<_, i64>(4)? as u64,
                vsize: r.get::<_, i64>(5)? as u64,
            })
        })?;
        rows.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logged() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for i in 0..5 {
            store
                .audit(
                    "outlet-1",
                    Some("s"),
                    "payment-refused",
                    &format!("row {i}"),
                )
                .unwrap();
        }
        (dir, store)
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let (_dir, store) = logged();
        assert_eq!(store.verify_audit().unwrap(), Ok(5));
        assert_eq!(store.audit_head().unwrap().unwrap().0, 5);
    }

    #[test]
    fn an_edited_row_is_found_and_named() {
        let (_dir, store) = logged();
        store
            .db
            .execute(
                "UPDATE audit SET detail = 'nothing happened' WHERE seq = 3",
                [],
            )
            .unwrap();
        let broken = store.verify_audit().unwrap().unwrap_err();
        assert_eq!((broken.seq, broken.kind), (3, "edited"));
    }

    #[test]
    fn a_removed_row_is_found() {
        let (_dir, store) = logged();
        store
            .db
            .execute("DELETE FROM audit WHERE seq = 2", [])
            .unwrap();
        let broken = store.verify_audit().unwrap().unwrap_err();
        assert_eq!((broken.seq, broken.kind), (2, "removed"));
    }

    #[test]
    fn a_rewritten_chain_is_found_by_its_anchor() {
        let (_dir, store) = logged();
        let (seq, head) = store.audit_head().unwrap().unwrap();
        let txid = "0000000000000000000000000000000000000000000000000000000000000001"
            .parse()
            .unwrap();
        store
            .record_anchor(seq, &head, &txid, bitcoin::Amount::from_sat(200), 150)
            .unwrap();
        // Rewrite row 4 and every hash after it, as someone with the database could.
        store
            .db
            .execute("UPDATE audit SET detail = 'rewritten' WHERE seq = 4", [])
            .unwrap();
        store
            .db
            .execute("UPDATE audit SET seq = NULL, hash_hex = NULL", [])
            .unwrap();
        let mut db = Connection::open(_dir.path().join("socket.sqlite")).unwrap();
        chain_old_rows(&mut db).unwrap();
        let broken = store.verify_audit().unwrap().unwrap_err();
        assert_eq!((broken.seq, broken.kind), (5, "edited"), "{broken:?}");
    }

    /// The hash of a row is fixed by the module doc's encoding (a vector for other
    /// implementations of `audit verify`).
    #[test]
    fn the_row_hash_test_vector_holds() {
        use bitcoin::hex::DisplayHex;
        let first = row_hash(
            &GENESIS,
            1,
            1_700_000_000_000,
            "outlet-1",
            None,
            "revoked",
            "cable",
        );
        let second = row_hash(&first, 2, 1_700_000_000_001, "outlet-1", Some("s"), "e", "");
        assert_ne!(first, second);
        // Recomputed by hand: TaggedHash("t2t/audit", 32 zero bytes || ...).
        let mut message = vec![0u8; 32];
        message.extend_from_slice(&1u64.to_be_bytes());
        message.extend_from_slice(&1_700_000_000_000i64.to_be_bytes());
        message.extend_from_slice(&8u32.to_be_bytes());
        message.extend_from_slice(b"outlet-1");
        message.push(0);
        message.extend_from_slice(&0u32.to_be_bytes());
        message.extend_from_slice(&7u32.to_be_bytes());
        message.extend_from_slice(b"revoked");
        message.extend_from_slice(&5u32.to_be_bytes());
        message.extend_from_slice(b"cable");
        let tag = bitcoin::hashes::sha256::Hash::hash(b"t2t/audit").to_byte_array();
        let mut tagged = tag.to_vec();
        tagged.extend_from_slice(&tag);
        tagged.extend_from_slice(&message);
        assert_eq!(
            first.to_lower_hex_string(),
            bitcoin::hashes::sha256::Hash::hash(&tagged)
                .to_byte_array()
                .to_lower_hex_string()
        );
    }
}
