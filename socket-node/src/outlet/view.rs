//! What an outlet shows: its [`OutletView`] (the dashboard's and the operator's read) and its
//! signed status (`GetStatusResponse`, socket.proto "Trust"), built by the outlet's task.

use crate::store::unix_ms;
use proto::units::PowerMw;
use proto::v1;

use super::OutletTask;

/// An outlet as its owner sees it now (the dashboard): unlike the public status, it names the
/// session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutletView {
    /// The outlet.
    pub outlet_id: String,
    /// `standby`, `paid` or `lockout` (paper §III).
    pub state: &'static str,
    /// Whether the relay is closed (power flows).
    pub relay_closed: bool,
    /// Whether a cable is plugged in.
    pub plugged: bool,
    /// Power now, mW.
    pub power_mw: u64,
    /// The outlet's price, msat per Wh.
    pub price_msat_per_wh: u64,
    /// The session in progress.
    pub session_id: Option<String>,
    /// Energy the session used, mWh.
    pub energy_used_mwh: u64,
    /// Energy paid and not yet used, mWh.
    pub quota_remaining_mwh: u64,
    /// Payments credited to the session.
    pub payments: u64,
    /// In lockout: why; empty otherwise.
    pub lockout_reason: String,
    /// In lockout: seconds left.
    pub lockout_remaining_secs: u64,
    /// When this view was taken, Unix ms.
    pub time_unix_ms: i64,
}

impl OutletTask {
    /// Power through the outlet as last metered (nothing while the relay is open).
    pub(super) fn power(&self) -> PowerMw {
        if self.hw.relay.is_closed() {
            self.last_reading.power
        } else {
            PowerMw(0)
        }
    }

    /// The outlet's status now, signed (design.md "Trust": the session shows only as its
    /// hash; the signed report carries a new sequence).
    pub(super) fn view(&self) -> OutletView {
        let session = self.machine.session();
        let (lockout_reason, lockout_remaining_secs) = match self.machine.lockout() {
            Some((reason, until)) => (
                reason.to_owned(),
                until.saturating_sub(self.now_ms()).div_ceil(1_000),
            ),
            None => (String::new(), 0),
        };
        OutletView {
            outlet_id: self.config.id.clone(),
            state: match self.machine.state() {
                v1::OutletState::Paid => "paid",
                v1::OutletState::Lockout => "lockout",
                _ => "standby",
            },
            relay_closed: self.hw.relay.is_closed(),
            plugged: self.machine.plugged(),
            power_mw: self.power().0,
            price_msat_per_wh: self.config.price_msat_per_wh,
            session_id: session.map(|s| s.id.clone()),
            energy_used_mwh: session.map_or(0, |s| s.used.0),
            quota_remaining_mwh: session.map_or(0, |s| s.remaining().0),
            payments: session.map_or(0, |s| s.payments),
            lockout_reason,
            lockout_remaining_secs,
            time_unix_ms: unix_ms(),
        }
    }

    pub(crate) fn status(&mut self) -> v1::GetStatusResponse {
        let now_unix_ms = u64::try_from(unix_ms()).unwrap_or_default();
        self.status_sequence = (self.status_sequence + 1).max(now_unix_ms);
        self.shared.status_mark.reserve(self.status_sequence);
        let session = self.machine.session();
        let session_hash = proto::identity::session_hash(session.map_or("", |s| s.id.as_str()));
        let (reason, lockout_remaining_secs) = match self.machine.lockout() {
            Some((reason, until)) => (
                reason.to_owned(),
                until.saturating_sub(self.now_ms()).div_ceil(1_000),
            ),
            None => (String::new(), 0),
        };
        let report = v1::StatusReport {
            socket_identity_key: self.shared.identity_key.to_vec(),
            outlet_id: self.config.id.clone(),
            session_hash: session_hash.clone(),
            state: self.machine.state() as i32,
            energy_used_mwh: session.map_or(0, |s| s.used.0),
            quota_remaining_mwh: session.map_or(0, |s| s.remaining().0),
            payments: session.map_or(0, |s| s.payments),
            sequence: self.status_sequence,
            time_unix_ms: now_unix_ms,
        };
        v1::GetStatusResponse {
            outlet_id: self.config.id.clone(),
            state: report.state,
            energy_used_mwh: report.energy_used_mwh,
            quota_remaining_mwh: report.quota_remaining_mwh,
            power_mw: self.power().0,
            lockout_remaining_secs,
            reason,
            relay_closed: self.hw.relay.is_closed(),
            payments: report.payments,
            session_hash,
            signed: Some(proto::identity::sign_status(&report, &self.shared.identity)),
        }
    }
}
