//! TLS 1.3 for QUIC: self-signed Ed25519 certificates bound to [`PeerId`]s.
//!
//! Every peer presents a self-signed certificate carrying its Ed25519 public
//! key; that key *is* its [`PeerId`]. Both sides require a certificate
//! (mutual authentication). The verifiers below do not trust any CA: they
//! accept any well-formed Ed25519 certificate, and the TLS 1.3
//! `CertificateVerify` signature, checked against the certificate's key,
//! proves the peer holds the private key. So a peer cannot claim an ID whose
//! key it does not hold.
//!
//! Key exchange is restricted to the hybrid post-quantum group
//! X25519MLKEM768 first, with X25519 as a fallback for peers that lack it.
//! The groups are wrapped so the server counts which one each accepted
//! handshake negotiated ([`negotiated_group_counts`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{
    ActiveKeyExchange, CompletedKeyExchange, CryptoProvider, SupportedKxGroup,
    WebPkiSupportedAlgorithms, aws_lc_rs,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, Error, NamedGroup, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};

use crate::identity::{Identity, PEER_ID_LEN, PeerId};

/// ALPN protocol name and version spoken on every x0x QUIC connection.
pub const ALPN: &[u8] = b"x0x/1";

/// The TLS server name used when dialing. Certificates are not checked
/// against it; identity comes from the certificate's key.
pub const SERVER_NAME: &str = "x0x";

/// A key-exchange group whose server-side completions are counted.
#[derive(Debug)]
struct CountedGroup {
    inner: &'static dyn SupportedKxGroup,
    completed: AtomicU64,
}

impl SupportedKxGroup for CountedGroup {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        self.inner.start()
    }

    fn start_and_complete(&self, peer_pub_key: &[u8]) -> Result<CompletedKeyExchange, Error> {
        let done = self.inner.start_and_complete(peer_pub_key)?;
        self.completed.fetch_add(1, Ordering::Relaxed);
        Ok(done)
    }

    fn name(&self) -> NamedGroup {
        self.inner.name()
    }

    fn fips(&self) -> bool {
        self.inner.fips()
    }

    fn usable_for_version(&self, version: rustls::ProtocolVersion) -> bool {
        self.inner.usable_for_version(version)
    }
}

static X25519MLKEM768: CountedGroup = CountedGroup {
    inner: aws_lc_rs::kx_group::X25519MLKEM768,
    completed: AtomicU64::new(0),
};
static X25519: CountedGroup = CountedGroup {
    inner: aws_lc_rs::kx_group::X25519,
    completed: AtomicU64::new(0),
};

/// Key-exchange groups in preference order.
static KX_GROUPS: [&CountedGroup; 2] = [&X25519MLKEM768, &X25519];

/// How many handshakes this process accepted as a server, per key-exchange
/// group name (e.g. `"X25519MLKEM768"`).
pub fn negotiated_group_counts() -> Vec<(String, u64)> {
    KX_GROUPS
        .iter()
        .map(|g| {
            (
                format!("{:?}", g.name()),
                g.completed.load(Ordering::Relaxed),
            )
        })
        .collect()
}

/// The rustls crypto provider: aws-lc-rs with post-quantum hybrid key exchange first.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut provider = aws_lc_rs::default_provider();
    provider.kx_groups = KX_GROUPS
        .iter()
        .map(|g| *g as &'static dyn SupportedKxGroup)
        .collect();
    Arc::new(provider)
}

/// Errors building TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("certificate generation failed: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC crypto configuration failed: {0}")]
    Quic(String),
}

fn certificate(
    identity: &Identity,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let der = PrivatePkcs8KeyDer::from(identity.pkcs8_der().to_vec());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&der, &rcgen::PKCS_ED25519)?;
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, identity.peer_id().to_string());
    let cert = params.self_signed(&key_pair)?;
    Ok((cert.der().clone(), PrivateKeyDer::Pkcs8(der)))
}

/// The TLS server configuration (QUIC listener side).
pub fn server_config(identity: &Identity) -> Result<rustls::ServerConfig, TlsError> {
    let (cert, key) = certificate(identity)?;
    let provider = crypto_provider();
    let verifier = Arc::new(PeerVerifier::new(&provider));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The TLS client configuration (dialing side).
pub fn client_config(identity: &Identity) -> Result<rustls::ClientConfig, TlsError> {
    let (cert, key) = certificate(identity)?;
    let provider = crypto_provider();
    let verifier = Arc::new(PeerVerifier::new(&provider));
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![cert], key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// ALPN of the TLS connections to a node's TCP relay (HTTP/1.1 carrying
/// a WebSocket, so proxies that speak HTTP let it through).
pub const TCP_ALPN: &[u8] = b"http/1.1";

/// The TLS server configuration of a node's TCP relay: the same identity
/// binding and key exchange as QUIC, ALPN [`TCP_ALPN`].
pub fn tcp_server_config(identity: &Identity) -> Result<rustls::ServerConfig, TlsError> {
    let mut c = server_config(identity)?;
    c.alpn_protocols = vec![TCP_ALPN.to_vec()];
    Ok(c)
}

/// The TLS client configuration for a node's TCP relay.
pub fn tcp_client_config(identity: &Identity) -> Result<rustls::ClientConfig, TlsError> {
    let mut c = client_config(identity)?;
    c.alpn_protocols = vec![TCP_ALPN.to_vec()];
    Ok(c)
}

/// The [`PeerId`] a TLS peer authenticated as (its first certificate).
pub fn peer_id_of(certs: Option<&[CertificateDer<'_>]>) -> Option<PeerId> {
    peer_id_from_certificate(certs?.first()?).ok()
}

/// Extract the [`PeerId`] (Ed25519 public key) from a certificate.
pub fn peer_id_from_certificate(cert: &CertificateDer<'_>) -> Result<PeerId, Error> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let bad = || Error::InvalidCertificate(CertificateError::BadEncoding);
    let (rest, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|_| bad())?;
    if !rest.is_empty() {
        return Err(bad());
    }
    let spki = parsed.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_SIG_ED25519 {
        return Err(Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        ));
    }
    let key: &[u8] = &spki.subject_public_key.data;
    let bytes: [u8; PEER_ID_LEN] = key.try_into().map_err(|_| bad())?;
    Ok(PeerId::from_bytes(bytes))
}

/// The [`PeerId`] a QUIC connection's peer authenticated as.
pub fn remote_peer_id(conn: &quinn::Connection) -> Option<PeerId> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    peer_id_from_certificate(certs.first()?).ok()
}

/// Verifies that the peer holds the Ed25519 key in its certificate.
#[derive(Debug)]
struct PeerVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl PeerVerifier {
    fn new(provider: &CryptoProvider) -> Self {
        Self {
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn check_certificate(
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), Error> {
        if !intermediates.is_empty() {
            return Err(Error::InvalidCertificate(CertificateError::BadEncoding));
        }
        peer_id_from_certificate(end_entity).map(|_| ())
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        if dss.scheme != SignatureScheme::ED25519 {
            return Err(Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Self::check_certificate(end_entity, intermediates)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Self::check_certificate(end_entity, intermediates)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{ClientConnection, ServerConnection};

    /// Drive a TLS handshake in memory between two rustls connections.
    fn handshake(
        client: &mut ClientConnection,
        server: &mut ServerConnection,
    ) -> Result<(), Error> {
        let mut buf = Vec::new();
        for _ in 0..10 {
            buf.clear();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut buf.as_slice()).unwrap();
            server.process_new_packets()?;
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut buf.as_slice()).unwrap();
            client.process_new_packets()?;
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    fn pair(client_id: &Identity, server_id: &Identity) -> (ClientConnection, ServerConnection) {
        let client = ClientConnection::new(
            Arc::new(client_config(client_id).unwrap()),
            ServerName::try_from(SERVER_NAME).unwrap(),
        )
        .unwrap();
        let server = ServerConnection::new(Arc::new(server_config(server_id).unwrap())).unwrap();
        (client, server)
    }

    #[test]
    fn negotiates_post_quantum_hybrid_group_and_binds_both_identities() {
        let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        let (mut client, mut server) = pair(&a, &b);
        handshake(&mut client, &mut server).unwrap();
        assert_eq!(
            client.negotiated_key_exchange_group().unwrap().name(),
            NamedGroup::X25519MLKEM768
        );
        assert_eq!(
            server.negotiated_key_exchange_group().unwrap().name(),
            NamedGroup::X25519MLKEM768
        );
        let server_seen =
            peer_id_from_certificate(&client.peer_certificates().unwrap()[0]).unwrap();
        let client_seen =
            peer_id_from_certificate(&server.peer_certificates().unwrap()[0]).unwrap();
        assert_eq!(server_seen, b.peer_id());
        assert_eq!(client_seen, a.peer_id());
    }

    /// Presents whatever certificate and key it was given, unchecked.
    #[derive(Debug)]
    struct Forged(Arc<rustls::sign::CertifiedKey>);

    impl rustls::client::ResolvesClientCert for Forged {
        fn resolve(
            &self,
            _: &[&[u8]],
            _: &[SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }

        fn has_certs(&self) -> bool {
            true
        }
    }

    /// A certificate with someone else's public key but signed with our own
    /// key: the handshake signature cannot verify against the claimed key.
    #[test]
    fn a_peer_cannot_claim_an_identity_whose_key_it_does_not_hold() {
        let victim = Identity::generate().unwrap();
        let attacker = Identity::generate().unwrap();
        let server_id = Identity::generate().unwrap();

        // Certificate for the victim's key, with the attacker's key used for TLS.
        let (victim_cert, _) = certificate(&victim).unwrap();
        let attacker_key =
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(attacker.pkcs8_der().to_vec()));
        let provider = crypto_provider();
        let mut forged = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier::new(&provider)))
            .with_client_cert_resolver(Arc::new(Forged(Arc::new(
                rustls::sign::CertifiedKey::new(
                    vec![victim_cert],
                    provider
                        .key_provider
                        .load_private_key(attacker_key)
                        .unwrap(),
                ),
            ))));
        forged.alpn_protocols = vec![ALPN.to_vec()];
        let mut client =
            ClientConnection::new(Arc::new(forged), ServerName::try_from(SERVER_NAME).unwrap())
                .unwrap();
        let mut server =
            ServerConnection::new(Arc::new(server_config(&server_id).unwrap())).unwrap();
        let err = handshake(&mut client, &mut server).unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidCertificate(_) | Error::PeerMisbehaved(_) | Error::General(_)
            ) || err.to_string().contains("signature"),
            "unexpected error: {err}"
        );
        assert!(server.peer_certificates().is_none() || server.is_handshaking());
    }

    #[test]
    fn client_without_certificate_is_rejected() {
        let server_id = Identity::generate().unwrap();
        let provider = crypto_provider();
        let mut anonymous = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PeerVerifier::new(&provider)))
            .with_no_client_auth();
        anonymous.alpn_protocols = vec![ALPN.to_vec()];
        let mut client = ClientConnection::new(
            Arc::new(anonymous),
            ServerName::try_from(SERVER_NAME).unwrap(),
        )
        .unwrap();
        let mut server =
            ServerConnection::new(Arc::new(server_config(&server_id).unwrap())).unwrap();
        assert!(handshake(&mut client, &mut server).is_err());
    }

    #[test]
    fn non_ed25519_certificate_is_rejected() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        assert!(peer_id_from_certificate(cert.der()).is_err());
        assert!(peer_id_from_certificate(&CertificateDer::from(vec![0u8; 10])).is_err());
    }
}
