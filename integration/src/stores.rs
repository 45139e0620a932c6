//! Read-only queries of a node's SQLite store.

use std::path::Path;

/// The one integer the query `sql` returns from the SQLite store `db` (read only), e.g. a
/// `COUNT(*)` of a node's store.
pub fn query_i64(db: &Path, sql: &str) -> i64 {
    let db = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("opening the store");
    db.query_row(sql, [], |r| r.get(0)).expect("the query")
}

/// The `(text, integer)` rows the query `sql` returns from the SQLite store `db` (read only),
/// e.g. a node's `(session_id, payment_id)` pairs.
pub fn query_pairs(db: &Path, sql: &str) -> std::collections::BTreeSet<(String, i64)> {
    let db = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("opening the store");
    let mut statement = db.prepare(sql).expect("the query");
    let rows = statement
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("the query");
    rows.map(|row| row.expect("a row")).collect()
}
