//! A thread mining a block at a fixed interval, as a live chain would.

use std::time::Duration;

use regtest::Regtest;

/// Mines a block every `every` on a thread until dropped, as a live chain would.
pub struct Miner(
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    Option<std::thread::JoinHandle<()>>,
);

impl Miner {
    /// Start mining on `bitcoind` every `every`.
    pub fn start(bitcoind: &Regtest, every: Duration) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let running = std::sync::Arc::new(AtomicBool::new(true));
        let (url, cookie) = (bitcoind.rpc_url(), bitcoind.cookie_file().to_owned());
        let address = bitcoind.faucet().address().to_string();
        let flag = std::sync::Arc::clone(&running);
        let handle = std::thread::spawn(move || {
            let Ok(client) =
                regtest::Client::new_with_auth(&url, regtest::Auth::CookieFile(cookie))
            else {
                return;
            };
            while flag.load(Ordering::SeqCst) {
                std::thread::sleep(every);
                let _ = client.call::<serde_json::Value>(
                    "generatetoaddress",
                    &[serde_json::json!(1), serde_json::json!(address)],
                );
            }
        });
        Miner(running, Some(handle))
    }
}

impl Drop for Miner {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Some(handle) = self.1.take() {
            let _ = handle.join();
        }
    }
}
