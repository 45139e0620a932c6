//! The audit log: what happened on each outlet, in order.

use rusqlite::params;

use super::{unix_ms, Result, Store};

impl Store {
    /// Append to the audit log.
    pub fn audit(
        &self,
        outlet_id: &str,
        session_id: Option<&str>,
        event: &str,
        detail: &str,
    ) -> Result<()> {
        self.db.execute(
            "INSERT INTO audit (at_unix_ms, outlet_id, session_id, event, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![unix_ms(), outlet_id, session_id, event, detail],
        )?;
        Ok(())
    }
}
