//! What every outlet and seller of a socket shares ([`Shared`]): the config, the store,
//! bitcoind, the Lightning node, the keys, and the way to the settler thread.

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex, MutexGuard};

use bitcoin::{Amount, Transaction};
use proto::units::EnergyMwh;
use wallet::chain::Chain;

use crate::config::SocketConfig;
use crate::error::SocketError;
use crate::sets::{OpenSet, Sets};
use crate::store::{Payout, Store};
use wallet::onchain::NodeWallet;

/// A closed single-fee input set for the settler: broadcast what it holds (nothing when
/// `tx` is `None`) and record how the set ended.
#[derive(Clone)]
pub(crate) struct Settle {
    /// Its session.
    pub(crate) session_id: String,
    /// Its index within the session.
    pub(crate) index: u32,
    /// The latest transaction held for it.
    pub(crate) tx: Option<Transaction>,
}

/// What every outlet and seller shares.
pub struct Shared {
    /// The socket's config.
    pub config: SocketConfig,
    pub(crate) store: Mutex<Store>,
    /// The socket's on-chain wallet: where payout addresses come from.
    pub(crate) wallet: Mutex<NodeWallet>,
    /// bitcoind.
    pub(crate) chain: Arc<Chain>,
    /// Bounds the bitcoind calls that payment checks make at once (`max_chain_calls`).
    pub(crate) chain_permits: tokio::sync::Semaphore,
    /// The Lightning node, when `[lightning]` is configured.
    pub(crate) ln: Option<Arc<ln::ldk_node::Node>>,
    /// The socket's identity key pair (signs its offers and status reports).
    pub(crate) identity: bitcoin::secp256k1::Keypair,
    /// Its public key, 33-byte compressed (`Offer.socket_identity_key`).
    pub(crate) identity_key: [u8; 33],
    /// Operators' certificates of the socket's identity, sent with every offer.
    pub(crate) certificates: Vec<proto::v1::SocketCertificate>,
    /// The socket's keys: spillman channel keys are derived per channel.
    pub(crate) keys: wallet::keys::NodeKeys,
    pub(crate) settler: Mutex<mpsc::Sender<Settle>>,
    /// Request rates per peer and per cable identity on the cable-facing server.
    pub(crate) limits: crate::limits::RequestLimits,
    /// The latest energy of each session in progress, saved by the settler once a second in
    /// one SQLite transaction for all outlets.
    pub(crate) energy: Mutex<HashMap<String, EnergyMwh>>,
    /// Status sequences (`StatusReport.sequence`) of every outlet stay above this stored mark
    /// across restarts, whatever the clock says (a Pi without a real-time clock).
    pub(crate) status_mark: wallet::sequence::HighWaterMark,
    /// The single-fee input set in progress on each outlet ([`Sets`]).
    pub(crate) sets: Sets,
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// The socket as cables address their signed requests to it (socket.proto `RequestAuth`):
    /// its identity key and network, those of its offers.
    pub(crate) fn recipient(&self) -> proto::request_auth::Recipient {
        proto::request_auth::Recipient {
            socket_identity_key: self.identity.public_key(),
            network: proto::rules::network_to_proto(self.config.network),
        }
    }

    /// The socket's key in spillman channel `index` (m/1017'/1'/index'), compressed.
    pub(crate) fn spillman_key(&self, index: u32) -> bitcoin::PublicKey {
        let secp = bitcoin::secp256k1::Secp256k1::signing_only();
        bitcoin::PublicKey::new(self.keys.channel_secret(index).public_key(&secp))
    }

    /// The store. Held only for one store call at a time, never across I/O.
    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        lock(&self.store)
    }

    /// The socket's wallet (payout addresses, audit anchors).
    pub(crate) fn wallet(&self) -> MutexGuard<'_, NodeWallet> {
        lock(&self.wallet)
    }

    /// Persist a payment that credits `amount` more unconfirmed to the cable of `session_id`
    /// (`write`, a store write) only when the cable's exposure with it stays within
    /// `max_unconfirmed_sat` ([`Store::unconfirmed_of_cable`], design.md "Trust"): the check
    /// and the write under one hold of the store, so two payments of one cable at once cannot
    /// both pass on the same headroom. Errors: `UNAVAILABLE` above it (no blame: the cable pays
    /// again once blocks confirm some), `INTERNAL` for the store.
    pub(crate) fn persist_within_unconfirmed_limit<T>(
        &self,
        session_id: &str,
        amount: Amount,
        write: impl FnOnce(&mut Store) -> crate::store::Result<T>,
    ) -> Result<T, SocketError> {
        let limit = Amount::from_sat(self.config.max_unconfirmed_sat);
        let mut store = self.store();
        if let Some(cable) = store
            .session_cable(session_id)
            .map_err(SocketError::internal)?
        {
            let unconfirmed = store
                .unconfirmed_of_cable(&cable)
                .map_err(SocketError::internal)?;
            if unconfirmed + amount > limit {
                return Err(SocketError::unavailable(format!(
                    "{unconfirmed} of this cable's payments await confirmation; {amount} more \
                     would pass the socket's limit of {limit} unconfirmed: pay again after the \
                     next block"
                )));
            }
        }
        write(&mut store).map_err(SocketError::internal)
    }

    /// A payout address for `outlet_id` that no session holds: one a session nothing paid gave
    /// back (`Store::end_session`), else the next BIP84 receive index of the wallet (revealed
    /// and persisted there), recorded in the store as the one the outlet offers.
    /// Errors: `INTERNAL` when the wallet or the store cannot persist it.
    pub(crate) fn fresh_payout(&self, outlet_id: &str) -> Result<Payout, SocketError> {
        let mut wallet = lock(&self.wallet);
        let store = self.store();
        if let Some(given_back) = store
            .offered_payout(outlet_id)
            .map_err(SocketError::internal)?
        {
            return Ok(given_back);
        }
        let index = store.next_payout_index().map_err(SocketError::internal)?;
        let address = wallet
            .receive_address(index)
            .map_err(SocketError::internal)?;
        let payout = Payout {
            index,
            script: address.script_pubkey(),
        };
        store
            .add_payout(outlet_id, &payout)
            .map_err(SocketError::internal)?;
        tracing::info!(outlet = %outlet_id, index, %address, "new payout address");
        Ok(payout)
    }

    /// A payment of `session_id` credited earlier is lost to the socket (`event`: replaced,
    /// double-spent): record the loss against the session's cable identity, ban it for
    /// `ban_secs` (or for good), and audit it (design.md "Trust"). Locking out a session still
    /// in progress is the caller's part. Store errors are logged: the chain watch finds the
    /// loss again on its next round.
    pub(crate) fn payment_lost(
        &self,
        outlet_id: &str,
        session_id: &str,
        lost: crate::store::Lost,
        amount: Amount,
        event: &str,
        reason: &str,
    ) {
        let until_unix_ms = self
            .config
            .ban_secs
            .map(|secs| crate::store::unix_ms() + (secs as i64).saturating_mul(1_000));
        let blame = crate::store::Blame::Ban { until_unix_ms };
        self.record_loss(outlet_id, session_id, lost, amount, event, reason, blame);
    }

    /// What the socket credited is lost, but not by a proven act of the cable (a parent of its
    /// payment was replaced: design.md "Blame needs proof"): recorded and audited as
    /// `payment-lost-unproven`, counted against the cable's `max_unconfirmed_sat` for good;
    /// nobody is flagged, banned or locked out.
    pub(crate) fn payment_lost_unproven(
        &self,
        outlet_id: &str,
        session_id: &str,
        lost: crate::store::Lost,
        amount: Amount,
        reason: &str,
    ) {
        let event = "payment-lost-unproven";
        let blame = crate::store::Blame::Unproven;
        self.record_loss(outlet_id, session_id, lost, amount, event, reason, blame);
    }

    #[allow(clippy::too_many_arguments)]
    fn record_loss(
        &self,
        outlet_id: &str,
        session_id: &str,
        lost: crate::store::Lost,
        amount: Amount,
        event: &str,
        reason: &str,
        blame: crate::store::Blame,
    ) {
        let store = self.store();
        match store.record_loss(session_id, lost, amount, reason, blame) {
            Ok(Some(cable)) if blame == crate::store::Blame::Unproven => {
                tracing::warn!(session = %session_id, %cable, %amount, "{event}: {reason}")
            }
            Ok(Some(cable)) => {
                tracing::warn!(session = %session_id, %cable, %amount, "{event}: cable banned: {reason}")
            }
            Ok(None) => tracing::warn!(session = %session_id, %amount, "{event}: {reason}"),
            Err(e) => tracing::error!(session = %session_id, "recording a loss of {amount}: {e}"),
        }
        // An unproven loss is audited in the store's own transaction.
        if blame == crate::store::Blame::Unproven {
            return;
        }
        if let Err(e) = store.audit(
            outlet_id,
            Some(session_id),
            event,
            &format!("{amount} lost: {reason}"),
        ) {
            tracing::error!("the audit log did not take a row: {e}");
        }
    }

    /// Hand a closed input set to the settler thread, which broadcasts what it holds.
    pub(crate) fn settle(&self, set: OpenSet) {
        self.send_settle(Settle {
            session_id: set.session_id,
            index: set.index,
            tx: set.seller.latest().cloned(),
        });
    }

    /// Hand a closed input set to the settler thread, which broadcasts it.
    pub(crate) fn send_settle(&self, settle: Settle) {
        let _ = lock(&self.settler).send(settle);
    }

    /// Note the energy delivered so far in a session; saved within a second (a crash loses
    /// at most that much metering, to the socket's cost).
    pub(crate) fn note_energy(&self, session_id: &str, used: EnergyMwh) {
        lock(&self.energy).insert(session_id.to_owned(), used);
    }

    /// Save the energies noted since the last call.
    pub(crate) fn save_energies(&self) {
        let energies: Vec<(String, EnergyMwh)> = lock(&self.energy).drain().collect();
        if energies.is_empty() {
            return;
        }
        if let Err(e) = self.store().save_energies(&energies) {
            tracing::error!("saving the energy of {} sessions: {e}", energies.len());
        }
    }
}
