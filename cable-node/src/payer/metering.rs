//! The cable's checks of its socket (design.md "Attestation"; seed 000 §VII.B; seed 004): its
//! own meter against the socket's signed count, QuotaLows that ask for more than is due, and the
//! metering receipts it countersigns. A socket caught is flagged in the cable's registry of
//! sockets (`cable-node sockets`) with the evidence, and paid no more.

use anyhow::Context;
use bitcoin::hex::DisplayHex;
use proto::receipt::MeterCheck;
use proto::v1;

use super::{Cable, CableError, Session};
use crate::policy::AcceptedOffer;

/// The newest signed status of the session, with the cable's meter when it arrived: what the
/// next receipt countersigns.
pub(super) struct Latest {
    pub(super) signed: v1::SignedStatus,
    pub(super) report: v1::StatusReport,
    /// The cable's energy in the session then; `None` without a meter.
    pub(super) cable_mwh: Option<u64>,
}

/// The cable's own books of a session (design.md "Blame needs proof": the cable trusts them
/// over the socket's word): the energy paid for (whole quotas paid × quota) less the energy
/// used, the lower of its own meter's count (when it has one) and the socket's signed count,
/// in mWh; negative when the socket let the appliance draw past what was paid (its grace).
pub(super) fn paid_unused_mwh(
    session: &Session,
    report: &v1::StatusReport,
    accepted: &AcceptedOffer,
) -> i128 {
    let quotas_paid = session.paid.to_sat() / accepted.quota_amount.to_sat().max(1);
    let paid_mwh = i128::from(quotas_paid) * i128::from(accepted.quota.0);
    let cable_mwh = session.latest.as_ref().and_then(|l| l.cable_mwh);
    let used_mwh = cable_mwh.map_or(report.energy_used_mwh, |c| c.min(report.energy_used_mwh));
    paid_mwh - i128::from(used_mwh)
}

/// This many QuotaLows of a session with more than a quota left flag the socket.
const QUOTA_LOW_STORM: u32 = 3;

impl Cable {
    /// A session starts: a fresh appliance (simulator), the meter's count from here.
    pub(super) fn start_metering(&mut self, session: &mut Session) {
        self.hw.plug_in();
        session.meter = MeterCheck::new(self.config.policy.meter_tolerance());
        session.meter_base_mwh = 0;
        session.meter_base_mwh = self.meter_now(session).unwrap_or(0);
    }

    /// The cable's energy in the session now; `None` without a meter, or when it fails (the
    /// socket's count goes unchecked meanwhile, said in the log).
    pub(super) fn meter_now(&mut self, session: &Session) -> Option<u64> {
        match self.hw.read()? {
            Ok(reading) => Some(reading.energy.0.saturating_sub(session.meter_base_mwh)),
            Err(e) => {
                tracing::warn!("the cable's meter: {e}; the socket's count is not checked");
                None
            }
        }
    }

    /// The cable's check of the socket's count against its own meter (seed 000 §VII.B;
    /// socket.proto "Meter agreement"). A socket ahead beyond the tolerance is flagged in the
    /// cable's registry of sockets, with the evidence, and is paid no more:
    /// [`CableError::SocketOverCounts`].
    pub(super) fn check_count(
        &mut self,
        session: &mut Session,
        report: &v1::StatusReport,
        cable_mwh: u64,
        accepted: &AcceptedOffer,
    ) -> Result<(), CableError> {
        let Err(disagreement) = session.meter.observe(report.energy_used_mwh, cable_mwh) else {
            return Ok(());
        };
        let reason = format!("its count runs ahead of the cable's meter: {disagreement}");
        let evidence = serde_json::json!({
            "session_id": session.id,
            "outlet_id": self.config.outlet_id,
            "socket_energy_mwh": report.energy_used_mwh,
            "cable_energy_mwh": cable_mwh,
            "since_baseline": disagreement,
            "status_sequence": report.sequence,
        });
        Err(self.flag_socket(accepted, reason, evidence))
    }

    /// A QuotaLow whose signed status, or the cable's own books ([`paid_unused_mwh`]), show
    /// more than a whole quota still paid and unused: a socket fishing for payments (design.md "Attestation", QuotaLow storms; a real QuotaLow
    /// comes at the socket's threshold, below a quota). Never paid; the
    /// [`QUOTA_LOW_STORM`]th of a session flags the socket: [`CableError::SocketFlagged`].
    pub(super) fn unfounded_quota_low(
        &mut self,
        session: &mut Session,
        report: &v1::StatusReport,
        accepted: &AcceptedOffer,
    ) -> Result<(), CableError> {
        session.unfounded_quota_lows += 1;
        let own_left_mwh = paid_unused_mwh(session, report, accepted);
        tracing::warn!(
            left_mwh = report.quota_remaining_mwh,
            own_left_mwh = %own_left_mwh,
            quota_mwh = accepted.quota.0,
            "a QuotaLow with more than a quota left (by the socket's word or the cable's books): not paying"
        );
        if session.unfounded_quota_lows < QUOTA_LOW_STORM {
            return Ok(());
        }
        let reason = format!(
            "a QuotaLow storm: {} QuotaLows with more than a quota ({} mWh) paid and unused \
             (the cable's books: {own_left_mwh} mWh)",
            session.unfounded_quota_lows, accepted.quota.0
        );
        let evidence = serde_json::json!({
            "session_id": session.id,
            "outlet_id": self.config.outlet_id,
            "quota_mwh": accepted.quota.0,
            "quota_remaining_mwh": report.quota_remaining_mwh,
            "socket_energy_mwh": report.energy_used_mwh,
            "cable_paid_sat": session.paid.to_sat(),
            "cable_paid_unused_mwh": own_left_mwh.to_string(),
            "status_sequence": report.sequence,
            "signed_report_hex": session.latest.as_ref().map(|l| l.signed.report.to_lower_hex_string()),
        });
        Err(self.flag_socket(accepted, reason, evidence))
    }

    /// Flag the socket of `accepted` in the cable's registry with `reason` and `evidence`;
    /// the error that ends the session.
    fn flag_socket(
        &self,
        accepted: &AcceptedOffer,
        reason: String,
        evidence: serde_json::Value,
    ) -> CableError {
        let socket_key = accepted.offer.socket_identity_key.to_lower_hex_string();
        if let Err(e) = self.store.flag_socket(&socket_key, &reason, &evidence) {
            return CableError::Other(anyhow::Error::from(e).context("flagging the socket"));
        }
        tracing::warn!(socket = %socket_key, %reason, "socket flagged: paying it no more");
        CableError::SocketFlagged(reason)
    }

    /// The receipt of the newest signed status of the session (socket.proto
    /// `MeteringReceipt`), stored before it is sent; `None` before the session has one.
    pub(super) fn receipt(&self, session: &Session) -> anyhow::Result<Option<v1::MeteringReceipt>> {
        let Some(latest) = &session.latest else {
            return Ok(None);
        };
        let body = v1::ReceiptBody {
            cable_identity_key: self.keys.identity_key().to_bytes(),
            session_id: session.id.clone(),
            socket_status: Some(latest.signed.clone()),
            cable_metered: latest.cable_mwh.is_some(),
            cable_energy_mwh: latest.cable_mwh.unwrap_or(0),
            time_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let receipt = proto::receipt::sign_receipt(&body, &self.keys.identity_secret());
        self.store
            .record_receipt(&session.id, &latest.report, &body, &receipt)
            .context("storing a receipt")?;
        Ok(Some(receipt))
    }
}
