//! The commands that work on a data dir with the socket stopped or running, no server needed:
//! registry export and import, audit verification, a device's profile, receipts, the socket's
//! identity and certificate, backup and restore.

use anyhow::Context;
use proto::registry::{EntryStatus, Profile};
use socket_node::config::SocketConfig;

/// `socket-node registry export`: this socket's revocations and profiles, signed.
pub(crate) fn registry_export(
    operator_dir: &std::path::Path,
    data_dir: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let keys = keys_of(operator_dir)?;
    let store = socket_node::store::Store::open(data_dir)
        .with_context(|| format!("opening the store of {}", data_dir.display()))?;
    let entries = store
        .registry_entries()?
        .into_iter()
        .map(|row| {
            let key: bitcoin::secp256k1::PublicKey = row.key_hex.parse()?;
            let reason = row
                .reason
                .strip_prefix("revoked by the operator: ")
                .unwrap_or(&row.reason)
                .to_owned();
            Ok(proto::v1::RegistryEntry {
                identity_key: key.serialize().to_vec(),
                role: "cable".into(),
                status: match row.status {
                    EntryStatus::Revoked => "revoked",
                    EntryStatus::Flagged => "flagged",
                    EntryStatus::Allowed => "allowed",
                }
                .into(),
                reason,
                profile: row.profile.map(Profile::to_proto),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let body = proto::v1::RegistryBody {
        operator_key: keys.identity_key().to_bytes(),
        issued_at_unix_secs: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        entries,
    };
    let count = body.entries.len();
    let registry = proto::registry::sign_registry(&body, &keys.identity_secret());
    proto::registry::write_file(&registry, out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("operator key {}", keys.identity_key());
    println!("{count} devices signed into {}", out.display());
    Ok(())
}

/// `socket-node registry import`: an operator's signed registry into the store.
pub(crate) fn registry_import(
    file: &std::path::Path,
    config: &std::path::Path,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let config = SocketConfig::load(config)?;
    let trusted = config
        .registry_operator_keys
        .iter()
        .map(|k| {
            k.parse::<bitcoin::secp256k1::PublicKey>()
                .with_context(|| format!("registry_operator_keys: {k:?}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let registry =
        proto::registry::read_file(file).with_context(|| format!("reading {}", file.display()))?;
    let (operator, entries) = proto::registry::verify_registry(&registry, &trusted)
        .with_context(|| format!("{} refused whole", file.display()))?;
    let store = socket_node::store::Store::open(data_dir)
        .with_context(|| format!("opening the store of {}", data_dir.display()))?;
    let open = store.import_registry(&operator, &entries)?;
    println!(
        "imported {} devices from operator {operator}",
        entries.len()
    );
    for (session, outlet) in open {
        println!("session {session} on {outlet} is of a revoked cable: halt it with `socket-node revoke`");
    }
    Ok(())
}

/// `socket-node audit verify`: the hash chain of the audit log and its anchors.
pub(crate) fn audit_verify(
    config: &std::path::Path,
    data_dir: &std::path::Path,
    json: bool,
) -> anyhow::Result<()> {
    let config = SocketConfig::load(config)?;
    let store = socket_node::store::Store::open(data_dir)
        .with_context(|| format!("opening the store of {}", data_dir.display()))?;
    let chain = wallet::chain::Chain::connect(&config.chain, config.network)?;
    let verified = socket_node::anchor::verify(&store, &chain)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&verified)?);
    } else {
        match (&verified.rows, &verified.broken) {
            (Some(rows), _) => println!("audit log: {rows} rows, the hash chain holds"),
            (_, Some(broken)) => println!(
                "audit log BROKEN at row {} ({}): {}",
                broken.seq, broken.kind, broken.detail
            ),
            (None, None) => {}
        }
        for a in &verified.anchors {
            println!(
                "anchor of rows 1..={} in {}: {}, {}, fee {} sat, {} vB",
                a.anchor.seq,
                a.anchor.txid,
                match a.confirmations {
                    Some(n) => format!("{n} confirmations"),
                    None => "NOT ON CHAIN".to_owned(),
                },
                if a.matches {
                    "head matches"
                } else {
                    "HEAD DIFFERS"
                },
                a.anchor.fee_sat,
                a.anchor.vsize
            );
        }
        if verified.anchors.is_empty() {
            println!("no anchors yet (anchor_interval_secs; the wallet needs coins)");
        }
    }
    anyhow::ensure!(verified.ok(), "the audit log does not verify");
    Ok(())
}

/// The identity key of the node whose seed is in `data_dir` (derivation does not depend on the
/// network).
pub(crate) fn keys_of(data_dir: &std::path::Path) -> anyhow::Result<wallet::keys::NodeKeys> {
    wallet::keys::private_data_dir(data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    Ok(wallet::keys::NodeKeys::load_or_create(
        data_dir,
        bitcoin::Network::Bitcoin,
    )?)
}

/// `socket-node profile`: the declared power and energy limits of a cable's key.
pub(crate) fn set_profile(
    key: &str,
    profile: Profile,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    let key: bitcoin::secp256k1::PublicKey = key
        .parse()
        .with_context(|| format!("{key:?} is not an identity key"))?;
    anyhow::ensure!(
        data_dir.join("socket.sqlite").exists(),
        "{} holds no socket store (--data-dir)",
        data_dir.display()
    );
    let store = socket_node::store::Store::open(data_dir)
        .with_context(|| format!("opening the store of {}", data_dir.display()))?;
    store.set_profile(&key.to_string(), profile, "the owner")?;
    let limit =
        |v: Option<u64>, unit: &str| v.map_or("no limit".to_owned(), |v| format!("{v} {unit}"));
    println!(
        "cable {key}: max power {}, max energy per session {}",
        limit(profile.max_power_w, "W"),
        limit(
            profile.max_energy_per_session_wh,
            "Wh (learned from its sessions)"
        )
    );
    Ok(())
}

/// `socket-node receipts`: one session's signed receipts and payments as a file.
pub(crate) fn export_receipts(
    session: &str,
    data_dir: &std::path::Path,
    config: Option<&std::path::Path>,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let tolerance = match config {
        Some(path) => SocketConfig::load(path)?.meter_tolerance(),
        None => Default::default(),
    };
    anyhow::ensure!(
        data_dir.join("socket.sqlite").exists(),
        "{} holds no socket store (--data-dir)",
        data_dir.display()
    );
    let key = keys_of(data_dir)?.identity_key().to_string();
    let record = socket_node::receipts::export(data_dir, &key, session, tolerance)?;
    let json = serde_json::to_string_pretty(&record)? + "\n";
    match out {
        Some(path) => {
            std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "{} receipts and {} payments of session {session} written to {}",
                record.receipts.len(),
                record.payments.len(),
                path.display()
            );
        }
        None => print!("{json}"),
    }
    Ok(())
}

/// `socket-node identity`: the socket's identity key.
pub(crate) fn identity(data_dir: &std::path::Path) -> anyhow::Result<()> {
    println!("{}", keys_of(data_dir)?.identity_key());
    Ok(())
}

/// `socket-node certify`: an operator's certificate of a socket's identity key.
pub(crate) fn certify(
    operator_dir: &std::path::Path,
    socket_key: &str,
    outlet_ids: Vec<String>,
    days: u64,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let socket_key: bitcoin::PublicKey = socket_key
        .parse()
        .with_context(|| format!("--socket-key {socket_key:?}"))?;
    anyhow::ensure!(days > 0, "--days must be at least 1");
    let keys = keys_of(operator_dir)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let body = proto::v1::CertificateBody {
        operator_key: keys.identity_key().to_bytes(),
        socket_identity_key: socket_key.to_bytes(),
        outlet_ids,
        expires_at_unix_secs: now.as_secs() + days * 86_400,
    };
    let certificate = proto::identity::certify(&body, &keys.identity_secret());
    proto::identity::CertificateFile::write(&certificate, out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("operator key {}", keys.identity_key());
    println!("certificate written to {}", out.display());
    Ok(())
}

/// `socket-node backup`: seed, tokens and a consistent copy of every database.
pub(crate) fn backup(data_dir: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    let written = socket_node::backup::backup(data_dir, to)?;
    println!("backed up {} files into {}", written.len(), to.display());
    Ok(())
}

/// `socket-node restore`: a backup into an empty data dir.
pub(crate) fn restore(from: &std::path::Path, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let written = socket_node::backup::restore(from, data_dir)?;
    println!(
        "restored {} files into {}; start it with `socket-node run --data-dir {}`",
        written.len(),
        data_dir.display(),
        data_dir.display()
    );
    Ok(())
}
