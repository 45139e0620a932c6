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
use ldk_node::bitcoin::secp256k1::PublicKey;
use ldk_node::config::Config;
use ldk_node::lightning::ln::msgs::SocketAddress;
use ldk_node::{Builder, CustomTlvRecord, Node};
use proto::lightning::{SessionRecord, SessionRecordError, SESSION_TLV_TYPE};
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

/// A keysend's session record (`proto::lightning::SessionRecord`) as the custom TLV ldk-node
/// sends, type `proto::lightning::SESSION_TLV_TYPE`.
pub fn session_tlv(record: &SessionRecord) -> CustomTlvRecord {
    CustomTlvRecord {
        type_num: SESSION_TLV_TYPE,
        value: record.tlv_value(),
    }
}

/// A keysend's authentication (`proto::lightning::sign_keysend`, 64 bytes) as the custom TLV
/// ldk-node sends, type `proto::lightning::SESSION_AUTH_TLV_TYPE`.
pub fn session_auth_tlv(signature: Vec<u8>) -> CustomTlvRecord {
    CustomTlvRecord {
        type_num: proto::lightning::SESSION_AUTH_TLV_TYPE,
        value: signature,
    }
}

/// The authentication among the custom TLVs of a keysend ldk-node received, if it carries one.
pub fn session_auth(records: &[CustomTlvRecord]) -> Option<&[u8]> {
    proto::lightning::keysend_auth(records.iter().map(|r| (r.type_num, r.value.as_slice())))
}

/// The session record among the custom TLVs of a keysend ldk-node received.
///
/// Errors: see `proto::lightning::SessionRecord::from_tlvs`.
pub fn session_record(records: &[CustomTlvRecord]) -> Result<SessionRecord, SessionRecordError> {
    SessionRecord::from_tlvs(records.iter().map(|r| (r.type_num, r.value.as_slice())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_record_goes_through_ldk_nodes_tlv_type() {
        let record = SessionRecord {
            session_id: "ef79697fb77c442607bfb2e178df4938".into(),
            payment_id: 7,
        };
        let other = CustomTlvRecord {
            type_num: 65_537,
            value: vec![1, 2],
        };
        assert_eq!(
            session_record(&[other.clone(), session_tlv(&record)]),
            Ok(record)
        );
        assert_eq!(session_record(&[other]), Err(SessionRecordError::Missing));
    }
}
