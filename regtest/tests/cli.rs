//! The `regtest` binary as a user runs it: up, status, mine, fund, down, and its errors.

use std::path::Path;
use std::process::{Command, Output};

use bitcoin::key::Secp256k1;
use bitcoin::{Address, CompressedPublicKey, Network, PrivateKey};

fn regtest(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_regtest"))
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("the regtest binary runs")
}

fn ok(data_dir: &Path, args: &[&str]) -> String {
    let out = regtest(data_dir, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "regtest {args:?} failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn fails(data_dir: &Path, args: &[&str]) -> String {
    let out = regtest(data_dir, args);
    assert!(!out.status.success(), "regtest {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stops the node even when an assertion fails.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = regtest(self.0, &["down"]);
    }
}

#[test]
fn up_status_mine_fund_down() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path();
    assert!(fails(data_dir, &["status"]).contains("no regtest node is up"));
    assert!(fails(data_dir, &["down"]).contains("no regtest node is up"));

    let up = ok(data_dir, &["up"]);
    let _down = Down(data_dir);
    assert!(up.contains("rpc:     http://127.0.0.1:"), "{up}");
    assert!(up.contains(".cookie"), "{up}");
    assert!(fails(data_dir, &["up"]).contains("already up"));

    let mined = ok(data_dir, &["mine", "3"]);
    assert!(mined.contains("height 3"), "{mined}");

    let key = PrivateKey::generate(Network::Regtest);
    let public = CompressedPublicKey::from_private_key(&Secp256k1::new(), &key).unwrap();
    let address = Address::p2wpkh(&public, Network::Regtest).to_string();
    let funded = ok(data_dir, &["fund", &address, "0.25btc"]);
    assert!(funded.contains("confirmed"), "{funded}");
    assert!(fails(data_dir, &["fund", "nonsense", "1btc"]).contains("bad address"));
    assert!(fails(
        data_dir,
        &["fund", "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq", "1btc"]
    )
    .contains("not a regtest address"));
    assert!(fails(data_dir, &["fund", &address, "1"]).contains("needs a unit"));

    // Funding matured a coinbase (101 blocks) and confirmed the payment (1 block).
    let status = ok(data_dir, &["status"]);
    assert!(status.contains("height:  105"), "{status}");
    assert!(status.contains("mempool: 0 transactions"), "{status}");

    ok(data_dir, &["down"]);
    assert!(fails(data_dir, &["status"]).contains("no regtest node is up"));

    // The chain, the faucet and the RPC port survive a restart.
    let again = ok(data_dir, &["up"]);
    assert!(again.contains("height:  105"), "{again}");
    let rpc_line = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("rpc:"))
            .unwrap()
            .to_owned()
    };
    assert_eq!(rpc_line(&again), rpc_line(&up));
    let funded = ok(data_dir, &["fund", &address, "100000sat"]);
    assert!(funded.contains("confirmed"), "{funded}");
    ok(data_dir, &["down"]);
}
