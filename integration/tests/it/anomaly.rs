//! The verification interface of seed 004 on a real `socket-node` (design.md "Attestation"): a
//! cable whose appliance draws above the outlet's rating is found by the rule
//! `power-above-rating`, its session halted (lockout), the evidence stored and the cable
//! flagged among the devices; the dashboard's API shows it.

use std::time::Duration;

use bitcoin::Amount;
use integration::{CableFiles, CableSetup, SocketProcess, SocketSetup};
use regtest::Regtest;
use serde_json::Value;

#[test]
fn a_cable_drawing_above_the_outlet_rating_is_halted_and_flagged_with_evidence() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The paper's 1300 W toaster on an outlet rated 1000 W (time at 2x: a quota lasts ~11 s).
    let setup = SocketSetup {
        outlet_toml: "max_power_w = 1000".into(),
        time_scale: 2.0,
        ..SocketSetup::default()
    };
    let socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &CableSetup {
            max_session_sat: 5_000,
            ..CableSetup::default()
        },
        Amount::from_sat(50_000),
    )
    .unwrap();
    let out = cable.run(Duration::from_secs(120)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        log.contains("above the outlet's rating of 1000 W"),
        "the cable did not hear why its session was halted:\n{log}"
    );

    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let (rule, action, evidence, cable_key): (String, String, String, String) = db
        .query_row(
            "SELECT rule, action, evidence, cable_key_hex FROM anomalies",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (rule.as_str(), action.as_str()),
        ("power-above-rating", "halt")
    );
    let evidence: Value = serde_json::from_str(&evidence).unwrap();
    assert_eq!(evidence["power_mw"], 1_300_000);
    assert_eq!(evidence["max_power_mw"], 1_000_000);
    // Halted within its first quota: the anomaly was found after the first payment only.
    let (end_reason, payments): (String, i64) = db
        .query_row(
            "SELECT end_reason, (SELECT COUNT(*) FROM payments) FROM sessions",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(end_reason.starts_with("lockout: anomaly"), "{end_reason}");
    assert_eq!(payments, 1);
    let (flagged, anomalies): (Option<String>, i64) = db
        .query_row(
            "SELECT flagged_reason, anomalies FROM cables WHERE key_hex = ?1",
            [&cable_key],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(flagged.unwrap().contains("1300.0 W"));
    assert_eq!(anomalies, 1);
    let audit: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM audit WHERE event = 'anomaly' AND session_id IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(audit, 1);
}

#[test]
fn a_cable_beyond_its_declared_profile_is_halted_first_by_energy_then_by_power() {
    let bitcoind = Regtest::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A 900 W appliance on an outlet with no rating; time at 20x.
    let setup = SocketSetup {
        load_toml: "kind = \"constant\"\npower_w = 900.0".into(),
        lockout_secs: 20,
        ..SocketSetup::default()
    };
    let socket = SocketProcess::start(&bitcoind, &dir.path().join("socket"), &setup).unwrap();
    let cable = CableFiles::create(
        &bitcoind,
        &dir.path().join("cable"),
        &socket.endpoint,
        &CableSetup::default(),
        Amount::from_sat(50_000),
    )
    .unwrap();
    let key = wallet::keys::NodeKeys::load_or_create(&cable.data_dir, bitcoin::Network::Regtest)
        .unwrap()
        .identity_key()
        .to_string();
    let profile = |args: &[&str]| {
        let out = std::process::Command::new(integration::binary("socket-node").unwrap())
            .args([
                "profile",
                &key,
                "--data-dir",
                socket.data_dir.to_str().unwrap(),
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };

    // Declared: at most 10 Wh a session. The second quota (8 Wh each) runs past it.
    profile(&["--max-power-w", "1000", "--max-energy-per-session-wh", "10"]);
    let out = cable.run(Duration::from_secs(120)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        log.contains("above the cable's profile of 10 Wh"),
        "the cable did not hear why its session was halted:\n{log}"
    );

    // Declared: at most 500 W. Its 900 W is halted after a second of the outlet's clock.
    profile(&["--max-power-w", "500"]);
    integration::wait_until("the lockout to pass", Duration::from_secs(30), || {
        socket.status().is_ok_and(|s| {
            s.state == proto::v1::OutletState::Standby as i32 && s.session_hash.is_empty()
        })
    });
    let out = cable.run(Duration::from_secs(120)).unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        log.contains("above the cable's profile of 500 W"),
        "the cable did not hear why its session was halted:\n{log}"
    );

    let db = rusqlite::Connection::open(socket.data_dir.join("socket.sqlite")).unwrap();
    let mut statement = db
        .prepare("SELECT rule, action, evidence FROM anomalies ORDER BY id")
        .unwrap();
    let anomalies: Vec<(String, String, Value)> = statement
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                serde_json::from_str(&r.get::<_, String>(2)?).unwrap(),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(anomalies.len(), 2, "{anomalies:?}");
    assert_eq!(
        (anomalies[0].0.as_str(), anomalies[0].1.as_str()),
        ("energy-above-profile", "halt")
    );
    let used = anomalies[0].2["session_energy_used_mwh"].as_u64().unwrap();
    assert!((10_001..11_000).contains(&used), "{used} mWh");
    assert_eq!(
        (anomalies[1].0.as_str(), anomalies[1].1.as_str()),
        ("power-above-profile", "halt")
    );
    assert_eq!(anomalies[1].2["max_power_mw"], 500_000);
    // Both sessions ended in lockout; the profile changes are in the audit log.
    let (lockouts, profiles): (i64, i64) = db
        .query_row(
            "SELECT (SELECT COUNT(*) FROM sessions WHERE end_reason LIKE 'lockout: anomaly%'),
                    (SELECT COUNT(*) FROM audit WHERE event = 'profile')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((lockouts, profiles), (2, 2));
}
