//! Anchors of the audit log's head on Bitcoin (design.md "Attestation"; seed 004 §5: a trail
//! nobody can rewrite). Every `anchor_interval_secs`, when rows were added since the last
//! anchor, the socket's wallet sends a transaction with one `OP_RETURN` output carrying
//! [`anchor_data`] of the head (`seq` and hash of the last row, [`crate::store::audit`]), and its
//! change back to itself. Once that transaction is buried, rewriting any row up to `seq` (even
//! with every hash after it recomputed) no longer matches the chain: [`verify`] says which row.
//!
//! Cost: one P2WPKH input, the 44-byte `OP_RETURN` output and a P2WPKH change: about 165 vbytes
//! (measured by the anchor test and logged with each anchor), i.e. 165 sat per anchor at
//! 1 sat/vB.

use bitcoin::hex::DisplayHex;
use bitcoin::{Amount, FeeRate, Transaction, Txid};
use serde::Serialize;
use wallet::chain::Chain;

use crate::shared::Shared;
use crate::store::{AuditAnchor, AuditBreak, Store};

/// The first bytes of an anchor's `OP_RETURN` data.
pub const ANCHOR_MAGIC: &[u8; 4] = b"t2ta";

/// The `OP_RETURN` data of an anchor: `"t2ta" || u64-BE seq || 32-byte row hash` (44 bytes).
pub fn anchor_data(seq: u64, head: &[u8; 32]) -> [u8; 44] {
    let mut data = [0u8; 44];
    data[..4].copy_from_slice(ANCHOR_MAGIC);
    data[4..12].copy_from_slice(&seq.to_be_bytes());
    data[12..].copy_from_slice(head);
    data
}

/// The anchor data an `OP_RETURN` output of `tx` carries, if any.
fn anchored_in(tx: &Transaction) -> Option<(u64, [u8; 32])> {
    tx.output.iter().find_map(|out| {
        let mut instructions = out.script_pubkey.instructions();
        match (instructions.next(), instructions.next()) {
            (
                Some(Ok(bitcoin::script::Instruction::Op(bitcoin::opcodes::all::OP_RETURN))),
                Some(Ok(bitcoin::script::Instruction::PushBytes(data))),
            ) if data.len() == 44 && data.as_bytes().starts_with(ANCHOR_MAGIC) => {
                let bytes = data.as_bytes();
                let seq = u64::from_be_bytes(bytes[4..12].try_into().ok()?);
                Some((seq, bytes[12..].try_into().ok()?))
            }
            _ => None,
        }
    })
}

/// Anchor the head when it is due (the settler calls this each second): `anchor_interval_secs`
/// since the last try (or the start), and rows added since the last anchor. Failures (no coins
/// yet, bitcoind away) are logged and tried again at the next interval.
pub(crate) fn anchor_due(shared: &Shared, last_try: &mut Option<std::time::Instant>) {
    let interval = shared.config.anchor_interval_secs;
    if interval == 0
        || last_try.is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(interval))
    {
        return;
    }
    *last_try = Some(std::time::Instant::now());
    let (head, anchored) = {
        let store = shared.store();
        (
            store.audit_head().ok().flatten(),
            store
                .audit_anchors()
                .ok()
                .and_then(|a| a.last().map(|a| a.seq)),
        )
    };
    let Some((seq, hash)) = head else { return };
    if anchored.is_some_and(|last| last >= seq) {
        return;
    }
    match anchor(shared, seq, &hash) {
        Ok((txid, fee, vsize)) => {
            tracing::info!(seq, head = %hash.to_lower_hex_string(), %txid, %fee, vsize, "audit log anchored");
        }
        Err(e) => tracing::warn!(seq, "audit log not anchored: {e:#}"),
    }
}

fn anchor(shared: &Shared, seq: u64, hash: &[u8; 32]) -> anyhow::Result<(Txid, Amount, u64)> {
    let data = anchor_data(seq, hash);
    let fee_rate = FeeRate::from_sat_per_vb(shared.config.anchor_fee_rate_sat_per_vb)
        .ok_or_else(|| anyhow::anyhow!("anchor_fee_rate_sat_per_vb is too high"))?;
    let signed = {
        let mut wallet = shared.wallet();
        wallet.sync(&shared.chain)?;
        let push: &bitcoin::script::PushBytes = (&data).into();
        wallet.commit_data(
            push,
            fee_rate,
            Amount::from_sat(shared.config.anchor_max_fee_sat),
        )?
    };
    let txid = shared.chain.broadcast(&signed.tx)?;
    // Only now is its change ours to spend next, and its inputs spent.
    shared.wallet().record_sent(&signed.tx)?;
    let vsize = signed.tx.vsize() as u64;
    shared
        .store()
        .record_anchor(seq, hash, &txid, signed.fee, vsize)?;
    Ok((txid, signed.fee, vsize))
}

/// One anchor as checked against the chain.
#[derive(Debug, Clone, Serialize)]
pub struct CheckedAnchor {
    /// The anchor as stored.
    #[serde(flatten)]
    pub anchor: AuditAnchor,
    /// Confirmations now (0: in the mempool); `None` when bitcoind does not know the
    /// transaction.
    pub confirmations: Option<u32>,
    /// Whether its `OP_RETURN` carries exactly the stored head.
    pub matches: bool,
}

/// What `socket-node audit verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    /// Rows checked, when the whole chain holds.
    pub rows: Option<u64>,
    /// The first row that does not hold.
    pub broken: Option<AuditBreak>,
    /// Every anchor, checked on chain.
    pub anchors: Vec<CheckedAnchor>,
}

impl Verified {
    /// Whether the chain holds and every anchor is on chain with the head it claims.
    pub fn ok(&self) -> bool {
        self.broken.is_none()
            && self
                .anchors
                .iter()
                .all(|a| a.matches && a.confirmations.is_some())
    }
}

/// Check the audit log of `store`: recompute the chain ([`Store::verify_audit`]) and look up
/// each anchor on `chain` (its transaction, its `OP_RETURN` data, its confirmations). Errors:
/// the store's; bitcoind not answering for the chain tip.
pub fn verify(store: &Store, chain: &Chain) -> anyhow::Result<Verified> {
    let (rows, broken) = match store.verify_audit()? {
        Ok(rows) => (Some(rows), None),
        Err(broken) => (None, Some(broken)),
    };
    let tip = chain.height()?;
    let anchors = store
        .audit_anchors()?
        .into_iter()
        .map(|anchor| {
            let txid: Option<Txid> = anchor.txid.parse().ok();
            let tx: Option<Transaction> = txid.and_then(|txid| {
                chain
                    .call::<String>("getrawtransaction", &[serde_json::json!(txid.to_string())])
                    .ok()
                    .and_then(|hex| bitcoin::consensus::encode::deserialize_hex(&hex).ok())
            });
            let matches = tx
                .as_ref()
                .and_then(anchored_in)
                .is_some_and(|(seq, head)| {
                    seq == anchor.seq && head.to_lower_hex_string() == anchor.head_hash_hex
                });
            let confirmations = tx.as_ref().and_then(|tx| {
                chain
                    .confirmation_height(&tx.compute_txid())
                    .ok()
                    .map(|h| h.map_or(0, |h| tip.saturating_sub(h) + 1))
            });
            CheckedAnchor {
                anchor,
                confirmations,
                matches,
            }
        })
        .collect();
    Ok(Verified {
        rows,
        broken,
        anchors,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchor_data_reads_back_from_its_op_return() {
        let head = [7u8; 32];
        let data = anchor_data(42, &head);
        let push: &bitcoin::script::PushBytes = (&data).into();
        let tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: bitcoin::absolute::LockTime::ZERO,
            input: Vec::new(),
            output: vec![bitcoin::TxOut {
                value: Amount::ZERO,
                script_pubkey: bitcoin::ScriptBuf::new_op_return(push),
            }],
        };
        assert_eq!(anchored_in(&tx), Some((42, head)));
        assert_eq!(tx.output[0].script_pubkey.len(), 46);
    }
}

/// `proto/testvectors/audit.json`: the audit row hashes and an anchor script, as
/// `operator.proto` specifies them, for implementers of `audit verify` in other languages
/// (`T2T_WRITE_TESTVECTORS=1` rewrites the file from this code).
#[cfg(test)]
mod vectors {
    use bitcoin::hex::DisplayHex;
    use serde_json::{json, Value};

    use super::anchor_data;
    use crate::store::audit::{row_hash, GENESIS};

    const VECTORS: &str = "../proto/testvectors/audit.json";

    fn computed() -> Value {
        let rows = [
            (
                1u64,
                1_795_000_000_000i64,
                "outlet-1",
                Some("5e55"),
                "payment-credited",
                "txid 00ff",
            ),
            (
                2,
                1_795_000_001_500,
                "",
                None,
                "revoked",
                "cable 02aa: stolen",
            ),
            (
                3,
                1_795_000_002_000,
                "outlet-2",
                Some(""),
                "anomaly",
                "é ünïcode",
            ),
        ];
        let mut prev = GENESIS;
        let mut out = Vec::new();
        for (seq, at, outlet, session, event, detail) in rows {
            let hash = row_hash(&prev, seq, at, outlet, session, event, detail);
            out.push(json!({
                "seq": seq,
                "at_unix_ms": at,
                "outlet_id": outlet,
                "session_id": session,
                "event": event,
                "detail": detail,
                "prev_hash_hex": prev.to_lower_hex_string(),
                "hash_hex": hash.to_lower_hex_string(),
            }));
            prev = hash;
        }
        let data = anchor_data(3, &prev);
        let push: &bitcoin::script::PushBytes = (&data).into();
        json!({
            "about": "t2t audit log (operator.proto, 'The socket's audit log and its anchors'): hash_n = TaggedHash(\"t2t/audit\", hash_{n-1} || u64-BE seq || i64-BE at_unix_ms || str(outlet_id) || u8 has_session || str(session_id or \"\") || str(event) || str(detail)), str = u32-BE length || UTF-8 bytes, hash_0 = 32 zero bytes; session_id null means has_session = 0 (row 3 has an empty session id, has_session = 1). The anchor of row n is an output with script OP_RETURN <\"t2ta\" || u64-BE n || hash_n>.",
            "rows": out,
            "anchor": {
                "seq": 3,
                "head_hash_hex": prev.to_lower_hex_string(),
                "script_pubkey_hex": bitcoin::ScriptBuf::new_op_return(push).to_hex_string(),
            }
        })
    }

    #[test]
    fn the_audit_test_vectors_hold() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(VECTORS);
        let computed = computed();
        if std::env::var_os("T2T_WRITE_TESTVECTORS").is_some() {
            std::fs::write(
                &path,
                serde_json::to_string_pretty(&computed).unwrap() + "\n",
            )
            .unwrap();
        }
        let stored: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(stored, computed, "{VECTORS} is stale");
    }
}
