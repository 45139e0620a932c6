//! Hand-made cables of the cheat tests: the request signer, a wallet paid from by hand, and a
//! quota paid by hand.

use std::sync::OnceLock;

use bitcoin::{Amount, Network};
use proto::v1::socket_client::SocketClient;
use regtest::Regtest;
use wallet::keys::NodeKeys;
use wallet::onchain::NodeWallet;

use crate::socket_process::SocketProcess;
use crate::OUTLET;

/// The signer of the hand-made cables of the tests: one identity key ([0x77; 32]) for the whole
/// test process, sequences rising across its sessions.
pub fn cable_signer() -> &'static cable_node::signer::RequestSigner {
    static SIGNER: OnceLock<cable_node::signer::RequestSigner> = OnceLock::new();
    SIGNER.get_or_init(|| {
        cable_node::signer::RequestSigner::new(
            bitcoin::secp256k1::SecretKey::from_slice(&[0x77; 32]).expect("in range"),
        )
    })
}

/// A wallet a test pays from by hand, as a cheating cable would.
pub struct Payer {
    /// The wallet.
    pub wallet: NodeWallet,
    /// Its bitcoind.
    pub chain: wallet::chain::Chain,
    _dir: tempfile::TempDir,
}

/// A fresh wallet funded with `coins` confirmed coins of `sats` each, synced.
pub fn funded_payer(bitcoind: &Regtest, coins: u32, sats: u64) -> Payer {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = NodeKeys::load_or_create(dir.path(), Network::Regtest).expect("keys");
    let mut wallet = NodeWallet::open(dir.path(), &keys).expect("wallet");
    for index in 0..coins {
        let address = wallet.receive_address(index).expect("address");
        bitcoind
            .fund(&address, Amount::from_sat(sats))
            .expect("funding");
    }
    let chain = wallet::chain::Chain::connect(
        &wallet::chain::ChainConfig {
            rpc_url: bitcoind.rpc_url(),
            cookie_file: bitcoind.cookie_file().to_owned(),
        },
        Network::Regtest,
    )
    .expect("bitcoind");
    wallet.sync(&chain).expect("sync");
    Payer {
        wallet,
        chain,
        _dir: dir,
    }
}

/// One `onchain` quota a hand-made cable (the test signer, `payer`'s wallet) paid and the
/// socket credited ([`pay_a_quota_by_hand`]); the link stays open while this lives.
pub struct PaidByHand {
    /// The session the payment opened.
    pub session_id: String,
    /// Its payment id.
    pub payment_id: u64,
    /// The payment, as the socket credited it.
    pub tx: bitcoin::Transaction,
    /// The coins it spends.
    pub inputs: Vec<bitcoin::OutPoint>,
    /// What it pays the socket.
    pub amount: Amount,
    /// Its fee.
    pub fee: Amount,
    _link: tonic::Streaming<proto::v1::WatchStatusResponse>,
}

impl PaidByHand {
    /// A transaction spending the same coins back to `payer` at 3000 sat more fee: the
    /// replacement a cheating cable sends (full RBF), not yet broadcast.
    pub fn spent_back(&self, payer: &mut Payer) -> bitcoin::Transaction {
        let own = payer
            .wallet
            .receive_address(7)
            .expect("address")
            .script_pubkey();
        payer
            .wallet
            .pay_from(
                &self.inputs,
                &own,
                self.amount,
                self.fee + Amount::from_sat(3_000),
            )
            .expect("a replacement")
            .tx
    }
}

/// Plug a hand-made cable into [`OUTLET`] of `socket` (`WatchStatus`), open an `onchain`
/// session signed by [`cable_signer`] and pay its first quota from `payer`'s coin (2 sat/vB);
/// panics unless the socket credits it (outlet `Paid`).
pub fn pay_a_quota_by_hand(
    runtime: &tokio::runtime::Runtime,
    socket: &SocketProcess,
    payer: &mut Payer,
) -> PaidByHand {
    use proto::v1;
    let to = socket.recipient();
    let mut client = runtime
        .block_on(SocketClient::connect(socket.endpoint.clone()))
        .expect("the socket");
    let link = runtime
        .block_on(client.watch_status(cable_signer().sign(
            &to,
            v1::WatchStatusRequest {
                outlet_id: OUTLET.into(),
                auth: None,
            },
        )))
        .expect("WatchStatus")
        .into_inner();
    let terms = runtime
        .block_on(client.power_request(cable_signer().sign(
            &to,
            v1::PowerRequestRequest {
                outlet_id: OUTLET.into(),
                scheme: v1::Scheme::Onchain as i32,
                ..Default::default()
            },
        )))
        .expect("terms")
        .into_inner();
    let payout = bitcoin::ScriptBuf::from_bytes(terms.payout_script.clone());
    let amount = Amount::from_sat(terms.amount_msat / 1_000);
    let rate = bitcoin::FeeRate::from_sat_per_vb(2).expect("a fee rate");
    let (inputs, fee) = payer
        .wallet
        .plan_input_set(&payout, amount, rate, Amount::from_sat(5_000))
        .expect("coins");
    let signed = payer
        .wallet
        .pay_from(&inputs, &payout, amount, fee)
        .expect("a payment");
    let paid = runtime
        .block_on(client.pay_transaction(cable_signer().sign(
            &to,
            v1::PayTransactionRequest {
                session_id: terms.session_id.clone(),
                payment_id: terms.payment_id,
                psbt: signed.psbt.serialize(),
                auth: None,
            },
        )))
        .expect("credited")
        .into_inner();
    assert_eq!(paid.state, v1::OutletState::Paid as i32, "{paid:?}");
    PaidByHand {
        session_id: terms.session_id,
        payment_id: terms.payment_id,
        tx: signed.tx,
        inputs,
        amount,
        fee,
        _link: link,
    }
}
