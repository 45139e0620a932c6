//! How the rest of the node talks to an outlet: [`OutletHandle`] sends commands to the
//! outlet's task and waits for their replies; [`Outlets`] holds every outlet's handle by id.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use proto::units::EnergyMwh;
use proto::v1;
use proto::Scheme;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::command::OutletCommand;
use super::presence::{Presence, PresenceGuard};
use super::terms::Opened;
use super::{check_id_len, OutletTask, OutletView};
use crate::config::OutletConfig;
use crate::error::SocketError;
use crate::seller::Issued;
use crate::shared::Shared;
use crate::store::CableAuth;

/// The outlets of a socket, by id.
pub struct Outlets(BTreeMap<String, OutletHandle>);

impl Outlets {
    /// The outlets of `handles`, by id.
    pub(crate) fn new(handles: BTreeMap<String, OutletHandle>) -> Self {
        Outlets(handles)
    }

    /// The outlet `id`. Errors: `NOT_FOUND`.
    pub fn get(&self, id: &str) -> Result<&OutletHandle, SocketError> {
        check_id_len("outlet id", id)?;
        self.0
            .get(id)
            .ok_or_else(|| SocketError::not_found(format!("no outlet {id:?} here")))
    }

    /// The outlet a stored session belongs to. Errors: `NOT_FOUND` for an unknown session,
    /// `INVALID_ARGUMENT` for an id longer than [`MAX_ID_BYTES`].
    pub(crate) fn of_session(
        &self,
        shared: &Shared,
        session_id: &str,
    ) -> Result<&OutletHandle, SocketError> {
        check_id_len("session id", session_id)?;
        let outlet_id = shared
            .store()
            .session_outlet(session_id)
            .map_err(SocketError::internal)?
            .ok_or_else(|| SocketError::not_found(format!("no session {session_id:?} here")))?;
        self.get(&outlet_id)
    }

    /// Every outlet, by id.
    pub fn iter(&self) -> impl Iterator<Item = &OutletHandle> {
        self.0.values()
    }

    /// How many outlets.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Calls of the cable-facing server that may wait for one outlet at once; reads are refused
/// from half of it ([`OutletHandle::snapshot`]). The socket's own commands are not counted:
/// those of the settler and the Lightning events, and the credits, lockouts and ends that apply
/// a verdict on a payment already checked: they must not be refused.
const QUEUE_LIMIT: usize = 256;

/// A running outlet: its config and offer, and the channel to its task.
pub struct OutletHandle {
    /// The outlet's config.
    pub config: OutletConfig,
    /// Its offer, but for the payout script and nonce (filled in per request).
    offer: v1::Offer,
    events: broadcast::Sender<v1::WatchStatusResponse>,
    presence: Arc<Presence>,
    commands: mpsc::UnboundedSender<Envelope>,
    /// Calls from the cable-facing server queued and not yet run ([`QUEUE_LIMIT`]).
    queued: Arc<AtomicUsize>,
}

/// A command on its way to the outlet's task, and its place in the queue when it counts.
pub(super) struct Envelope {
    pub(super) command: OutletCommand,
    pub(super) place: Option<Place>,
}

/// Gives a call's place in the queue back however it ends (run, or dropped).
pub(super) struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Who asks: the cable-facing server (counted against [`QUEUE_LIMIT`]; a read is shed from
/// half of it) or the socket itself (never refused).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Caller {
    Cable,
    CableRead,
    Socket,
}

impl OutletHandle {
    /// Start the task of one outlet (on the current tokio runtime) with its hardware: relay
    /// opened, meter read, the stored open session resumed.
    pub(crate) fn spawn(
        config: OutletConfig,
        offer: v1::Offer,
        shared: Arc<Shared>,
    ) -> anyhow::Result<Self> {
        let (events, _) = broadcast::channel(256);
        let presence = Arc::new(Presence::default());
        let (commands, receiver) = mpsc::unbounded_channel();
        let task = OutletTask::new(
            config.clone(),
            shared,
            events.clone(),
            Arc::clone(&presence),
        )?;
        tokio::spawn(task.run(receiver));
        Ok(OutletHandle {
            config,
            offer,
            events,
            presence,
            commands,
            queued: Arc::default(),
        })
    }

    /// The outlet's id.
    pub fn id(&self) -> &str {
        &self.config.id
    }

    /// Send the command `make` builds and wait for its reply. Errors: `UNAVAILABLE` when the
    /// outlet has stopped, or has [`QUEUE_LIMIT`] calls of the cable-facing server waiting
    /// (nothing changed: ask again); `RESOURCE_EXHAUSTED` for a read once half of them wait,
    /// so that a flood of reads cannot delay a payment past its grace period.
    async fn ask<R>(
        &self,
        caller: Caller,
        make: impl FnOnce(oneshot::Sender<R>) -> OutletCommand,
    ) -> Result<R, SocketError> {
        let (reply, answer) = oneshot::channel();
        self.send(caller, make(reply))?;
        answer.await.map_err(|_| stopped())
    }

    /// [`OutletHandle::ask`] from a thread outside the runtime (the settler's chain watch, the
    /// Lightning event handler), for the socket's own commands.
    fn ask_blocking<R>(
        &self,
        make: impl FnOnce(oneshot::Sender<R>) -> OutletCommand,
    ) -> Result<R, SocketError> {
        let (reply, answer) = oneshot::channel();
        self.send(Caller::Socket, make(reply))?;
        answer.blocking_recv().map_err(|_| stopped())
    }

    fn send(&self, caller: Caller, command: OutletCommand) -> Result<(), SocketError> {
        let place = match caller {
            Caller::Socket => None,
            Caller::Cable | Caller::CableRead => {
                if caller == Caller::CableRead
                    && self.queued.load(Ordering::SeqCst) >= QUEUE_LIMIT / 2
                {
                    return Err(SocketError::RateLimited(format!(
                        "outlet {} is busy; ask again later",
                        self.config.id
                    )));
                }
                if self.queued.fetch_add(1, Ordering::SeqCst) >= QUEUE_LIMIT {
                    self.queued.fetch_sub(1, Ordering::SeqCst);
                    return Err(SocketError::unavailable(format!(
                        "outlet {} has {QUEUE_LIMIT} calls waiting; ask again",
                        self.config.id
                    )));
                }
                Some(Place(Arc::clone(&self.queued)))
            }
        };
        self.commands
            .send(Envelope { command, place })
            .map_err(|_| stopped())
    }

    /// The offer now, answering `cable_nonce`: the outlet's terms and the payout address it
    /// offers (signed by the caller).
    pub(crate) async fn offer(&self, cable_nonce: Vec<u8>) -> Result<v1::Offer, SocketError> {
        let (payout, channel_key) = self.ask(Caller::Cable, OutletCommand::Offer).await??;
        let mut offer = v1::Offer {
            payout_script: payout.script.to_bytes(),
            cable_nonce,
            ..self.offer.clone()
        };
        // A spillman channel opened on this offer uses the key of the same index.
        for entry in &mut offer.schemes {
            if let Some(v1::scheme_terms::Terms::Spillman(terms)) = &mut entry.terms {
                terms.socket_channel_key = channel_key.to_bytes();
            }
        }
        Ok(offer)
    }

    /// Subscribe to status changes and QuotaLow while the guard lives: a watcher, and the
    /// presence of `cable` (identity key hex, sequence) when the stream was signed
    /// ([`presence`]). Errors: `UNAUTHENTICATED` for a replayed signed request.
    pub(crate) fn watch(
        &self,
        cable: Option<(String, u64)>,
    ) -> Result<(broadcast::Receiver<v1::WatchStatusResponse>, PresenceGuard), SocketError> {
        let guard = self.presence.watch(cable)?;
        Ok((self.events.subscribe(), guard))
    }

    /// Status now and whether QuotaLow holds, for a new watcher or `GetStatus` (a read: shed
    /// first when the outlet is busy, [`OutletHandle::ask`]).
    pub(crate) async fn snapshot(
        &self,
    ) -> Result<(v1::GetStatusResponse, Option<v1::QuotaLow>), SocketError> {
        self.ask(Caller::CableRead, OutletCommand::Status).await
    }

    /// Why the outlet could not open a session for the cable `key` (hex) now, if it could not
    /// (a read, [`OutletHandle::snapshot`]).
    pub(crate) async fn opening_refusal(&self, key: String) -> Result<Option<String>, SocketError> {
        self.ask(Caller::CableRead, |reply| OutletCommand::OpeningRefusal {
            key,
            reply,
        })
        .await
    }

    /// The session in progress, when the cable `key` (hex) opened it (a read,
    /// [`OutletHandle::snapshot`]).
    pub(crate) async fn session_of_cable(
        &self,
        key: String,
    ) -> Result<Option<String>, SocketError> {
        self.ask(Caller::CableRead, |reply| OutletCommand::SessionOfCable {
            key,
            reply,
        })
        .await
    }

    /// The outlet as its owner sees it now ([`OutletView`]). Errors: `UNAVAILABLE` when the
    /// outlet has stopped.
    pub async fn view(&self) -> Result<OutletView, SocketError> {
        self.ask(Caller::Cable, OutletCommand::View).await
    }

    /// Issue the terms of a `PowerRequest` of `cable` paying with `scheme`
    /// ([`OutletCommand::IssueTerms`]).
    pub(crate) async fn issue_terms(
        &self,
        scheme: Scheme,
        request: v1::PowerRequestRequest,
        cable: CableAuth,
    ) -> Result<Issued, SocketError> {
        self.ask(Caller::Cable, |reply| OutletCommand::IssueTerms {
            scheme,
            request: Box::new(request),
            cable,
            reply,
        })
        .await?
    }

    /// Open session `session_id` of `scheme` for `cable` on an `OpenChannel`
    /// ([`OutletCommand::OpenForChannel`]).
    pub(crate) async fn open_for_channel(
        &self,
        session_id: String,
        scheme: Scheme,
        cable: CableAuth,
        deposit_txid: String,
    ) -> Result<Opened, SocketError> {
        self.ask(Caller::Cable, |reply| OutletCommand::OpenForChannel {
            session_id,
            scheme,
            cable,
            deposit_txid,
            reply,
        })
        .await?
    }

    /// Mark a payment of `session_id` in flight ([`OutletCommand::BeginPayment`]).
    pub(crate) async fn begin_payment(&self, session_id: String) -> Result<(), SocketError> {
        self.ask(Caller::Cable, |reply| OutletCommand::BeginPayment {
            session_id,
            reply,
        })
        .await?
    }

    /// The payment of `session_id` in flight is done with; `judged` when it was refused for
    /// good (not for want of a check). Does not wait (a guard's drop sends it).
    pub(crate) fn end_payment(&self, session_id: String, judged: bool) {
        let _ = self.send(
            Caller::Socket,
            OutletCommand::EndPayment { session_id, judged },
        );
    }

    /// Credit `quota` to `session_id`, whose payment (`detail`: its txid or payment hash) is
    /// persisted. Errors: `FAILED_PRECONDITION` when it is not the session in progress.
    pub(crate) async fn credit(
        &self,
        session_id: String,
        quota: EnergyMwh,
        detail: String,
    ) -> Result<(), SocketError> {
        self.ask(Caller::Socket, |reply| OutletCommand::Credit {
            session_id,
            quota,
            detail,
            reply,
        })
        .await?
    }

    /// [`OutletHandle::credit`] from outside the runtime.
    pub(crate) fn credit_blocking(
        &self,
        session_id: String,
        quota: EnergyMwh,
        detail: String,
    ) -> Result<(), SocketError> {
        self.ask_blocking(|reply| OutletCommand::Credit {
            session_id,
            quota,
            detail,
            reply,
        })?
    }

    /// Lock the outlet out for `reason` when `session_id` is the session in progress (proof in
    /// hand: design.md "Blame needs proof"), recording the anomaly. Returns whether it did (not
    /// for a session that ended, nor when the outlet has stopped).
    pub(crate) async fn lock_out(&self, session_id: String, reason: String) -> bool {
        self.ask(Caller::Socket, |reply| OutletCommand::LockOut {
            session_id,
            reason,
            reply,
        })
        .await
        .unwrap_or(false)
    }

    /// [`OutletHandle::lock_out`] from outside the runtime.
    pub(crate) fn lock_out_blocking(&self, session_id: String, reason: String) -> bool {
        self.ask_blocking(|reply| OutletCommand::LockOut {
            session_id,
            reason,
            reply,
        })
        .unwrap_or(false)
    }

    /// End `session_id` before anything was paid, with no blame.
    pub(crate) async fn abandon(&self, session_id: String, reason: String) {
        let _ = self
            .ask(Caller::Socket, |reply| OutletCommand::Abandon {
                session_id,
                reason,
                reply,
            })
            .await;
    }

    /// End `session_id` at its cable's request; the energy it used. Errors:
    /// `FAILED_PRECONDITION` when it is not the session in progress.
    pub(crate) async fn end_session(&self, session_id: String) -> Result<EnergyMwh, SocketError> {
        self.ask(Caller::Cable, |reply| OutletCommand::EndSession {
            session_id,
            reply,
        })
        .await?
    }

    /// Whether `session_id` is the session in progress.
    pub(crate) async fn in_progress(&self, session_id: String) -> Result<bool, SocketError> {
        self.ask(Caller::Cable, |reply| OutletCommand::InProgress {
            session_id,
            reply,
        })
        .await
    }

    /// Open the relay and stop the task (shutdown). Waits until the relay is open.
    pub(crate) async fn stop(&self) {
        let _ = self.ask(Caller::Socket, OutletCommand::Stop).await;
    }
}

fn stopped() -> SocketError {
    SocketError::unavailable("the outlet has stopped")
}
