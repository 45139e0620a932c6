//! Backup and restore of a socket's data dir (design.md "Operator surface"): the seed, the
//! operator tokens and every SQLite database (the store `socket.sqlite`, the on-chain wallet,
//! the Lightning node's `ln/*.sqlite`), each copied consistently while the socket runs with
//! SQLite's `VACUUM INTO`. Logs and caches are left out.
//!
//! A Lightning channel restored from an old backup is dangerous: if the peer still holds a
//! later state, broadcasting the old commitment lets it take the channel's funds (BOLT 5,
//! revoked commitments). Restore only the latest backup, and close the channels if in doubt.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rusqlite::Connection;

/// Files of a data dir copied as they are (small, written once).
const PLAIN_FILES: [&str; 3] = ["seed.txt", "admin.token", "readonly.token"];

/// Copy the data dir `data_dir` into `to`, which must not exist or be empty. Returns the
/// files written, relative to `to`. Errors: `to` is not empty, the data dir has no seed (not
/// a socket's), a database cannot be read or a file written.
pub fn backup(data_dir: &Path, to: &Path) -> anyhow::Result<Vec<PathBuf>> {
    copy_data_dir(data_dir, to, "a socket's data dir", |from, target| {
        let db = Connection::open(from).with_context(|| format!("opening {}", from.display()))?;
        // A consistent copy of a live database; readers and writers go on meanwhile.
        db.execute("VACUUM INTO ?1", [target.to_string_lossy()])
            .with_context(|| format!("backing up {}", from.display()))?;
        Ok(())
    })
}

/// Copy a backup made by [`backup`] into `data_dir`, which must not exist or be empty.
/// Returns the files written. Errors: the backup has no seed, `data_dir` is not empty, a file
/// cannot be copied.
pub fn restore(from: &Path, data_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    copy_data_dir(from, data_dir, "a socket backup", copy_private)
}

/// Copy the seed, tokens and databases of `from` into the empty `to`, each database with
/// `copy_database`.
fn copy_data_dir(
    from: &Path,
    to: &Path,
    what: &str,
    copy_database: impl Fn(&Path, &Path) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(
        from.join("seed.txt").exists(),
        "{} has no seed.txt: not {what}",
        from.display()
    );
    ensure_empty(to)?;
    let mut written = Vec::new();
    for name in PLAIN_FILES {
        if from.join(name).exists() {
            copy_private(&from.join(name), &to.join(name))?;
            written.push(PathBuf::from(name));
        }
    }
    for relative in databases(from)? {
        let target = to.join(&relative);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        copy_database(&from.join(&relative), &target)?;
        written.push(relative);
    }
    Ok(written)
}

/// The SQLite databases of a data dir: `*.sqlite` at its top and under `ln/`.
fn databases(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for sub in [PathBuf::new(), PathBuf::from("ln")] {
        let Ok(entries) = std::fs::read_dir(dir.join(&sub)) else {
            continue;
        };
        for entry in entries {
            let name = entry.context("reading the data dir")?.file_name();
            if Path::new(&name).extension().is_some_and(|e| e == "sqlite") {
                found.push(sub.join(name));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn ensure_empty(dir: &Path) -> anyhow::Result<()> {
    if dir.exists() {
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
        anyhow::ensure!(
            entries.next().is_none(),
            "{} is not empty: choose a new folder",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))
}

/// Copy a file and make the copy readable by its owner only (it holds keys or money).
fn copy_private(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    std::fs::set_permissions(to, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("making {} private", to.display()))
}
