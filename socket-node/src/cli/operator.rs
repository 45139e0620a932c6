//! The commands that ask a running socket over its operator API (`operator_listen`, with a
//! token of the data dir) or its cable-facing API: channels, closing one, devices, revoking a
//! key, an outlet's status.

use anyhow::Context;
use bitcoin::hex::DisplayHex;
use proto::v1::operator_client::OperatorClient;
use proto::v1::socket_client::SocketClient;
use proto::v1::{CloseChannelRequest, ListChannelsRequest};
use proto::v1::{GetStatusRequest, OutletState};
use socket_node::tokens::{self, Scope};

async fn operator_client(
    endpoint: &str,
) -> anyhow::Result<OperatorClient<tonic::transport::Channel>> {
    OperatorClient::connect(endpoint.to_owned())
        .await
        .with_context(|| {
            format!(
                "no socket-node operator API answers at {endpoint} (is `socket-node run` running?)"
            )
        })
}

/// A request carrying the token of `scope` from `data_dir`.
pub(crate) fn authorized<T>(
    message: T,
    data_dir: &std::path::Path,
    scope: Scope,
) -> anyhow::Result<tonic::Request<T>> {
    let token = tokens::read_token(data_dir, scope)?;
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("the token is not a valid header value")?,
    );
    Ok(request)
}

/// `socket-node channels`: the Lightning channels, over the operator API.
pub(crate) async fn channels(endpoint: String, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let request = authorized(ListChannelsRequest {}, data_dir, Scope::ReadOnly)?;
    let list = operator_client(&endpoint)
        .await?
        .list_channels(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    if list.channels.is_empty() {
        println!("no channels");
    }
    for c in &list.channels {
        println!(
            "{} peer {} capacity {} sat, can send {} msat, can receive {} msat, {}",
            c.channel_id,
            c.counterparty_node_id,
            c.capacity_sat,
            c.outbound_msat,
            c.inbound_msat,
            c.state
        );
    }
    println!(
        "Lightning wallet on chain: {} sat spendable",
        list.onchain_spendable_sat
    );
    Ok(())
}

/// `socket-node close-channel`: close one Lightning channel (cooperatively, or forced).
pub(crate) async fn close_channel(
    endpoint: String,
    data_dir: &std::path::Path,
    channel_id: Option<String>,
    force: bool,
) -> anyhow::Result<()> {
    let request = CloseChannelRequest {
        channel_id: channel_id.unwrap_or_default(),
        force,
    };
    let request = authorized(request, data_dir, Scope::Admin)?;
    let closing = operator_client(&endpoint)
        .await?
        .close_channel(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .closing;
    for id in closing {
        if force {
            println!("{id} force-closed; the socket's funds return after the to_self_delay");
        } else {
            println!("{id} closing");
        }
    }
    Ok(())
}

/// `socket-node devices`: every cable seen, with what it paid and lost.
pub(crate) async fn devices(endpoint: String, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let mut client = operator_client(&endpoint).await?;
    let mut devices = Vec::new();
    let mut after = Vec::new();
    loop {
        let request = authorized(
            proto::v1::ListDevicesRequest {
                limit: 1_000,
                after_identity_key: after,
            },
            data_dir,
            Scope::ReadOnly,
        )?;
        let page = client
            .list_devices(request)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        devices.extend(page.devices);
        if page.next_after_identity_key.is_empty() {
            break;
        }
        after = page.next_after_identity_key;
    }
    if devices.is_empty() {
        println!("no devices yet");
    }
    for d in devices {
        println!(
            "{} {} {}{}: {} sessions, {:.3} Wh, {} sat, {} refusals, {} sat lost, {} anomalies",
            d.identity_key.to_lower_hex_string(),
            d.role,
            d.status,
            if d.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", d.reason)
            },
            d.sessions,
            d.energy_used_mwh as f64 / 1_000.0,
            d.revenue_msat / 1_000,
            d.refusals,
            d.lost_sat,
            d.anomalies
        );
    }
    Ok(())
}

/// `socket-node revoke`: revoke a cable identity for good, over the operator API (admin).
pub(crate) async fn revoke(
    endpoint: String,
    data_dir: &std::path::Path,
    key: &str,
    reason: String,
) -> anyhow::Result<()> {
    let key: bitcoin::secp256k1::PublicKey = key
        .parse()
        .with_context(|| format!("{key:?} is not a cable identity key"))?;
    let request = authorized(
        proto::v1::RevokeDeviceRequest {
            identity_key: key.serialize().to_vec(),
            reason,
        },
        data_dir,
        Scope::Admin,
    )?;
    let halted = operator_client(&endpoint)
        .await?
        .revoke_device(request)
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner()
        .sessions_halted;
    println!("{key} revoked");
    for session in halted {
        println!("session {session} halted");
    }
    Ok(())
}

/// `socket-node status`: an outlet's signed status, over the cable-facing API.
pub(crate) async fn status(endpoint: String, outlet: String) -> anyhow::Result<()> {
    let mut client = SocketClient::connect(endpoint.clone())
        .await
        .with_context(|| format!("no socket answers at {endpoint}"))?;
    let s = client
        .get_status(GetStatusRequest { outlet_id: outlet })
        .await?
        .into_inner();
    let state = OutletState::try_from(s.state).unwrap_or(OutletState::Unspecified);
    println!("outlet:     {}", s.outlet_id);
    println!(
        "state:      {}",
        state.as_str_name().trim_start_matches("OUTLET_STATE_")
    );
    println!(
        "relay:      {}",
        if s.relay_closed { "closed" } else { "open" }
    );
    println!("power:      {:.1} W", s.power_mw as f64 / 1000.0);
    if !s.session_hash.is_empty() {
        // The public status names a session by the SHA256 of its id only.
        println!(
            "session:    SHA256(id) = {}",
            s.session_hash.to_lower_hex_string()
        );
        println!(
            "energy:     {:.3} Wh used, {:.3} Wh paid and left",
            s.energy_used_mwh as f64 / 1000.0,
            s.quota_remaining_mwh as f64 / 1000.0
        );
        println!("payments:   {}", s.payments);
    }
    if state == OutletState::Lockout {
        println!(
            "lockout:    {} s left: {}",
            s.lockout_remaining_secs, s.reason
        );
    }
    Ok(())
}
