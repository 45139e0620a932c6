//! An operator's signed registry of device identities (`operator.proto` `SignedRegistry`;
//! design.md "Attestation"): which cable identities are revoked or flagged, and why. Signed by
//! the operator key over `TaggedHash("t2t/registry", body)` (BIP 340), checked whole: one bad
//! byte, an untrusted operator or one malformed entry refuses the registry.

use bitcoin::hashes::{sha256t_hash_newtype, Hash};
use bitcoin::secp256k1::{PublicKey, SecretKey};
use prost::Message;

use crate::identity::{key_of, keypair, sign, verify, IdentityError};
use crate::v1;

sha256t_hash_newtype! {
    /// Tag `t2t/registry`.
    pub struct RegistryTag = hash_str("t2t/registry");
    /// BIP 340 tagged hash of an encoded [`v1::RegistryBody`].
    #[hash_newtype(forward)]
    pub struct RegistryHash(_);
}

/// What an entry says of its device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryStatus {
    /// Refused every session, for good.
    Revoked,
    /// Noted; still served.
    Flagged,
    /// Served; the entry declares its profile only.
    Allowed,
}

/// A device's declared behaviour (operator.proto `DeviceProfile`); `None`: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Profile {
    /// The most power its appliance draws, W.
    pub max_power_w: Option<u64>,
    /// The most energy one of its sessions uses, Wh.
    pub max_energy_per_session_wh: Option<u64>,
}

impl Profile {
    /// The profile of a `DeviceProfile` (0 meaning no limit).
    pub fn of(profile: &v1::DeviceProfile) -> Self {
        Profile {
            max_power_w: (profile.max_power_w > 0).then_some(profile.max_power_w),
            max_energy_per_session_wh: (profile.max_energy_per_session_wh > 0)
                .then_some(profile.max_energy_per_session_wh),
        }
    }

    /// As a `DeviceProfile`.
    pub fn to_proto(self) -> v1::DeviceProfile {
        v1::DeviceProfile {
            max_power_w: self.max_power_w.unwrap_or(0),
            max_energy_per_session_wh: self.max_energy_per_session_wh.unwrap_or(0),
        }
    }
}

/// A checked entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The device's identity key.
    pub identity_key: PublicKey,
    /// Revoked, flagged or allowed.
    pub status: EntryStatus,
    /// Why.
    pub reason: String,
    /// Its declared profile, if the entry has one.
    pub profile: Option<Profile>,
    /// When the registry was issued (`RegistryBody.issued_at_unix_secs`): a profile replaces
    /// only one declared earlier.
    pub issued_at_unix_secs: u64,
}

/// The operator's signed registry of `body` (whose `operator_key` must be the public key of
/// `operator_secret`).
pub fn sign_registry(body: &v1::RegistryBody, operator_secret: &SecretKey) -> v1::SignedRegistry {
    let bytes = body.encode_to_vec();
    let signature = sign(
        RegistryHash::hash(&bytes).to_byte_array(),
        &keypair(operator_secret),
    );
    v1::SignedRegistry {
        body: bytes,
        signature,
    }
}

/// Check a signed registry whole: its body decodes, its operator key is one of `trusted`, the
/// signature verifies, and every entry is a cable key with status `revoked` or `flagged` and a
/// reason of 1 to 500 bytes, or `allowed` with a profile and a reason of at most 500 bytes. Returns the operator key and the entries.
///
/// Errors: [`IdentityError`] naming the first check that fails; nothing of the registry is
/// to be used then.
pub fn verify_registry(
    registry: &v1::SignedRegistry,
    trusted: &[PublicKey],
) -> Result<(PublicKey, Vec<Entry>), IdentityError> {
    let body =
        v1::RegistryBody::decode(registry.body.as_slice()).map_err(|e| IdentityError::Decode {
            what: "registry",
            reason: e.to_string(),
        })?;
    let operator = key_of(&body.operator_key, "registry operator_key")?;
    verify(
        RegistryHash::hash(&registry.body).to_byte_array(),
        &registry.signature,
        &operator,
        "registry",
    )?;
    if !trusted.contains(&operator) {
        return Err(IdentityError::Certificate(format!(
            "the registry's operator {operator} is not in registry_operator_keys"
        )));
    }
    let entries = body
        .entries
        .iter()
        .map(|entry| {
            let identity_key = key_of(&entry.identity_key, "registry entry identity_key")?;
            let status = match entry.status.as_str() {
                "revoked" => EntryStatus::Revoked,
                "flagged" => EntryStatus::Flagged,
                "allowed" if entry.profile.is_some() => EntryStatus::Allowed,
                other => {
                    return Err(IdentityError::Decode {
                        what: "registry entry",
                        reason: format!(
                            "status {other:?} is not revoked, flagged, or allowed with a profile"
                        ),
                    })
                }
            };
            let reason_ok = match status {
                EntryStatus::Allowed => entry.reason.len() <= 500,
                _ => !entry.reason.is_empty() && entry.reason.len() <= 500,
            };
            if entry.role != "cable" || !reason_ok {
                return Err(IdentityError::Decode {
                    what: "registry entry",
                    reason: format!(
                        "{identity_key}: role must be \"cable\" and the reason 1 to 500 bytes"
                    ),
                });
            }
            Ok(Entry {
                identity_key,
                status,
                reason: entry.reason.clone(),
                profile: entry.profile.as_ref().map(Profile::of),
                issued_at_unix_secs: body.issued_at_unix_secs,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((operator, entries))
}

/// Write `registry` as a JSON file `{"body_hex": ..., "signature_hex": ...}` (the shape of a
/// certificate file, [`crate::identity::CertificateFile`]).
pub fn write_file(registry: &v1::SignedRegistry, path: &std::path::Path) -> std::io::Result<()> {
    crate::identity::CertificateFile::write(
        &v1::SocketCertificate {
            body: registry.body.clone(),
            signature: registry.signature.clone(),
        },
        path,
    )
}

/// Read a registry file written by [`write_file`]; checked by [`verify_registry`], not here.
/// Errors: unreadable file, bad JSON or hex.
pub fn read_file(path: &std::path::Path) -> std::io::Result<v1::SignedRegistry> {
    let file = crate::identity::CertificateFile::read(path)?;
    Ok(v1::SignedRegistry {
        body: file.body,
        signature: file.signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> (SecretKey, PublicKey) {
        let secret = SecretKey::from_slice(&[byte; 32]).unwrap();
        (
            secret,
            PublicKey::from_secret_key(&bitcoin::secp256k1::Secp256k1::new(), &secret),
        )
    }

    fn registry() -> (v1::SignedRegistry, PublicKey) {
        let (operator_secret, operator) = key(1);
        let (_, cable) = key(2);
        let body = v1::RegistryBody {
            operator_key: operator.serialize().to_vec(),
            issued_at_unix_secs: 1_700_000_000,
            entries: vec![v1::RegistryEntry {
                identity_key: cable.serialize().to_vec(),
                role: "cable".into(),
                status: "revoked".into(),
                reason: "stolen".into(),
                profile: None,
            }],
        };
        (sign_registry(&body, &operator_secret), operator)
    }

    #[test]
    fn a_signed_registry_of_a_trusted_operator_verifies() {
        let (signed, operator) = registry();
        let (by, entries) = verify_registry(&signed, &[operator]).unwrap();
        assert_eq!(by, operator);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].status, EntryStatus::Revoked);
        assert_eq!(entries[0].reason, "stolen");
    }

    #[test]
    fn one_byte_changed_or_an_untrusted_operator_refuses_it_whole() {
        let (signed, operator) = registry();
        for i in 0..signed.body.len() {
            let mut bad = signed.clone();
            bad.body[i] ^= 1;
            assert!(verify_registry(&bad, &[operator]).is_err(), "byte {i}");
        }
        let mut bad = signed.clone();
        bad.signature[10] ^= 1;
        assert!(matches!(
            verify_registry(&bad, &[operator]),
            Err(IdentityError::Signature("registry"))
        ));
        let (_, stranger) = key(3);
        assert!(verify_registry(&signed, &[stranger]).is_err());
    }
}
