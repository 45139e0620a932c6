//! A node's one BIP39 seed and what derives from it.
//!
//! The 12-word mnemonic lives in `<data dir>/seed.txt` (mode 0600), written once at first start
//! and never rewritten. From its BIP39 seed (empty passphrase) derive:
//! - the wallet descriptors, BIP 84: `wpkh(xprv/84'/coin'/0'/0/*)` and `.../1/*` (coin 0' on
//!   mainnet, 1' on test networks);
//! - the identity key at `m/1017'/0'` (secp256k1, 33-byte compressed), which names the device to
//!   its peers in `GetOffer`.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use bdk_wallet::keys::bip39::Mnemonic;
use bitcoin::bip32::{DerivationPath, Xpriv};
use bitcoin::secp256k1::{rand, Secp256k1};
use bitcoin::{Network, NetworkKind, PublicKey};

use crate::WalletError;

/// File name of the seed inside a node's data dir.
pub const SEED_FILE: &str = "seed.txt";
/// Derivation path of the identity key.
pub const IDENTITY_PATH: &str = "m/1017'/0'";
/// Derivation path of the socket's spillman channel keys: channel `i` at `m/1017'/1'/i'`.
pub const CHANNEL_PATH: &str = "m/1017'/1'";

/// The keys of one node.
#[derive(Clone)]
pub struct NodeKeys {
    mnemonic: Mnemonic,
    master: Xpriv,
    network: Network,
}

/// Create a node's data directory `dir` (with its parents) if missing, and make it private:
/// the directory mode 0700 and the files directly in it 0600, so that its seed, databases and
/// tokens are its user's alone whatever the umask it was started with (systemd's units set
/// `UMask=0077`; a shell's is usually 022, which leaves new files readable by all).
///
/// Errors: the file system's, when `dir` cannot be created or its modes set.
pub fn private_data_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

impl NodeKeys {
    /// Read the seed of `data_dir`, or create one there (12 words from the OS's randomness)
    /// when there is none. Errors: [`WalletError::Seed`] for a malformed seed file,
    /// [`WalletError::Io`] when the file cannot be read or written.
    pub fn load_or_create(data_dir: &Path, network: Network) -> Result<Self, WalletError> {
        let path = data_dir.join(SEED_FILE);
        let mnemonic = match fs::read_to_string(&path) {
            Ok(words) => Mnemonic::parse(words.trim()).map_err(|e| WalletError::Seed {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_seed(&path)?,
            Err(source) => return Err(WalletError::Io { path, source }),
        };
        let master =
            Xpriv::new_master(NetworkKind::from(network), &mnemonic.to_seed("")).map_err(|e| {
                WalletError::Seed {
                    path,
                    reason: e.to_string(),
                }
            })?;
        Ok(NodeKeys {
            mnemonic,
            master,
            network,
        })
    }

    /// Take the BIP39 words of a node into `data_dir`, which must have no seed yet (seed 000
    /// §VIII.B: money must not be lost with a broken device): the wallet finds its coins on
    /// its next sync. Errors: [`WalletError::Seed`] for words that are not a BIP39 mnemonic
    /// (a word not in the English list, a wrong checksum) or a data dir that already has a
    /// seed; [`WalletError::Io`] when the file cannot be written.
    pub fn restore(data_dir: &Path, words: &str, network: Network) -> Result<Self, WalletError> {
        let path = data_dir.join(SEED_FILE);
        let mnemonic = Mnemonic::parse(words.split_whitespace().collect::<Vec<_>>().join(" "))
            .map_err(|e| WalletError::Seed {
                path: path.clone(),
                reason: format!("not a BIP39 mnemonic: {e}"),
            })?;
        if path.exists() {
            return Err(WalletError::Seed {
                path,
                reason: "this data dir already has a seed; restore into an empty one".into(),
            });
        }
        write_seed(&path, mnemonic)?;
        Self::load_or_create(data_dir, network)
    }

    /// The node's BIP39 mnemonic, the one backup of everything it holds.
    pub fn mnemonic(&self) -> &Mnemonic {
        &self.mnemonic
    }

    /// The network the keys are for.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The BIP 84 descriptors (external, internal), with private keys.
    pub fn descriptors(&self) -> (String, String) {
        let coin = if self.network == Network::Bitcoin {
            0
        } else {
            1
        };
        (
            format!("wpkh({}/84'/{coin}'/0'/0/*)", self.master),
            format!("wpkh({}/84'/{coin}'/0'/1/*)", self.master),
        )
    }

    /// The socket's spillman key of channel `index`, at [`CHANNEL_PATH`]`/index'` (its half of
    /// that deposit's `wsh(multi(2,cable,socket))`, seed 003): one key per channel, never one
    /// for all (design.md "Trust").
    pub fn channel_secret(&self, index: u32) -> bitcoin::secp256k1::SecretKey {
        let path: DerivationPath = format!("{CHANNEL_PATH}/{index}'")
            .parse()
            .expect("a valid path");
        self.master
            .derive_priv(&Secp256k1::new(), &path)
            .expect("hardened derivation of a valid key")
            .private_key
    }

    /// The one spillman channel key of sockets before keys were per channel, at
    /// [`CHANNEL_PATH`] itself: only to close channels opened then.
    pub fn legacy_channel_secret(&self) -> bitcoin::secp256k1::SecretKey {
        let path: DerivationPath = CHANNEL_PATH.parse().expect("constant path");
        self.master
            .derive_priv(&Secp256k1::new(), &path)
            .expect("hardened derivation of a valid key")
            .private_key
    }

    /// The identity key at [`IDENTITY_PATH`].
    pub fn identity_key(&self) -> PublicKey {
        let secp = Secp256k1::new();
        PublicKey::new(self.identity_secret().public_key(&secp))
    }

    /// The secret of the identity key at [`IDENTITY_PATH`]: what signs the device's offers and
    /// requests (design.md "Trust").
    pub fn identity_secret(&self) -> bitcoin::secp256k1::SecretKey {
        let path: DerivationPath = IDENTITY_PATH.parse().expect("constant path");
        self.master
            .derive_priv(&Secp256k1::new(), &path)
            .expect("hardened derivation of a valid key")
            .private_key
    }
}

fn create_seed(path: &PathBuf) -> Result<Mnemonic, WalletError> {
    let entropy: [u8; 16] = rand::random();
    let mnemonic = Mnemonic::from_entropy(&entropy).expect("16 bytes is valid BIP39 entropy");
    write_seed(path, mnemonic)
}

/// Write `mnemonic` to a new seed file (mode 0600, synced); never over an existing one.
fn write_seed(path: &PathBuf, mnemonic: Mnemonic) -> Result<Mnemonic, WalletError> {
    let io = |source| WalletError::Io {
        path: path.clone(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io)?;
    writeln!(file, "{mnemonic}").map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(mnemonic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_is_made_private_with_what_it_holds() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/b");
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("socket.sqlite"), b"x").unwrap();
        fs::set_permissions(dir.join("socket.sqlite"), fs::Permissions::from_mode(0o644)).unwrap();
        private_data_dir(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("socket.sqlite")), 0o600);
        let fresh = root.path().join("fresh/data");
        private_data_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn the_seed_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let first = NodeKeys::load_or_create(dir.path(), Network::Regtest).unwrap();
        let again = NodeKeys::load_or_create(dir.path(), Network::Regtest).unwrap();
        assert_eq!(first.identity_key(), again.identity_key());
        assert_eq!(first.descriptors(), again.descriptors());
        let words = fs::read_to_string(dir.path().join(SEED_FILE)).unwrap();
        assert_eq!(words.split_whitespace().count(), 12);
        let other = tempfile::tempdir().unwrap();
        let stranger = NodeKeys::load_or_create(other.path(), Network::Regtest).unwrap();
        assert_ne!(first.identity_key(), stranger.identity_key());
    }

    #[test]
    fn restored_words_give_the_same_keys_and_never_overwrite_a_seed() {
        let dir = tempfile::tempdir().unwrap();
        let first = NodeKeys::load_or_create(dir.path(), Network::Regtest).unwrap();
        let words = first.mnemonic().to_string();
        let empty = tempfile::tempdir().unwrap();
        let restored =
            NodeKeys::restore(empty.path(), &format!(" {words}\n"), Network::Regtest).unwrap();
        assert_eq!(restored.identity_key(), first.identity_key());
        assert_eq!(restored.descriptors(), first.descriptors());
        // Not over an existing seed, and not from words that are not BIP39.
        assert!(matches!(
            NodeKeys::restore(dir.path(), &words, Network::Regtest),
            Err(WalletError::Seed { .. })
        ));
        let other = tempfile::tempdir().unwrap();
        let bad_checksum = ["abandon"; 12].join(" ");
        for bad in [bad_checksum.as_str(), "notaword abandon", ""] {
            assert!(matches!(
                NodeKeys::restore(other.path(), bad, Network::Regtest),
                Err(WalletError::Seed { .. })
            ));
        }
        assert!(!other.path().join(SEED_FILE).exists());
    }

    #[test]
    fn a_malformed_seed_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(SEED_FILE), "not twelve words").unwrap();
        assert!(matches!(
            NodeKeys::load_or_create(dir.path(), Network::Regtest),
            Err(WalletError::Seed { .. })
        ));
    }

    #[test]
    fn each_channel_has_its_own_key_and_none_is_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let keys = NodeKeys::load_or_create(dir.path(), Network::Regtest).unwrap();
        let secrets = [
            keys.channel_secret(0),
            keys.channel_secret(1),
            keys.channel_secret(2),
            keys.legacy_channel_secret(),
            keys.identity_secret(),
        ];
        for (i, a) in secrets.iter().enumerate() {
            for b in &secrets[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Derivation is stable: the same index gives the same key again.
        assert_eq!(keys.channel_secret(1), keys.channel_secret(1));
    }
}
