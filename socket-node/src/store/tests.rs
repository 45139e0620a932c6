//! Unit tests of the store: schema versions, sessions, payments, payouts, cables.
use bitcoin::absolute::LockTime;
use bitcoin::transaction::Version;
use bitcoin::{Amount, ScriptBuf, Transaction, TxOut};
use proto::Scheme;

use super::*;

fn tx(value_sat: u64) -> Transaction {
    Transaction {
        version: Version::TWO,
        lock_time: LockTime::ZERO,
        input: Vec::new(),
        output: vec![TxOut {
            value: Amount::from_sat(value_sat),
            script_pubkey: ScriptBuf::new(),
        }],
    }
}

/// A chain check that found a fee of 1 sat, 100 vB and no unconfirmed parent.
fn checked() -> CheckedTx {
    CheckedTx {
        fee: Amount::ONE_SAT,
        vsize: 100,
        parents: Vec::new(),
    }
}

fn terms() -> StoredTerms {
    StoredTerms {
        amount: Amount::from_sat(1_000),
        quota: EnergyMwh(8_000),
        single_fee: None,
    }
}

#[test]
fn a_new_store_is_at_the_latest_version_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len());
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len());
}

#[test]
fn a_store_made_before_versions_upgrades_in_place_keeping_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Connection::open(dir.path().join("socket.sqlite")).unwrap();
        db.execute_batch(SCHEMA_V1).unwrap();
        db.execute(
            "INSERT INTO sessions (id, outlet_id, scheme, started_at_unix_ms)
             VALUES ('s', 'outlet-1', 'onchain', 1)",
            [],
        )
        .unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len());
    assert_eq!(
        store.session_outlet("s").unwrap().as_deref(),
        Some("outlet-1")
    );
}

#[test]
fn a_store_of_a_newer_socket_node_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    let db = Connection::open(dir.path().join("socket.sqlite")).unwrap();
    db.pragma_update(None, "user_version", MIGRATIONS.len() as i64 + 1)
        .unwrap();
    drop(db);
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Migration(_))
    ));
}

#[test]
fn sessions_belong_to_their_outlet_and_credit_only_what_did_not_fail() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .open_session(
            "a",
            "outlet-1",
            Scheme::Onchain,
            &payout(&store, "outlet-1", 1),
            &cable(1),
        )
        .unwrap();
    store
        .open_session(
            "b",
            "outlet-2",
            Scheme::Onchain,
            &payout(&store, "outlet-2", 2),
            &cable(1),
        )
        .unwrap();
    for (session, payment_id, value) in [("a", 1, 1_000), ("a", 2, 1_001), ("b", 1, 1_002)] {
        store.issue_terms(session, payment_id, terms()).unwrap();
        store
            .accept_payment(session, payment_id, &tx(value), terms(), &checked())
            .unwrap();
    }
    store
        .set_payment_status("a", 2, PaymentStatus::Failed)
        .unwrap();
    assert_eq!(store.credit_of("a").unwrap(), (EnergyMwh(8_000), 1));
    assert_eq!(store.credit_of("b").unwrap(), (EnergyMwh(8_000), 1));
    assert_eq!(store.open_session_of("outlet-2").unwrap().unwrap().id, "b");
    // A payment id is recorded once: a replay cannot be credited twice.
    assert!(store
        .accept_payment("b", 1, &tx(1_002), terms(), &checked())
        .is_err());
    store
        .end_session("a", EnergyMwh(7_000), "unplugged")
        .unwrap();
    assert!(store.open_session_of("outlet-1").unwrap().is_none());
    // a1 and b1 accepted, not yet broadcast; a2 failed.
    assert_eq!(store.unbroadcast_payments().unwrap().len(), 2);
}

/// The cable of key `[byte; 32]`, first request sequence 1.
fn cable(byte: u8) -> CableAuth {
    let secret = bitcoin::secp256k1::SecretKey::from_slice(&[byte; 32]).unwrap();
    CableAuth {
        key: secret.public_key(&bitcoin::secp256k1::Secp256k1::signing_only()),
        sequence: 1,
    }
}

#[test]
fn a_session_takes_requests_only_from_its_cable_and_never_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let first = payout(&store, "outlet-1", 1);
    store
        .open_session("s", "outlet-1", Scheme::Onchain, &first, &cable(1))
        .unwrap();
    let next = |byte: u8, sequence: u64| CableAuth {
        sequence,
        ..cable(byte)
    };
    assert_eq!(store.authorize("s", &next(1, 5)).unwrap(), Authorized::Yes);
    assert_eq!(
        store.authorize("s", &next(1, 5)).unwrap(),
        Authorized::Replay { last_sequence: 5 }
    );
    assert_eq!(
        store.authorize("s", &next(1, 4)).unwrap(),
        Authorized::Replay { last_sequence: 5 }
    );
    assert_eq!(
        store.authorize("s", &next(2, 9)).unwrap(),
        Authorized::OtherCable
    );
    assert_eq!(
        store.authorize("t", &next(1, 9)).unwrap(),
        Authorized::NoSession
    );
    // A stranger's attempt changed nothing: the cable goes on from 5.
    assert_eq!(store.authorize("s", &next(1, 6)).unwrap(), Authorized::Yes);
}

#[test]
fn a_cable_opens_sessions_with_rising_sequences_until_it_makes_the_socket_lose() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let at = |sequence: u64| CableAuth {
        sequence,
        ..cable(1)
    };
    assert_eq!(store.admit_cable(&at(10)).unwrap(), Admitted::Yes);
    // The same opening request played back, or an older one: refused.
    assert_eq!(
        store.admit_cable(&at(10)).unwrap(),
        Admitted::Replay { last_sequence: 10 }
    );
    assert_eq!(store.admit_cable(&at(11)).unwrap(), Admitted::Yes);
    // Another cable is not concerned.
    assert_eq!(
        store
            .admit_cable(&CableAuth {
                sequence: 1,
                ..cable(2)
            })
            .unwrap(),
        Admitted::Yes
    );
    let first = payout(&store, "outlet-1", 1);
    store
        .open_session("s", "outlet-1", Scheme::Onchain, &first, &at(11))
        .unwrap();
    store.issue_terms("s", 1, terms()).unwrap();
    store
        .accept_payment("s", 1, &tx(1_000), terms(), &checked())
        .unwrap();
    let key = cable(1).key.to_string();
    assert_eq!(
        store.unconfirmed_of_cable(&key).unwrap(),
        Amount::from_sat(1_000)
    );
    store
        .set_payment_status("s", 1, PaymentStatus::Confirmed)
        .unwrap();
    assert_eq!(store.unconfirmed_of_cable(&key).unwrap(), Amount::ZERO);
    // A loss bans the cable: for good, or until a time.
    assert_eq!(
        store
            .record_loss(
                "s",
                Lost::Value,
                Amount::from_sat(1_000),
                "replaced",
                Blame::Ban {
                    until_unix_ms: None
                },
            )
            .unwrap(),
        Some(key)
    );
    assert_eq!(
        store.admit_cable(&at(12)).unwrap(),
        Admitted::Banned {
            reason: "replaced".into(),
            until_unix_ms: None
        }
    );
    store
        .record_loss(
            "s",
            Lost::Value,
            Amount::from_sat(1),
            "again",
            Blame::Ban {
                until_unix_ms: Some(unix_ms() - 1),
            },
        )
        .unwrap();
    assert_eq!(store.admit_cable(&at(13)).unwrap(), Admitted::Yes);
    // A loss not proven the cable's: counted in its losses and against its limit for good,
    // and no ban.
    let lost_of = |key: &str| {
        store
            .devices(DevicePage::Recent { limit: 9 })
            .unwrap()
            .into_iter()
            .find(|d| d.key_hex == key)
            .unwrap()
            .lost_sat
    };
    let key = cable(1).key.to_string();
    let (lost_before, unconfirmed_before) = (
        lost_of(&key),
        store
            .unconfirmed_of_cable(&cable(1).key.to_string())
            .unwrap(),
    );
    store
        .record_loss(
            "s",
            Lost::Value,
            Amount::from_sat(500),
            "its parent was replaced",
            Blame::Unproven,
        )
        .unwrap();
    assert_eq!(store.admit_cable(&at(14)).unwrap(), Admitted::Yes);
    assert_eq!(lost_of(&key), lost_before + 500);
    assert_eq!(
        store
            .unconfirmed_of_cable(&cable(1).key.to_string())
            .unwrap(),
        unconfirmed_before + Amount::from_sat(500)
    );
    assert_eq!(
        store
            .record_loss(
                "nope",
                Lost::Value,
                Amount::ONE_SAT,
                "x",
                Blame::Ban {
                    until_unix_ms: None
                },
            )
            .unwrap(),
        None
    );
    store.count_refusal(&cable(3).key).unwrap();
    store.count_refusal(&cable(3).key).unwrap();
    let refusals: i64 = store
        .db
        .query_row(
            "SELECT refusals FROM cables WHERE key_hex = ?1",
            [cable(3).key.to_string()],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(refusals, 2);
}

/// A payout address for `outlet_id` recorded as offered (script: OP_RETURN `tag`).
fn payout(store: &Store, outlet_id: &str, tag: u8) -> Payout {
    let payout = Payout {
        index: store.next_payout_index().unwrap(),
        script: ScriptBuf::from_bytes(vec![0x6a, 0x01, tag]),
    };
    store.add_payout(outlet_id, &payout).unwrap();
    payout
}

#[test]
fn a_payout_address_is_offered_until_a_session_binds_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.offered_payout("outlet-1").unwrap(), None);
    let first = payout(&store, "outlet-1", 1);
    let other = payout(&store, "outlet-2", 2);
    assert_eq!((first.index, other.index), (0, 1));
    assert_eq!(
        store.offered_payout("outlet-1").unwrap(),
        Some(first.clone())
    );
    store
        .open_session("s1", "outlet-1", Scheme::Onchain, &first, &cable(1))
        .unwrap();
    // Bound: no longer offered; the session keeps it, across a reopening of the store.
    assert_eq!(store.offered_payout("outlet-1").unwrap(), None);
    assert_eq!(store.offered_payout("outlet-2").unwrap(), Some(other));
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(
        store.session_payout("s1").unwrap(),
        Some(first.script.clone())
    );
    assert_eq!(store.next_payout_index().unwrap(), 2);
    // An address is bound to one session at a time: a second session opening with it is
    // not stored at all.
    assert!(store
        .open_session("s2", "outlet-1", Scheme::Onchain, &first, &cable(1))
        .is_err());
    assert_eq!(store.session_outlet("s2").unwrap(), None);
    assert_eq!(store.session_payout("nope").unwrap(), None);
    // A session nothing paid gives its address back when it ends; it is offered again.
    store.end_session("s1", EnergyMwh(0), "unplugged").unwrap();
    assert_eq!(
        store.offered_payout("outlet-1").unwrap(),
        Some(first.clone())
    );
    store
        .open_session("s3", "outlet-1", Scheme::Onchain, &first, &cable(1))
        .unwrap();
    // A paid one keeps it. Its unconfirmed parents are kept with it.
    store.issue_terms("s3", 1, terms()).unwrap();
    let with_parent = CheckedTx {
        parents: vec![tx(5)],
        ..checked()
    };
    store
        .accept_payment("s3", 1, &tx(1_000), terms(), &with_parent)
        .unwrap();
    assert_eq!(
        store.parents_of(&tx(1_000).compute_txid()).unwrap(),
        vec![tx(5)]
    );
    assert!(store.parents_of(&tx(5).compute_txid()).unwrap().is_empty());
    store
        .end_session("s3", EnergyMwh(8_000), "unplugged")
        .unwrap();
    assert_eq!(store.offered_payout("outlet-1").unwrap(), None);
    assert_eq!(store.session_payout("s3").unwrap(), Some(first.script));
}
