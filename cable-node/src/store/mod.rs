//! The cable's SQLite store, `<data dir>/cable.sqlite`: sessions and every payment it signed.
//!
//! A payment is stored (status `signed`) before its PSBT leaves the cable. If the reply is lost,
//! the same PSBT is sent again for the same payment id: the cable never signs twice for one
//! quota.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

mod channels;
mod ln;
mod payments;
mod schema;
mod sessions;
mod single_fee;
mod sockets;

pub use channels::CableChannel;
pub use ln::LnRecord;
pub use payments::SignedRecord;
pub use schema::MIGRATIONS;
pub use sessions::Unfinished;
pub use single_fee::CableSet;
pub use sockets::{SocketRow, SocketStatus};
use wallet::persist::persist;

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The store.
pub struct CableStore {
    db: Connection,
}

type Result<T> = std::result::Result<T, rusqlite::Error>;

impl CableStore {
    /// Open (and create, or upgrade to the current schema version) the store of `data_dir`.
    /// Errors: SQLite's, or a schema of a newer cable-node.
    pub fn open(data_dir: &Path) -> anyhow::Result<Self> {
        let mut db = Connection::open(data_dir.join("cable.sqlite"))?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.pragma_update(None, "foreign_keys", "ON")?;
        rusqlite_migration::Migrations::new(
            MIGRATIONS
                .iter()
                .map(|sql| rusqlite_migration::M::up(sql))
                .collect(),
        )
        .to_latest(&mut db)?;
        Ok(CableStore { db })
    }
}
