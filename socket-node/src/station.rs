//! The running socket (design.md, "Architecture v2"): its outlets, each an actor
//! ([`crate::outlet`]), and what they share ([`Shared`]); the start-up recovery, and its jobs,
//! ended and joined by [`Station::stop`]: the settler thread that broadcasts held transactions
//! and watches them confirm, and the task that hands Lightning events to the sellers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::error::SocketError;
use anyhow::Context;
use proto::rules::network_to_proto;
use proto::v1;
use wallet::chain::Chain;
use wallet::facts::SEARCH_DEPTH_BLOCKS as WATCH_DEPTH_BLOCKS;
use wallet::keys::NodeKeys;
use wallet::onchain::NodeWallet;
use wallet::WalletError;

use crate::config::{OutletConfig, SocketConfig};
use crate::outlet::{OutletHandle, Outlets};
use crate::sets::Sets;
use crate::shared::{Settle, Shared};
use crate::store::{PaymentStatus, SetStatus, Store};
use proto::Scheme;

/// How often the settler looks at held sets, broadcast transactions and channels when it has
/// nothing to broadcast.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// How long [`Station::stop`] waits for the settler to end its round.
const SETTLER_STOP: Duration = Duration::from_secs(10);

/// Hand each event of the Lightning node to the sellers until the station stops; an event
/// they could not take yet (store or outlet busy) is handed again a second later.
async fn lightning_events(station: Arc<Station>, ln: Arc<ln::ldk_node::Node>) {
    use crate::seller::lightning::{on_event, EventOutcome};
    loop {
        let event = tokio::select! {
            event = ln.next_event_async() => event,
            _ = station.jobs.stop_lightning.notified() => return,
        };
        if station
            .jobs
            .stopping
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        // The seller and the outlet's reply block (store, ldk-node): off the async workers.
        let job = Arc::clone(&station);
        let outcome = tokio::task::spawn_blocking(move || {
            let (outcome, verdict) = on_event(&job.shared, &event);
            if let Some(verdict) = verdict {
                job.apply_ln(verdict);
            }
            outcome
        })
        .await;
        match outcome {
            Ok(EventOutcome::Handled) => {
                if let Err(e) = ln.event_handled() {
                    tracing::error!("Lightning event not marked handled: {e}");
                }
            }
            // ldk-node hands the same event again.
            Ok(EventOutcome::RetryLater) => tokio::time::sleep(Duration::from_secs(1)).await,
            // Not handled: ldk-node hands it again (after a pause, not in a spin).
            Err(e) => {
                tracing::error!("a Lightning event's handler failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// A running socket node: its outlets by id and what they share.
pub struct Station {
    /// What the outlets and sellers share.
    pub shared: Arc<Shared>,
    /// The outlets, by id.
    pub outlets: Arc<Outlets>,
    /// The station's jobs (the settler thread, the Lightning event task), stopped and joined
    /// by [`Station::stop`].
    jobs: Jobs,
}

/// The station's running jobs and the flag that ends them.
#[derive(Default)]
struct Jobs {
    /// Set by [`Station::stop`]: every job ends at its next turn.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Wakes the Lightning event task, which may wait for an event that never comes.
    stop_lightning: Arc<tokio::sync::Notify>,
    /// The settler thread.
    settler: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The task that hands the Lightning node's events to the sellers.
    lightning: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Station {
    /// Start the socket of `config` with its state in `data_dir` (call on a tokio runtime):
    /// keys and wallet (created on first start), bitcoind (network checked), store, the
    /// Lightning node; broadcast what was persisted but not yet broadcast; then every outlet's
    /// task with its hardware, resuming its open session.
    pub fn start(config: SocketConfig, data_dir: &Path) -> anyhow::Result<Arc<Self>> {
        wallet::keys::private_data_dir(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let keys = NodeKeys::load_or_create(data_dir, config.network)?;
        let wallet = NodeWallet::open(data_dir, &keys)?;
        let certificates = config
            .certificates
            .iter()
            .map(|path| {
                proto::identity::CertificateFile::read(path)
                    .with_context(|| format!("certificate {}", path.display()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let chain = Arc::new(Chain::connect(&config.chain, config.network)?);
        match chain.check_watch_needs().context("checking what the chain watch needs")? {
            true => tracing::info!("bitcoind keeps -txindex"),
            false => tracing::info!(
                "bitcoind has no -txindex: the chain watch reads confirmations from outputs and the last {} blocks",
                WATCH_DEPTH_BLOCKS
            ),
        }
        chain.observe(Box::new(|method, took, outcome| {
            crate::metrics::METRICS.rpc(method, took, outcome)
        }));
        let store = Store::open(data_dir).context("opening the store")?;
        let ln = match &config.lightning {
            Some(lightning) => {
                let trusted = lightning
                    .trusted_peers_0conf
                    .iter()
                    .map(|id| {
                        id.parse()
                            .with_context(|| format!("lightning.trusted_peers_0conf: {id}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let settings = ln::LnSettings {
                    listen: Some(lightning.listen),
                    trusted_peers_0conf: trusted,
                    alias: lightning.alias.clone(),
                };
                Some(ln::start_node(data_dir, &keys, &config.chain, &settings)?)
            }
            None => None,
        };
        rebroadcast(&store, &chain)?;
        let held_sets = store.open_sets()?;
        let (settle_tx, settle_rx) = mpsc::channel();
        let status_mark = wallet::sequence::HighWaterMark::load(data_dir.join("status_sequence"))
            .context("the status sequence")?;
        let config_outlet_ids: Vec<String> = config.outlets.iter().map(|o| o.id.clone()).collect();
        let shared = Arc::new(Shared {
            status_mark,
            chain_permits: tokio::sync::Semaphore::new(config.max_chain_calls),
            limits: crate::limits::RequestLimits::new(&config.limits),
            config,
            store: Mutex::new(store),
            wallet: Mutex::new(wallet),
            chain,
            ln,
            identity: bitcoin::secp256k1::Keypair::from_secret_key(
                &bitcoin::secp256k1::Secp256k1::signing_only(),
                &keys.identity_secret(),
            ),
            identity_key: keys.identity_key().inner.serialize(),
            certificates,
            keys: keys.clone(),
            settler: Mutex::new(settle_tx),
            energy: Mutex::default(),
            sets: Sets::new(config_outlet_ids.iter().map(String::as_str)),
        });
        let mut outlets = BTreeMap::new();
        for outlet in &shared.config.outlets {
            let offer = offer_of(&shared, outlet, &keys);
            let handle = OutletHandle::spawn(outlet.clone(), offer, Arc::clone(&shared))?;
            tracing::info!(outlet = %outlet.id, "outlet ready");
            outlets.insert(outlet.id.clone(), handle);
        }
        let station = Arc::new(Station {
            shared,
            outlets: Arc::new(Outlets::new(outlets)),
            jobs: Jobs::default(),
        });
        crate::seller::spillman::rebroadcast_deposits(&station.shared);
        if let Some(ln) = station.shared.ln.clone() {
            let task = tokio::spawn(lightning_events(Arc::clone(&station), ln));
            *crate::shared::lock(&station.jobs.lightning) = Some(task);
        }
        {
            let job = Arc::clone(&station);
            let settler = std::thread::Builder::new()
                .name("settler".into())
                .spawn(move || job.run_settler(settle_rx))
                .context("starting the settler")?;
            *crate::shared::lock(&station.jobs.settler) = Some(settler);
        }
        // Sets held when the socket stopped are broadcast now (paper §VI: the socket must not
        // sit on them); the session's next payment starts a new set.
        for set in held_sets {
            tracing::info!(session = %set.session_id, set = set.index, "broadcasting a set held before the restart");
            station.shared.send_settle(Settle {
                session_id: set.session_id,
                index: set.index,
                tx: set.latest,
            });
        }
        tracing::info!(
            identity = %keys.identity_key(),
            outlets = station.outlets.len(),
            "socket ready"
        );
        Ok(station)
    }

    /// Apply a Lightning seller's verdict on its session's outlet (blocking: the Lightning
    /// event thread). A payment recorded whose session is no longer in progress stays recorded
    /// with it (counted when the outlet resumes the session after a restart, if it was only
    /// stopping), and a keysend's is audited (`keysend-after-end`).
    fn apply_ln(&self, verdict: crate::seller::lightning::LnVerdict) {
        use crate::seller::lightning::LnVerdict;
        match verdict {
            LnVerdict::Credit {
                session_id,
                quota,
                payment_hash,
                keysend_payment_id,
            } => {
                let credited =
                    self.outlets
                        .of_session(&self.shared, &session_id)
                        .and_then(|outlet| {
                            outlet.credit_blocking(session_id.clone(), quota, payment_hash.clone())
                        });
                let Err(why) = credited else { return };
                tracing::warn!(hash = %payment_hash, session = %session_id, "payment received for a session no longer in progress: {why}");
                if let Some(payment_id) = keysend_payment_id {
                    let outlet_id = self
                        .shared
                        .store()
                        .session_outlet(&session_id)
                        .ok()
                        .flatten()
                        .unwrap_or_default();
                    if let Err(e) = self.shared.store().audit(
                        &outlet_id,
                        Some(&session_id),
                        "keysend-after-end",
                        &format!("payment {payment_id} ({payment_hash}): {why}"),
                    ) {
                        tracing::error!("the audit log did not take a row: {e}");
                    }
                }
            }
            LnVerdict::LockOut {
                session_id,
                reason,
                payment_hash,
                amount_msat,
            } => {
                let locked_out = self
                    .outlets
                    .of_session(&self.shared, &session_id)
                    .is_ok_and(|outlet| {
                        outlet.lock_out_blocking(session_id.clone(), reason.clone())
                    });
                if !locked_out {
                    crate::seller::lightning::keysend_not_credited(
                        &self.shared,
                        &payment_hash,
                        amount_msat,
                        &format!("after session {session_id} ended: {reason}"),
                    );
                }
            }
        }
    }

    /// The outlet `id`. Errors: `NOT_FOUND`.
    pub fn outlet(&self, id: &str) -> Result<&OutletHandle, SocketError> {
        self.outlets.get(id)
    }

    /// The first check of every call on the cable-facing server: `peer` within its request
    /// rate ([`crate::limits`]). Errors: `RESOURCE_EXHAUSTED`.
    pub fn check_peer(&self, peer: Option<std::net::SocketAddr>) -> Result<(), SocketError> {
        self.shared.limits.check_peer(peer)
    }

    /// The outlet of a session.
    pub fn outlet_of_session(&self, session_id: &str) -> Result<&OutletHandle, SocketError> {
        self.outlets.of_session(&self.shared, session_id)
    }

    /// Revoke the cable identity `key` for good, by the owner (design.md "Attestation"): stored
    /// and audited first, then its sessions in progress end in lockout. Returns those
    /// sessions. Errors: `INVALID_ARGUMENT` for an empty reason or one over 500 bytes;
    /// `INTERNAL` when the store fails (nothing revoked then).
    pub async fn revoke_cable(
        &self,
        key: &bitcoin::secp256k1::PublicKey,
        reason: &str,
    ) -> Result<Vec<String>, SocketError> {
        let reason = reason.trim().to_owned();
        if reason.is_empty() || reason.len() > 500 {
            return Err(SocketError::invalid("give a reason (1 to 500 bytes)"));
        }
        let shared = Arc::clone(&self.shared);
        let (key_hex, why) = (key.to_string(), reason.clone());
        let open = tokio::task::spawn_blocking(move || shared.store().revoke_cable(&key_hex, &why))
            .await
            .map_err(SocketError::internal)?
            .map_err(SocketError::internal)?;
        tracing::warn!(cable = %key, %reason, halted = open.len(), "cable revoked by the operator");
        for (session_id, outlet_id) in &open {
            if let Ok(outlet) = self.outlet(outlet_id) {
                let session = session_id.clone();
                let why = format!("cable revoked by the operator: {reason}");
                outlet.lock_out(session, why).await;
            }
        }
        Ok(open.into_iter().map(|(session, _)| session).collect())
    }

    /// Shut down: open every relay (saving each session's energy), end the jobs (the settler
    /// broadcasts what it was handed first) and wait for them, then stop the Lightning node.
    /// The store's writes are synchronous, so nothing is in flight after this.
    pub async fn stop(&self) {
        for outlet in self.outlets.iter() {
            outlet.stop().await;
        }
        self.jobs
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.jobs.stop_lightning.notify_one();
        let lightning = crate::shared::lock(&self.jobs.lightning).take();
        if let Some(task) = lightning {
            if let Err(e) = task.await {
                tracing::error!("the Lightning event task failed: {e}");
            }
        }
        // The settler ends after its round (bitcoind calls included): waited for at most
        // SETTLER_STOP; one stuck on a frozen bitcoind is left to end with the process.
        let settler = crate::shared::lock(&self.jobs.settler).take();
        if let Some(thread) = settler {
            let joined = tokio::time::timeout(
                SETTLER_STOP,
                tokio::task::spawn_blocking(move || thread.join()),
            )
            .await;
            match joined {
                Ok(Ok(Ok(()))) => {}
                Ok(_) => tracing::error!("the settler thread panicked"),
                Err(_) => tracing::warn!("the settler did not end within {SETTLER_STOP:?}"),
            }
        }
        if let Some(ln) = self.shared.ln.clone() {
            let _ = tokio::task::spawn_blocking(move || ln.stop()).await;
        }
        tracing::info!("socket stopped: every relay open");
    }

    /// Broadcast held sets as they are settled; otherwise, every [`WATCH_EVERY`], watch held
    /// sets for spent inputs, broadcast sets until they confirm, and spillman channels due to
    /// close (paper §VI, §VII.B; seed 003), and anchor the audit log when due.
    fn run_settler(&self, requests: mpsc::Receiver<Settle>) {
        // The first anchor is one interval after start, not at once: a socket starting (or a
        // suite of them) does not sync its wallet with bitcoind before it serves.
        let mut last_anchor_try = Some(std::time::Instant::now());
        // Sets whose closing the store did not take: settled again each round.
        let mut unstored: Vec<Settle> = Vec::new();
        loop {
            if self.jobs.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                // What it was handed is broadcast before it ends; the rest waits for the next
                // start (held sets are broadcast then).
                while let Ok(settle) = requests.try_recv() {
                    self.broadcast_set(settle);
                }
                self.shared.save_energies();
                return;
            }
            match requests.recv_timeout(WATCH_EVERY) {
                Ok(settle) => unstored.extend(self.broadcast_set(settle)),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    for settle in std::mem::take(&mut unstored) {
                        unstored.extend(self.broadcast_set(settle));
                    }
                    self.shared.save_energies();
                    // Closes due first: a spillman close must not wait on the watches.
                    crate::seller::spillman::close_due(&self.shared);
                    let watch = crate::chain_watch::ChainWatch {
                        shared: &self.shared,
                        outlets: &self.outlets,
                    };
                    watch.watch_held_sets();
                    watch.watch_sets();
                    watch.watch_payments();
                    crate::seller::spillman::watch_channels(&self.shared);
                    self.shared.limits.forget_idle();
                    crate::anchor::anchor_due(&self.shared, &mut last_anchor_try);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    /// Broadcast a closed set's latest transaction (if any) and store how it closed. Returns
    /// the set again when the store failed that write (sending it again is harmless).
    fn broadcast_set(&self, settle: Settle) -> Option<Settle> {
        let retry = settle.clone();
        let Settle {
            session_id,
            index,
            tx,
        } = settle;
        let store = || self.shared.store();
        let outlet_id = store()
            .session_outlet(&session_id)
            .ok()
            .flatten()
            .unwrap_or_default();
        let Some(tx) = tx else {
            return store()
                .close_set(&session_id, index, SetStatus::Empty, None)
                .err()
                .map(|_| retry);
        };
        // Closed either way: a refused or unanswered broadcast is sent again by the chain
        // watch, which also tells a replacement (named, blamed) from the rest (no blame).
        let txid = tx.compute_txid();
        let detail = match self.shared.chain.broadcast(&tx) {
            Ok(_) => {
                tracing::info!(session = %session_id, set = index, %txid, "input set broadcast");
                txid.to_string()
            }
            Err(e) => {
                tracing::warn!(session = %session_id, set = index, %txid, "input set not taken yet ({e}): the chain watch sends it again");
                format!("{txid}, not taken yet: {e}")
            }
        };
        let status = SetStatus::Broadcast;
        let store = store();
        if let Err(e) = store.close_set(&session_id, index, status, Some(&tx)) {
            tracing::error!(session = %session_id, set = index, "storing the set's close (again next round): {e}");
            return Some(retry);
        }
        if let Err(e) = store.audit(
            &outlet_id,
            Some(&session_id),
            &format!("set-{status}"),
            &detail,
        ) {
            tracing::error!("the audit log did not take a row: {e}");
        }
        None
    }
}

/// The offer of `outlet`, but for the payout script (the outlet's current payout address)
/// and the cable's nonce, filled in per request.
fn offer_of(shared: &Shared, outlet: &OutletConfig, keys: &NodeKeys) -> v1::Offer {
    use v1::scheme_terms::Terms;
    let config = &shared.config;
    let terms_of = |scheme: &Scheme| match scheme {
        Scheme::Onchain => Terms::Onchain(v1::OnchainOfferTerms {}),
        Scheme::SingleFee => Terms::SingleFee(v1::SingleFeeOfferTerms {
            max_amount_sat: outlet.single_fee_max_sat,
        }),
        // Its channel key is the one of the payout index offered, filled in per request.
        Scheme::Spillman => {
            Terms::Spillman(crate::seller::spillman::offer_terms(shared, outlet, 0))
        }
        Scheme::Lightning => Terms::Lightning(v1::LightningOfferTerms {
            node_id: shared
                .ln
                .as_ref()
                .map(|n| n.node_id().serialize().to_vec())
                .unwrap_or_default(),
            address: config
                .lightning
                .as_ref()
                .map(|l| l.listen.to_string())
                .unwrap_or_default(),
            keysend: config.lightning.as_ref().is_some_and(|l| l.keysend),
        }),
    };
    v1::Offer {
        socket_identity_key: keys.identity_key().to_bytes(),
        outlet_id: outlet.id.clone(),
        network: network_to_proto(config.network) as i32,
        price_msat_per_wh: outlet.price_msat_per_wh,
        quota_mwh: outlet.quota_mwh,
        schemes: outlet
            .schemes
            .iter()
            .map(|scheme| v1::SchemeTerms {
                scheme: scheme.to_proto() as i32,
                min_payment_sat: outlet.min_payment_sat,
                min_fee_rate_sat_per_vb: match scheme {
                    Scheme::Lightning => 0,
                    _ => outlet.min_fee_rate_sat_per_vb,
                },
                terms: Some(terms_of(scheme)),
            })
            .collect(),
        payout_script: Vec::new(),
        cable_nonce: Vec::new(),
    }
}

/// Broadcast payments persisted before a crash but not yet broadcast; a payment bitcoind now
/// refuses (its inputs were spent meanwhile) is marked failed and not credited.
fn rebroadcast(store: &Store, chain: &Chain) -> anyhow::Result<()> {
    for payment in store.unbroadcast_payments()? {
        let txid = payment.tx.compute_txid();
        match chain.broadcast(&payment.tx) {
            Ok(_) => {
                tracing::info!(%txid, session = %payment.session_id, "broadcast after restart");
                store.set_payment_status(
                    &payment.session_id,
                    payment.payment_id,
                    PaymentStatus::Broadcast,
                )?;
            }
            Err(WalletError::Unreachable { message, .. }) => {
                // Not refused: the chain watch sends it once bitcoind answers.
                tracing::warn!(%txid, "bitcoind did not answer the rebroadcast ({message})");
            }
            Err(e) => {
                tracing::warn!(%txid, "payment failed on rebroadcast: {e}");
                store.set_payment_status(
                    &payment.session_id,
                    payment.payment_id,
                    PaymentStatus::Failed,
                )?;
                let outlet_id = store
                    .session_outlet(&payment.session_id)?
                    .unwrap_or_default();
                store.audit(
                    &outlet_id,
                    Some(&payment.session_id),
                    "payment-failed",
                    &e.to_string(),
                )?;
            }
        }
    }
    Ok(())
}
