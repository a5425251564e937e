//! Node and agent identity: an Ed25519 key pair and the [`PeerId`] derived from it.
//!
//! The key is stored as a PKCS#8 PEM file (`-----BEGIN PRIVATE KEY-----`), the
//! same format `openssl genpkey -algorithm ed25519` writes, so keys can be
//! pre-provisioned. A generated key is written atomically with mode 0600.
//! An existing key that cannot be read or parsed is an error: an identity is
//! never silently replaced.

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject;

/// Length in bytes of an Ed25519 public key, and so of a [`PeerId`].
pub const PEER_ID_LEN: usize = 32;

/// The identity of a peer on the network: its Ed25519 public key.
///
/// Printed and parsed as 64 lowercase hex characters.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct PeerId([u8; PEER_ID_LEN]);

impl PeerId {
    pub const fn from_bytes(bytes: [u8; PEER_ID_LEN]) -> Self {
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; PEER_ID_LEN] {
        &self.0
    }

    /// The first 8 hex characters, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({})", self.short())
    }
}

/// Why a string is not a [`PeerId`].
#[derive(Debug, thiserror::Error)]
#[error("invalid peer id {input:?}: expected {expected} hex characters")]
pub struct ParsePeerIdError {
    input: String,
    expected: usize,
}

impl FromStr for PeerId {
    type Err = ParsePeerIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePeerIdError {
            input: s.chars().take(80).collect(),
            expected: PEER_ID_LEN * 2,
        };
        let mut out = [0u8; PEER_ID_LEN];
        hex::decode_to_slice(s.trim(), &mut out).map_err(|_| err())?;
        Ok(Self(out))
    }
}

/// Why bytes are not an Ed25519 PKCS#8 key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not a PEM `PRIVATE KEY` block.
    #[error("not a PEM PRIVATE KEY block: {0}")]
    NotPem(String),
    /// A PEM block whose content is not an Ed25519 PKCS#8 key.
    #[error("not an Ed25519 PKCS#8 key: {0}")]
    NotEd25519(String),
}

/// Errors loading or creating an identity. Each names the file involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The key file exists but cannot be read.
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key file holds something other than an Ed25519 key. It is left untouched.
    #[error(
        "key file {path} is not a valid Ed25519 PKCS#8 PEM key ({reason}); refusing to replace it with a new identity"
    )]
    Corrupt { path: PathBuf, reason: KeyError },
    /// A new key file could not be written.
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The system random generator failed.
    #[error("key generation failed")]
    Generate,
}

/// An Ed25519 private key (PKCS#8, validated on load) and its [`PeerId`].
#[derive(Clone)]
pub struct Identity {
    pkcs8: Vec<u8>,
    key_pair: std::sync::Arc<Ed25519KeyPair>,
    peer_id: PeerId,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new random identity (kept in memory only).
    pub fn generate() -> Result<Self, IdentityError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new())
            .map_err(|_| IdentityError::Generate)?;
        Self::from_pkcs8(doc.as_ref()).map_err(|_| IdentityError::Generate)
    }

    /// Parse a PKCS#8 DER Ed25519 key (v1 or v2).
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, KeyError> {
        let key_pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| KeyError::NotEd25519(e.to_string()))?;
        let mut id = [0u8; PEER_ID_LEN];
        id.copy_from_slice(key_pair.public_key().as_ref());
        Ok(Self {
            pkcs8: der.to_vec(),
            key_pair: std::sync::Arc::new(key_pair),
            peer_id: PeerId(id),
        })
    }

    /// Parse a PKCS#8 PEM key.
    pub fn from_pem(pem: &[u8]) -> Result<Self, KeyError> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|e| KeyError::NotPem(format!("{e:?}")))?;
        Self::from_pkcs8(der.secret_pkcs8_der())
    }

    /// Load the key at `path`. A missing file is an error.
    pub fn load(path: &Path) -> Result<Self, IdentityError> {
        let bytes = std::fs::read(path).map_err(|source| IdentityError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_pem(&bytes).map_err(|reason| IdentityError::Corrupt {
            path: path.to_owned(),
            reason,
        })
    }

    /// Load the key at `path`, or generate and store one if no file exists.
    /// Returns the identity and whether it was newly created.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool), IdentityError> {
        match std::fs::symlink_metadata(path) {
            Ok(_) => Ok((Self::load(path)?, false)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Self::generate()?;
                identity.write_new(path)?;
                Ok((identity, true))
            }
            Err(source) => Err(IdentityError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    /// Write the key to `path` atomically (temporary file, fsync, rename) with
    /// mode 0600. Fails if `path` already exists.
    pub fn write_new(&self, path: &Path) -> Result<(), IdentityError> {
        let werr = |source| IdentityError::Write {
            path: path.to_owned(),
            source,
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // Write a private temporary file next to the target, then link it
        // into place: `hard_link` fails if `path` exists, so a key that
        // appeared meanwhile is never overwritten.
        let tmp = dir.join(format!(".node-key-{:016x}", rand::random::<u64>()));
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(self.to_pem().as_bytes())?;
            f.sync_all()?;
            std::fs::hard_link(&tmp, path)
        })();
        let _ = std::fs::remove_file(&tmp);
        written.map_err(werr)?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The key as PKCS#8 PEM.
    pub fn to_pem(&self) -> String {
        let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        pem::encode_config(&pem::Pem::new("PRIVATE KEY", self.pkcs8.clone()), config)
    }

    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The key as PKCS#8 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// Sign `message` with this identity's Ed25519 key.
    pub fn sign(&self, message: &[u8]) -> Signature {
        let sig = self.key_pair.sign(message);
        let mut out = [0u8; SIGNATURE_LEN];
        out.copy_from_slice(sig.as_ref());
        Signature(out)
    }
}

/// Length in bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// An Ed25519 signature made by [`Identity::sign`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; SIGNATURE_LEN]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..4]))
    }
}

impl serde::Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Signature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{SIGNATURE_LEN} signature bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Signature, E> {
                v.try_into()
                    .map(Signature)
                    .map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V)
    }
}

impl PeerId {
    /// Whether `signature` is this peer's Ed25519 signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, &self.0)
            .verify(message, &signature.0)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn peer_id_round_trips_through_text() {
        let id = Identity::generate().unwrap().peer_id();
        let text = id.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<PeerId>().unwrap(), id);
        assert!("xyz".parse::<PeerId>().is_err());
        assert!(text[..62].parse::<PeerId>().is_err());
    }

    #[test]
    fn generated_key_is_private_and_reloads_to_same_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let (first, created) = Identity::load_or_generate(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (second, created) = Identity::load_or_generate(&path).unwrap();
        assert!(!created);
        assert_eq!(first.peer_id(), second.peer_id());
        // No temporary files left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_key_is_an_error_not_a_new_identity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        std::fs::write(&path, b"not a key").unwrap();
        let err = Identity::load_or_generate(&path).unwrap_err();
        assert!(matches!(err, IdentityError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("node.key"));
        assert_eq!(std::fs::read(&path).unwrap(), b"not a key");
    }

    #[test]
    fn unreadable_key_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the key should be cannot be read as a file.
        let path = dir.path().join("node.key");
        std::fs::create_dir(&path).unwrap();
        let err = Identity::load_or_generate(&path).unwrap_err();
        assert!(matches!(err, IdentityError::Read { .. }), "{err}");
    }

    #[test]
    fn signatures_verify_only_for_the_signer_and_the_message() {
        let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let sig = a.sign(b"hello");
        assert!(a.peer_id().verify(b"hello", &sig));
        assert!(!a.peer_id().verify(b"hellO", &sig));
        assert!(!b.peer_id().verify(b"hello", &sig));
        let bytes = postcard::to_stdvec(&sig).unwrap();
        assert_eq!(postcard::from_bytes::<Signature>(&bytes).unwrap(), sig);
    }

    #[test]
    fn pem_round_trip_matches_openssl_format() {
        let id = Identity::generate().unwrap();
        let pem = id.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = Identity::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(again.peer_id(), id.peer_id());
    }

    #[test]
    fn accepts_pkcs8_v1_key_as_written_by_openssl() {
        // `openssl genpkey -algorithm ed25519` output (RFC 8410 test key).
        let pem = b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let id = Identity::from_pem(pem).unwrap();
        assert_eq!(
            id.peer_id().to_string(),
            "19bf44096984cdfe8541bac167dc3b96c85086aa30b6b6cb0c5c38ad703166e1"
        );
    }
}
