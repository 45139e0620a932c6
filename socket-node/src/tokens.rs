//! Scoped bearer tokens of the operator API (design.md "Operator surface"): an admin token and
//! a read-only token, created at first start as files of the data dir (`admin.token`,
//! `readonly.token`, mode 0600, 32 random bytes as 64 lowercase hex characters), asked of
//! every operator call as the metadata `authorization: Bearer <token>`.
//!
//! A missing or wrong token is `UNAUTHENTICATED`; the read-only token reads (list channels)
//! but cannot act (close channels): `PERMISSION_DENIED`. Whoever can read the data dir holds
//! the tokens, as with lnd's macaroons.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bitcoin::hex::DisplayHex;
use subtle::ConstantTimeEq;
use tonic::metadata::MetadataMap;
use tonic::Status;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Read: list channels, status.
    ReadOnly,
    /// Read and act: close channels.
    Admin,
}

impl Scope {
    /// The token's file name in the data dir.
    pub fn file_name(self) -> &'static str {
        match self {
            Scope::ReadOnly => "readonly.token",
            Scope::Admin => "admin.token",
        }
    }

    /// The token file of this scope in `data_dir`.
    pub fn path(self, data_dir: &Path) -> PathBuf {
        data_dir.join(self.file_name())
    }
}

/// The two tokens of a socket.
#[derive(Clone)]
pub struct Tokens {
    admin: String,
    read_only: String,
}

impl Tokens {
    /// Read the tokens of `data_dir`, creating each missing one (mode 0600, written before it
    /// is used). Errors: the data dir cannot be read or written, or a token file is not 64 hex
    /// characters.
    pub fn load_or_create(data_dir: &Path) -> std::io::Result<Self> {
        Ok(Tokens {
            admin: load_or_create(&Scope::Admin.path(data_dir))?,
            read_only: load_or_create(&Scope::ReadOnly.path(data_dir))?,
        })
    }

    /// The scope of the bearer token in a call's metadata, compared in constant time.
    /// Errors: `UNAUTHENTICATED` when there is none or it is not one of ours.
    pub fn scope_of(&self, metadata: &MetadataMap) -> Result<Scope, Status> {
        let header = metadata.get("authorization").and_then(|v| v.to_str().ok());
        self.scope_of_header(header)
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }

    /// The scope of an `authorization` header's value (`Bearer <token>`), compared in constant
    /// time, for the operator gRPC and the HTTP API alike.
    pub fn scope_of_header(&self, header: Option<&str>) -> Result<Scope, TokenError> {
        let presented = header
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(TokenError::Missing)?
            .as_bytes();
        if bool::from(presented.ct_eq(self.admin.as_bytes())) {
            Ok(Scope::Admin)
        } else if bool::from(presented.ct_eq(self.read_only.as_bytes())) {
            Ok(Scope::ReadOnly)
        } else {
            Err(TokenError::Invalid)
        }
    }
}

/// Why a call carries no valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `authorization: Bearer ...`.
    #[error(
        "no operator token: send `authorization: Bearer <token>` (admin.token or \
         readonly.token in the socket's data dir)"
    )]
    Missing,
    /// A token that is not one of ours.
    #[error("this operator token is not valid")]
    Invalid,
}

/// Whether a call authorised by [`Tokens::scope_of`] (kept in its extensions) may act.
/// Errors: `PERMISSION_DENIED` for the read-only token.
pub fn require_admin<T>(request: &tonic::Request<T>) -> Result<(), Status> {
    match request.extensions().get::<Scope>() {
        Some(Scope::Admin) => Ok(()),
        _ => Err(Status::permission_denied(
            "this needs the admin token; the read-only token only reads",
        )),
    }
}

/// A token of `scope` from `data_dir`, for the CLIs. Errors: no such file (the socket never
/// started with this data dir), or it cannot be read.
pub fn read_token(data_dir: &Path, scope: Scope) -> std::io::Result<String> {
    let path = scope.path(data_dir);
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_owned())
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("reading the operator token {}: {e}", path.display()),
            )
        })
}

fn load_or_create(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(token) => {
            let token = token.trim().to_owned();
            if token.len() != 64 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not a token (64 hex characters)", path.display()),
                ));
            }
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = bitcoin::secp256k1::rand::random::<[u8; 32]>().to_lower_hex_string();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            file.write_all(token.as_bytes())?;
            file.sync_all()?;
            Ok(token)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn bearer(token: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
        metadata
    }

    #[test]
    fn tokens_are_created_once_private_and_scoped() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::load_or_create(dir.path()).unwrap();
        let admin = read_token(dir.path(), Scope::Admin).unwrap();
        let read_only = read_token(dir.path(), Scope::ReadOnly).unwrap();
        assert_ne!(admin, read_only);
        for scope in [Scope::Admin, Scope::ReadOnly] {
            let mode = std::fs::metadata(scope.path(dir.path()))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A restart keeps them.
        let again = Tokens::load_or_create(dir.path()).unwrap();
        assert_eq!(again.admin, admin);
        assert_eq!(tokens.scope_of(&bearer(&admin)).unwrap(), Scope::Admin);
        assert_eq!(
            tokens.scope_of(&bearer(&read_only)).unwrap(),
            Scope::ReadOnly
        );
        let wrong = tokens.scope_of(&bearer(&"0".repeat(64))).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let none = tokens.scope_of(&MetadataMap::new()).unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn a_damaged_token_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(Scope::Admin.path(dir.path()), "short").unwrap();
        let e = Tokens::load_or_create(dir.path()).err().unwrap();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }
}
