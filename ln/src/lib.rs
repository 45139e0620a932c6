//! Lightning for t2t nodes (design.md "Payment schemes", `lightning`; BOLT 2/3/11 via ldk-node).
//!
//! [`start_node`] builds and starts an ldk-node [`Node`] for a socket or cable: its network, the
//! bitcoind RPC chain source the node already uses, storage under `<data dir>/ln`, and entropy
//! from the node's one BIP39 seed.
//!
//! The seed is used with the BIP39 passphrase [`LN_PASSPHRASE`]: without one, ldk-node's on-chain
//! wallet would derive exactly the BIP 84 keys of the node's own BDK wallet and the two would race
//! for the same coins. The twelve words stay the one backup; the passphrase is fixed and public.

#![deny(missing_docs)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

pub use ldk_node;
use ldk_node::bitcoin::hex::DisplayHex;
use ldk_node::bitcoin::secp256k1::PublicKey;
use ldk_node::config::Config;
use ldk_node::lightning::ln::msgs::SocketAddress;
use ldk_node::lightning_invoice::Bolt11Invoice;
use ldk_node::{Builder, CustomTlvRecord, Node};
use wallet::chain::ChainConfig;
use wallet::keys::NodeKeys;

/// BIP39 passphrase of the Lightning keys (see the crate docs).
pub const LN_PASSPHRASE: &str = "t2t-lightning";

/// Why a Lightning node could not start.
#[derive(Debug, thiserror::Error)]
pub enum LnError {
    /// The chain config cannot be used by ldk-node.
    #[error("chain config: {0}")]
    Chain(String),
    /// ldk-node refused to build or start.
    #[error("Lightning node: {0}")]
    Node(String),
}

/// What a node's Lightning side needs besides its keys and chain.
#[derive(Debug, Clone, Default)]
pub struct LnSettings {
    /// Address to accept peers on (the socket listens; a cable need not).
    pub listen: Option<SocketAddr>,
    /// Peers whose channels are usable before they confirm (BOLT 2 zero-conf).
    pub trusted_peers_0conf: Vec<PublicKey>,
    /// Public name of the node (BOLT 7 `node_announcement` alias, at most 32 bytes). With a
    /// listening address it makes the node announceable: it may then accept and open announced
    /// channels, which is what a hub needs to forward to it (LDK forwards to announced channels
    /// only). `None`: private node, unannounced channels only.
    pub alias: Option<String>,
}

/// RPC host, port, user and password of bitcoind, from its URL and cookie file.
pub fn rpc_credentials(chain: &ChainConfig) -> Result<(String, u16, String, String), LnError> {
    let rest = chain
        .rpc_url
        .strip_prefix("http://")
        .ok_or_else(|| LnError::Chain(format!("{} is not an http:// URL", chain.rpc_url)))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| LnError::Chain(format!("{} has no port", chain.rpc_url)))?;
    let port: u16 = port
        .parse()
        .map_err(|_| LnError::Chain(format!("bad port in {}", chain.rpc_url)))?;
    let cookie = std::fs::read_to_string(&chain.cookie_file)
        .map_err(|e| LnError::Chain(format!("{}: {e}", chain.cookie_file.display())))?;
    let (user, password) = cookie.trim().split_once(':').ok_or_else(|| {
        LnError::Chain(format!(
            "{} is not a cookie file",
            chain.cookie_file.display()
        ))
    })?;
    Ok((host.to_owned(), port, user.to_owned(), password.to_owned()))
}

/// Build and start the Lightning node of the node with `keys`, storing under `data_dir/ln`.
pub fn start_node(
    data_dir: &Path,
    keys: &NodeKeys,
    chain: &ChainConfig,
    settings: &LnSettings,
) -> Result<Arc<Node>, LnError> {
    let (host, port, user, password) = rpc_credentials(chain)?;
    let config = Config {
        network: keys.network(),
        storage_dir_path: data_dir.join("ln").display().to_string(),
        trusted_peers_0conf: settings.trusted_peers_0conf.clone(),
        ..Config::default()
    };
    let mut builder = Builder::from_config(config);
    builder.set_entropy_bip39_mnemonic(keys.mnemonic().clone(), Some(LN_PASSPHRASE.to_owned()));
    builder.set_chain_source_bitcoind_rpc(host, port, user, password);
    if let Some(alias) = &settings.alias {
        builder
            .set_node_alias(alias.clone())
            .map_err(|e| LnError::Node(format!("alias {alias:?}: {e}")))?;
    }
    if let Some(listen) = settings.listen {
        builder
            .set_listening_addresses(vec![SocketAddress::from(listen)])
            .map_err(|e| LnError::Node(e.to_string()))?;
    }
    let node = builder.build().map_err(|e| LnError::Node(e.to_string()))?;
    node.start().map_err(|e| LnError::Node(e.to_string()))?;
    Ok(Arc::new(node))
}

/// Why the cable refuses an invoice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvoiceError {
    /// Not a BOLT11 invoice.
    #[error("not a BOLT11 invoice: {0}")]
    Malformed(String),
    /// The invoice pays another node than the offer's.
    #[error("the invoice pays node {got}, not the offer's {expected}")]
    Payee {
        /// The offer's node id.
        expected: String,
        /// The invoice's payee.
        got: String,
    },
    /// The invoice asks for another amount than price × quota.
    #[error("the invoice asks {got_msat:?} msat, not price x quota = {expected_msat} msat")]
    Amount {
        /// price × quota.
        expected_msat: u64,
        /// The invoice's amount (`None`: open amount).
        got_msat: Option<u64>,
    },
    /// The invoice's payment hash was paid before: paying it again pays twice for one quota.
    #[error("the invoice's payment hash {0} was already paid")]
    AlreadyPaid(String),
    /// The invoice expired.
    #[error("the invoice has expired")]
    Expired,
}

/// The cable's checks of a socket's invoice (BOLT 11): payee = the offer's node id, amount =
/// exactly `expected_msat`, a payment hash not in `paid_hashes`, not expired.
pub fn check_invoice(
    invoice: &str,
    offer_node_id: &[u8],
    expected_msat: u64,
    already_paid: impl Fn(&str) -> bool,
) -> Result<Bolt11Invoice, InvoiceError> {
    let invoice: Bolt11Invoice =
        invoice
            .parse()
            .map_err(|e: ldk_node::lightning_invoice::ParseOrSemanticError| {
                InvoiceError::Malformed(e.to_string())
            })?;
    let payee = invoice.recover_payee_pub_key();
    if payee.serialize().as_slice() != offer_node_id {
        return Err(InvoiceError::Payee {
            expected: offer_node_id.to_lower_hex_string(),
            got: payee.to_string(),
        });
    }
    if invoice.amount_milli_satoshis() != Some(expected_msat) {
        return Err(InvoiceError::Amount {
            expected_msat,
            got_msat: invoice.amount_milli_satoshis(),
        });
    }
    let hash = payment_hash_hex(&invoice);
    if already_paid(&hash) {
        return Err(InvoiceError::AlreadyPaid(hash));
    }
    if invoice.is_expired() {
        return Err(InvoiceError::Expired);
    }
    Ok(invoice)
}

/// The payment hash of an invoice, hex, as stored by both nodes.
pub fn payment_hash_hex(invoice: &Bolt11Invoice) -> String {
    invoice.payment_hash().to_string()
}

/// Custom TLV type of [`SessionRecord`] in a keysend's onion payload (BOLT 4 `payload`; custom
/// records live at types ≥ 2^16, and an odd type lets a node that does not know it still
/// accept the payment). "t2t" in ASCII, then 01.
pub const SESSION_TLV_TYPE: u64 = 0x7432_7401;

/// Longest session id a [`SessionRecord`] carries, bytes.
const MAX_SESSION_ID_LEN: usize = 64;

/// What a keysend pays for (design.md `lightning`, the fast path): a session and the payment
/// id within it. Encoded as the payment id (8 bytes, big-endian) then the session id (UTF-8,
/// 1–64 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The session id the socket gave.
    pub session_id: String,
    /// The payment's id in the session, one above the last one paid.
    pub payment_id: u64,
}

/// Why a keysend's session record is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionRecordError {
    /// No record of type [`SESSION_TLV_TYPE`]: a keysend that names no session.
    #[error("the keysend carries no t2t session record")]
    Missing,
    /// A record of that type that does not decode.
    #[error("malformed t2t session record: {0}")]
    Malformed(&'static str),
}

impl SessionRecord {
    /// The record as a custom TLV of a keysend.
    pub fn to_tlv(&self) -> CustomTlvRecord {
        let mut value = self.payment_id.to_be_bytes().to_vec();
        value.extend_from_slice(self.session_id.as_bytes());
        CustomTlvRecord {
            type_num: SESSION_TLV_TYPE,
            value,
        }
    }

    /// Find and decode the record among a payment's custom TLVs.
    pub fn from_tlvs(records: &[CustomTlvRecord]) -> Result<Self, SessionRecordError> {
        let record = records
            .iter()
            .find(|r| r.type_num == SESSION_TLV_TYPE)
            .ok_or(SessionRecordError::Missing)?;
        if record.value.len() <= 8 || record.value.len() > 8 + MAX_SESSION_ID_LEN {
            return Err(SessionRecordError::Malformed("length"));
        }
        let (id, session) = record.value.split_at(8);
        let payment_id = u64::from_be_bytes(id.try_into().expect("split at 8"));
        let session_id = std::str::from_utf8(session)
            .map_err(|_| SessionRecordError::Malformed("session id is not UTF-8"))?
            .to_owned();
        Ok(SessionRecord {
            session_id,
            payment_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_record_survives_the_trip_and_bad_ones_are_named() {
        let record = SessionRecord {
            session_id: "ef79697fb77c442607bfb2e178df4938".into(),
            payment_id: 7,
        };
        let other = CustomTlvRecord {
            type_num: 65_537,
            value: vec![1, 2],
        };
        assert_eq!(
            SessionRecord::from_tlvs(&[other.clone(), record.to_tlv()]),
            Ok(record)
        );
        assert_eq!(
            SessionRecord::from_tlvs(&[other]),
            Err(SessionRecordError::Missing)
        );
        let short = CustomTlvRecord {
            type_num: SESSION_TLV_TYPE,
            value: vec![0; 8],
        };
        assert_eq!(
            SessionRecord::from_tlvs(&[short]),
            Err(SessionRecordError::Malformed("length"))
        );
        let mut bad_utf8 = vec![0; 8];
        bad_utf8.push(0xff);
        let bad = CustomTlvRecord {
            type_num: SESSION_TLV_TYPE,
            value: bad_utf8,
        };
        assert!(matches!(
            SessionRecord::from_tlvs(&[bad]),
            Err(SessionRecordError::Malformed(_))
        ));
    }
}
