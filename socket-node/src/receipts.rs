//! Metering receipts for the owner (design.md "Attestation"): export one session's record
//! (`socket-node receipts SESSION`) and check such a file (`socket-node verify-receipts`), with
//! the rule of [`proto::receipt::verify_session`], which any third party can run too.

use std::path::Path;

use anyhow::Context;
use proto::receipt::{MeterTolerance, SessionReceipts, SessionSummary};

use crate::store::Store;

/// The record of `session_id` in the store of `data_dir`, whose socket has `identity_key`
/// (33-byte compressed, hex). Errors: the store, or no such session.
pub fn export(
    data_dir: &Path,
    identity_key: &str,
    session_id: &str,
    tolerance: MeterTolerance,
) -> anyhow::Result<SessionReceipts> {
    let store = Store::open(data_dir)
        .with_context(|| format!("opening the store of {}", data_dir.display()))?;
    store
        .session_receipts(session_id, identity_key, tolerance)?
        .with_context(|| format!("no session {session_id:?} in {}", data_dir.display()))
}

/// Read an exported record from `path` and check it whole. Errors: the file (unreadable, not
/// the JSON of [`SessionReceipts`]), or every problem found, one per line.
pub fn verify_file(path: &Path) -> anyhow::Result<SessionSummary> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let session: SessionReceipts = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a receipts file", path.display()))?;
    proto::receipt::verify_session(&session).map_err(|problems| {
        anyhow::anyhow!(
            "{} does not verify:\n  {}",
            path.display(),
            problems.join("\n  ")
        )
    })
}
