//! Seller side of the `lightning` scheme (design.md; BOLT 11 via ldk-node): per quota a BOLT11
//! invoice of exactly price × quota msat; the quota is credited when ldk-node reports the
//! payment received, after the payment is recorded ([`crate::store::Store::receive_ln_payment`]).

use ln::ldk_node::lightning_invoice::{Bolt11InvoiceDescription, Description};
use proto::units::{EnergyMwh, PriceMsatPerWh};
use proto::v1;
use tonic::Status;

use super::internal;
use crate::node::SocketNode;
use crate::store::StoredTerms;

/// The terms of one quota (the invoice is made in [`reply`]).
pub(crate) fn new_terms(node: &SocketNode) -> StoredTerms {
    StoredTerms {
        amount: node.quota_amount(),
        quota: EnergyMwh(node.config.outlet.quota_mwh),
        single_fee: None,
    }
}

/// The `PowerRequest` reply: the invoice of this payment, made and stored on first ask.
pub(crate) fn reply(
    node: &SocketNode,
    session_id: String,
    payment_id: u64,
    terms: StoredTerms,
) -> Result<v1::PowerRequestResponse, Status> {
    let ln = node
        .ln
        .as_ref()
        .ok_or_else(|| Status::failed_precondition("this socket has no Lightning node"))?;
    let amount_msat = PriceMsatPerWh(node.config.outlet.price_msat_per_wh)
        .cost_of(terms.quota)
        .map_err(internal)?
        .0;
    // Bound first: a store guard in the match scrutinee would live through the arms.
    let issued = node
        .store()
        .invoice_of(&session_id, payment_id)
        .map_err(internal)?;
    let bolt11 = match issued {
        Some(bolt11) => bolt11,
        None => {
            let text = format!(
                "t2t {} session {session_id} payment {payment_id}",
                node.config.outlet.id
            );
            let description =
                Bolt11InvoiceDescription::Direct(Description::new(text).map_err(internal)?);
            let expiry = node
                .config
                .lightning
                .as_ref()
                .map_or(600, |l| l.invoice_expiry_secs);
            let invoice = ln
                .bolt11_payment()
                .receive(amount_msat, &description, expiry)
                .map_err(internal)?;
            let bolt11 = invoice.to_string();
            node.store()
                .issue_invoice(
                    &session_id,
                    payment_id,
                    &ln::payment_hash_hex(&invoice),
                    &bolt11,
                    amount_msat,
                    terms.quota,
                )
                .map_err(internal)?;
            bolt11
        }
    };
    Ok(v1::PowerRequestResponse {
        session_id,
        payment_id,
        scheme: v1::Scheme::Lightning as i32,
        amount_msat,
        quota_mwh: terms.quota.0,
        payout_script: Vec::new(),
        bolt11_invoice: bolt11,
        ..Default::default()
    })
}
