//! A broken cable's money is not lost with it (seed 000 §VIII.B): `cable-node seed` shows the
//! 12 words, `cable-node restore` takes them from standard input into an empty data dir, and
//! the restored wallet finds the same coins on a real regtest bitcoind.

use std::io::Write;
use std::process::{Command, Stdio};

use bitcoin::Amount;
use integration::{binary, CableFiles, CableSetup};
use regtest::Regtest;

/// `cable-node restore` into `data_dir`, the words on standard input: its exit status and
/// output.
fn restore(files: &CableFiles, data_dir: &std::path::Path, words: &str) -> (bool, String) {
    let mut child = Command::new(binary("cable-node").unwrap())
        .arg("--config")
        .arg(&files.config)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("restore")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(words.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_words_of_a_broken_cable_bring_its_coins_back() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        "http://127.0.0.1:1",
        &CableSetup::default(),
        Amount::from_sat(123_456),
    )
    .unwrap();
    bitcoind.mine(1).unwrap();
    let balance = cable.cli(&["balance"]).unwrap();
    assert!(balance.contains("confirmed: 123456 satoshi"), "{balance}");

    let shown = cable.cli(&["seed", "--qr"]).unwrap();
    let words = shown.lines().next().unwrap().to_owned();
    assert_eq!(words.split_whitespace().count(), 12, "{shown}");
    assert!(shown.lines().count() > 10, "a QR code follows the words");

    // The cable breaks; its words go into a new one.
    let new_dir = dir.path().join("new-cable");
    let (ok, out) = restore(&cable, &new_dir, &format!("{words}\n"));
    assert!(ok, "{out}");
    let restored = CableFiles {
        config: cable.config.clone(),
        data_dir: new_dir.clone(),
        log: dir.path().join("new-cable.log"),
        report: dir.path().join("new-cable.json"),
        env: Vec::new(),
        host: None,
    };
    let balance = restored.cli(&["balance"]).unwrap();
    assert!(balance.contains("confirmed: 123456 satoshi"), "{balance}");
    assert_eq!(
        restored.cli(&["seed"]).unwrap().lines().next(),
        Some(words.as_str())
    );

    // Never over a seed, never from words that are not BIP39.
    let (ok, out) = restore(&cable, &new_dir, &words);
    assert!(!ok && out.contains("already has a seed"), "{out}");
    let (ok, out) = restore(
        &cable,
        &dir.path().join("other"),
        &["abandon"; 12].join(" "),
    );
    assert!(!ok && out.contains("not a BIP39 mnemonic"), "{out}");
}
