//! Persistence points of both nodes' stores: every write of a store runs through [`persist`]
//! under a name (`socket-<method>` or `cable-<method>`, e.g. `socket-accept-payment`), for the
//! crash and store-failure tests (design.md "Durability before action"; docs/testing.md
//! "Reliability").
//!
//! In builds with the `failpoints` feature (tests only; inert otherwise), `FAILPOINTS` arms them:
//! - `<point>=return` aborts the process right after the write committed, before the node acts
//!   on it (a crash point);
//! - `<point>-fails=return` fails the write before it touches the database, with an
//!   `SQLITE_IOERR` that names the point (an injected store failure).
//!
//! The test `integration/tests/it/crash_points.rs` finds every point in the source, fails when a
//! write of the store has none, and crashes the node at each.

/// Run `write` (one write of the store, committed when it returns `Ok`) as the persistence
/// point `point`. Errors: `write`'s, or the injected failure of `<point>-fails`.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
pub fn persist<T>(
    point: &'static str,
    write: impl FnOnce() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    #[cfg(feature = "failpoints")]
    if fail::eval(&format!("{point}-fails"), |_| ()).is_some() {
        eprintln!("injected store failure at {point}");
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR),
            Some(format!("injected store failure at {point}")),
        ));
    }
    let written = write()?;
    #[cfg(feature = "failpoints")]
    if fail::eval(point, |_| ()).is_some() {
        eprintln!("crash point {point}: aborting after the write");
        std::process::abort();
    }
    Ok(written)
}
