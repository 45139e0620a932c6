//! A high-water mark for sequence numbers that must only rise across restarts (a cable's
//! request sequences, a socket's status sequences), on a device whose clock may start in 1970
//! (a Raspberry Pi has no real-time clock until NTP answers). Sequences come from the clock's
//! milliseconds, but never at or below the mark stored in a file, which is moved up (written
//! and synced) before a sequence reaches it: one write per [`RESERVE_STEP`].

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// How far above the sequence in use the stored mark is moved each time it is reached (ms:
/// about three hours of one sequence per millisecond).
pub const RESERVE_STEP: u64 = 10_000_000;

/// A stored high-water mark: every sequence used so far is below it.
pub struct HighWaterMark {
    path: PathBuf,
    mark: Mutex<u64>,
}

impl HighWaterMark {
    /// The mark in the file `path` (a decimal number; 0 when the file is missing).
    ///
    /// Errors: an unreadable or malformed file.
    pub fn load(path: PathBuf) -> std::io::Result<Self> {
        let mark = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        Ok(HighWaterMark {
            path,
            mark: Mutex::new(mark),
        })
    }

    /// The mark: the first sequence after a restart must be at least this.
    pub fn floor(&self) -> u64 {
        *self.mark.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Make sure `sequence` is below the stored mark before it is used: when it is not, move
    /// the mark to `sequence` + [`RESERVE_STEP`], written to a temporary file, synced and
    /// renamed over the old one. A failure is logged and the sequence still used (it is above
    /// every one before it; only a restart with a clock set back could then repeat one, which
    /// the other side refuses as a replay or a stale status).
    pub fn reserve(&self, sequence: u64) {
        let mut mark = self.mark.lock().unwrap_or_else(|e| e.into_inner());
        if sequence < *mark {
            return;
        }
        let next = sequence.saturating_add(RESERVE_STEP);
        let write = || -> std::io::Result<()> {
            let temporary = self.path.with_extension("tmp");
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(next.to_string().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&temporary, &self.path)
        };
        match write() {
            Ok(()) => *mark = next,
            Err(e) => tracing::error!("keeping the sequence mark in {}: {e}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_rises_before_a_sequence_reaches_it_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mark");
        let mark = HighWaterMark::load(path.clone()).unwrap();
        assert_eq!(mark.floor(), 0);
        mark.reserve(5);
        assert_eq!(mark.floor(), 5 + RESERVE_STEP);
        mark.reserve(6);
        assert_eq!(mark.floor(), 5 + RESERVE_STEP, "no write below the mark");
        let again = HighWaterMark::load(path.clone()).unwrap();
        assert_eq!(again.floor(), 5 + RESERVE_STEP);
        std::fs::write(&path, "x").unwrap();
        assert!(HighWaterMark::load(path).is_err());
    }
}
