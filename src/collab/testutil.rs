//! Helpers for the tests: deterministic identities and a memoizing signature check.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use x0x_proto::identity::Signature;
use x0x_proto::{Identity, PeerId};

use super::util::{SignatureCheck, sha256};

/// The identity whose Ed25519 seed is derived from `n` (PKCS#8 v1, as
/// `openssl genpkey` writes it).
pub fn identity(n: u64) -> Identity {
    let seed = sha256(&[b"x0x-test-identity", &n.to_be_bytes()]);
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    Identity::from_pkcs8(&der).expect("valid key")
}

fn memo() -> &'static Mutex<HashMap<[u8; 32], bool>> {
    static M: OnceLock<Mutex<HashMap<[u8; 32], bool>>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Verifies each distinct `(signer, message, signature)` once for real and
/// remembers the result: simulated agents share one process, so checking
/// the same signature in each of 100 of them would only measure Ed25519.
pub fn memo_check() -> SignatureCheck {
    SignatureCheck(|p: &PeerId, m: &[u8], s: &Signature| {
        let key = sha256(&[p.as_bytes(), &s.0, m]);
        if let Some(&r) = memo().lock().unwrap().get(&key) {
            return r;
        }
        let r = p.verify(m, s);
        let mut g = memo().lock().unwrap();
        if g.len() > 2_000_000 {
            g.clear();
        }
        g.insert(key, r);
        r
    })
}
