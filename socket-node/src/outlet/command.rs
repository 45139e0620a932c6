//! The commands an outlet's task takes ([`OutletCommand`]): the only way the rest of the node
//! reads or changes an outlet. Each carries its reply channel; the task brings the outlet up
//! to date (meter, plug, timers) before it runs one. The task alone decides the payment in
//! flight, credits and lockouts: a seller returns its verdict and the service or the station
//! sends the command that applies it.

use proto::units::EnergyMwh;
use proto::v1;
use proto::Scheme;
use tokio::sync::oneshot;

use super::terms::Opened;
use super::{OutletTask, OutletView};
use crate::error::SocketError;
use crate::seller::Issued;
use crate::store::{CableAuth, Payout};

type Reply<T> = oneshot::Sender<T>;

/// A command to an outlet's task.
pub(crate) enum OutletCommand {
    /// The payout address offered now and the spillman channel key of its index.
    Offer(Reply<Result<(Payout, bitcoin::PublicKey), SocketError>>),
    /// Why a session could not open for the cable `key` (hex) now, if it could not.
    OpeningRefusal {
        key: String,
        reply: Reply<Option<String>>,
    },
    /// The session in progress, when the cable `key` (hex) opened it.
    SessionOfCable {
        key: String,
        reply: Reply<Option<String>>,
    },
    /// The signed status, and QuotaLow when it holds.
    Status(Reply<(v1::GetStatusResponse, Option<v1::QuotaLow>)>),
    /// The owner's view.
    View(Reply<OutletView>),
    /// A `PowerRequest`: open (or resume) the session and issue its next payment's terms
    /// ([`OutletTask::issue_terms`]).
    IssueTerms {
        scheme: Scheme,
        request: Box<v1::PowerRequestRequest>,
        cable: CableAuth,
        reply: Reply<Result<Issued, SocketError>>,
    },
    /// An `OpenChannel`: open session `session_id` ([`OutletTask::open_for_channel`]).
    OpenForChannel {
        session_id: String,
        scheme: Scheme,
        cable: CableAuth,
        deposit_txid: String,
        reply: Reply<Result<Opened, SocketError>>,
    },
    /// A payment of `session_id` arrived: mark it in flight (one at a time per session).
    BeginPayment {
        session_id: String,
        reply: Reply<Result<(), SocketError>>,
    },
    /// The payment in flight is done with; `judged`: refused for good, so no longer a payment
    /// waiting on the socket.
    EndPayment { session_id: String, judged: bool },
    /// Credit `quota` to the session in progress (its payment persisted, named by `detail`).
    Credit {
        session_id: String,
        quota: EnergyMwh,
        detail: String,
        reply: Reply<Result<(), SocketError>>,
    },
    /// Lock out for a rule the session's cable broke, when it is the session in progress;
    /// replies whether it locked out.
    LockOut {
        session_id: String,
        reason: String,
        reply: Reply<bool>,
    },
    /// End a session before anything was paid, with no blame.
    Abandon {
        session_id: String,
        reason: String,
        reply: Reply<()>,
    },
    /// End a session at its cable's request; the energy it used.
    EndSession {
        session_id: String,
        reply: Reply<Result<EnergyMwh, SocketError>>,
    },
    /// Whether the session is the one in progress.
    InProgress {
        session_id: String,
        reply: Reply<bool>,
    },
    /// Open the relay and end the task.
    Stop(Reply<()>),
}

impl OutletTask {
    /// Run one command and send its reply (a caller that gave up is not waited for).
    pub(super) fn handle(&mut self, command: OutletCommand) {
        use OutletCommand as C;
        self.tick();
        match command {
            C::Offer(reply) => {
                let offered = self.offered_payout().cloned().map(|payout| {
                    let key = self.shared.spillman_key(payout.index);
                    (payout, key)
                });
                let _ = reply.send(offered);
            }
            C::OpeningRefusal { key, reply } => {
                let _ = reply.send(self.opening_refusal(&key));
            }
            C::SessionOfCable { key, reply } => {
                let _ = reply.send(self.session_of_cable(&key));
            }
            C::Status(reply) => {
                let status = self.status();
                let low = self.machine.quota_is_low().then(|| v1::QuotaLow {
                    quota_remaining_mwh: status.quota_remaining_mwh,
                    power_mw: status.power_mw,
                    signed: status.signed.clone(),
                });
                let _ = reply.send((status, low));
            }
            C::View(reply) => {
                let _ = reply.send(self.view());
            }
            C::IssueTerms {
                scheme,
                request,
                cable,
                reply,
            } => {
                let _ = reply.send(self.issue_terms(scheme, &request, &cable));
            }
            C::OpenForChannel {
                session_id,
                scheme,
                cable,
                deposit_txid,
                reply,
            } => {
                let _ =
                    reply.send(self.open_for_channel(&session_id, scheme, &cable, &deposit_txid));
            }
            C::BeginPayment { session_id, reply } => {
                let _ = reply.send(self.begin_payment(&session_id));
            }
            C::EndPayment { session_id, judged } => {
                if self.paying.as_deref() == Some(session_id.as_str()) {
                    self.paying = None;
                }
                if judged {
                    self.machine.payment_not_credited(&session_id);
                }
            }
            C::Credit {
                session_id,
                quota,
                detail,
                reply,
            } => {
                let _ = reply.send(self.credit(&session_id, quota, &detail));
            }
            C::LockOut {
                session_id,
                reason,
                reply,
            } => {
                let _ = reply.send(self.lock_out(&session_id, &reason));
            }
            C::Abandon {
                session_id,
                reason,
                reply,
            } => {
                self.abandon(&session_id, &reason);
                let _ = reply.send(());
            }
            C::EndSession { session_id, reply } => {
                let _ = reply.send(self.end_session(&session_id));
            }
            C::InProgress { session_id, reply } => {
                let _ = reply.send(self.machine.active_session(&session_id).is_ok());
            }
            C::Stop(reply) => {
                self.stop();
                let _ = reply.send(());
            }
        }
    }

    /// Mark a payment of `session_id` in flight. Errors: `FAILED_PRECONDITION` when it is not
    /// the session in progress, `UNAVAILABLE` (retry) while another payment of it is checked.
    /// The session counts as offered a payment from now on (no lockout for want of one while
    /// the socket checks it, or cannot: design.md "Trust").
    fn begin_payment(&mut self, session_id: &str) -> Result<(), SocketError> {
        self.machine
            .active_session(session_id)
            .map_err(SocketError::wrong_state)?;
        if self.paying.as_deref() == Some(session_id) {
            return Err(SocketError::PaymentInFlight(
                "another payment of this session is being checked; retry".into(),
            ));
        }
        self.paying = Some(session_id.to_owned());
        self.machine.payment_offered(session_id);
        Ok(())
    }
}
