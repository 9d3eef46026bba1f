//! The cluster's TLS material: a CA made at bootstrap (rcgen), certificates it signs for coordinators, agents and
//! builders, and the quinn configs for mutual TLS between them.
//!
//! Every certificate names its holder in its common name (`coordinator-3`, `agent-gpu-07`) and carries the
//! DNS name `spacedock.internal`, which every dialer uses as the server name. Peers check each other's
//! certificate against the cluster CA; the common name says which role a connection may play.

use std::sync::Arc;

use anyhow::{Context, anyhow};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The server name every certificate carries and every dialer asks for.
pub const SERVER_NAME: &str = "spacedock.internal";
/// ALPN protocol of spacedock's QUIC connections.
pub const ALPN: &[u8] = b"spacedock/1";

/// A certificate chain and its key, in PEM.
#[derive(Clone)]
pub struct Identity {
    /// The holder's certificate followed by the CA's.
    pub chain_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// The cluster CA, able to sign certificates.
#[derive(Clone)]
pub struct ClusterCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// A new CA for a new cluster.
    pub fn generate(cluster_id: &str) -> anyhow::Result<ClusterCa> {
        let mut params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("spacedock cluster CA {cluster_id}"),
        );
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let key = KeyPair::generate().context("CA key")?;
        let cert = params.self_signed(&key).context("self-signing the CA")?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a new certificate and key for `common_name` (`coordinator-3`).
    pub fn issue(&self, common_name: &str) -> anyhow::Result<Identity> {
        let ca_key = KeyPair::from_pem(&self.key_pem).context("reading the CA key")?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, ca_key)
            .context("reading the CA certificate")?;
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()])
            .context("certificate parameters")?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let key = KeyPair::generate().context("certificate key")?;
        let cert = params
            .signed_by(&key, &issuer)
            .context("signing the certificate")?;
        Ok(Identity {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
        })
    }
}

/// Hex blake3 of the CA certificate (DER): what join tokens carry so a joining node can trust the cluster.
pub fn ca_fingerprint(ca_pem: &str) -> anyhow::Result<String> {
    let der = CertificateDer::from_pem_slice(ca_pem.as_bytes())
        .map_err(|e| anyhow!("reading the CA: {e}"))?;
    Ok(blake3::hash(&der).to_hex().to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn chain(
    identity: &Identity,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let certs = CertificateDer::pem_slice_iter(identity.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("reading the certificate chain: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes())
        .map_err(|e| anyhow!("reading the key: {e}"))?;
    Ok((certs, key))
}

fn roots(ca_pem: &str) -> anyhow::Result<Arc<rustls::RootCertStore>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| anyhow!("reading the CA: {e}"))?)
            .context("adding the CA")?;
    }
    Ok(Arc::new(roots))
}

/// Server side: presents `identity`; clients with a CA-signed certificate are authenticated, and clients with
/// none are let in only to present a join token.
pub fn server_config(identity: &Identity) -> anyhow::Result<quinn::ServerConfig> {
    let (certs, key) = chain(identity)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots(&identity.ca_pem)?,
        provider(),
    )
    .allow_unauthenticated()
    .build()
    .context("client verifier")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS versions")?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .context("server certificate")?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).context("QUIC server config")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport()));
    Ok(config)
}

/// Client side: presents `identity` and trusts only the cluster CA.
pub fn client_config(identity: &Identity) -> anyhow::Result<quinn::ClientConfig> {
    let (certs, key) = chain(identity)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS versions")?
        .with_root_certificates(roots(&identity.ca_pem)?)
        .with_client_auth_cert(certs, key)
        .context("client certificate")?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).context("QUIC client config")?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport()));
    Ok(config)
}

/// Client side for a node that is joining: no certificate yet, and the server is trusted only if its chain
/// includes a CA certificate whose fingerprint is `ca_fingerprint` (from the join token).
pub fn join_client_config(ca_fingerprint: &str) -> anyhow::Result<quinn::ClientConfig> {
    let verifier = Arc::new(PinnedCa {
        fingerprint: ca_fingerprint.to_owned(),
        provider: provider(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicClientConfig::try_from(tls).context("QUIC client config")?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport()));
    Ok(config)
}

/// Trusts a server whose presented chain holds the CA with the pinned fingerprint and whose certificate that CA
/// signed (checked by webpki with that CA as the only root).
#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| blake3::hash(c).to_hex().as_str() == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's CA does not match the join token's fingerprint".into(),
                )
            })?;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("bad CA certificate: {e}")))?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `sdj1-<CA fingerprint>-<secret>`: what `spacedock cluster join-token create` prints.
pub fn format_join_token(ca_fingerprint: &str, secret: &str) -> String {
    format!("sdj1-{ca_fingerprint}-{secret}")
}

/// Splits a join token into the CA fingerprint and the secret.
pub fn parse_join_token(token: &str) -> anyhow::Result<(String, String)> {
    let mut parts = token.trim().splitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("sdj1"), Some(fp), Some(secret))
            if fp.len() == 64
                && fp.bytes().all(|b| b.is_ascii_hexdigit())
                && !secret.is_empty() =>
        {
            Ok((fp.to_owned(), secret.to_owned()))
        }
        _ => Err(anyhow!(
            "not a spacedock join token (expected `sdj1-<64 hex>-<secret>`)"
        )),
    }
}

/// Socket buffers the cluster's QUIC sockets ask for: bulk transfers (blobs, packs) arrive in bursts, and each
/// datagram dropped for want of buffer space costs a congestion-control backoff. The kernel caps them at
/// `net.core.rmem_max` and `net.core.wmem_max`.
const SOCKET_BUFFER_BYTES: usize = 8 << 20;

/// A QUIC endpoint on `addr` (a server when `server` is given) whose UDP socket has `SOCKET_BUFFER_BYTES` of
/// buffer each way, as far as the kernel allows.
pub fn endpoint(
    addr: std::net::SocketAddr,
    server: Option<quinn::ServerConfig>,
) -> std::io::Result<quinn::Endpoint> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a smaller buffer still works, only slower under bursts.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER_BYTES);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER_BYTES);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let runtime = quinn::default_runtime()
        .ok_or_else(|| std::io::Error::other("no async runtime for the QUIC endpoint"))?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        server,
        socket.into(),
        runtime,
    )
}

/// A client endpoint on an ephemeral port (`endpoint` with no server).
pub fn client_endpoint() -> std::io::Result<quinn::Endpoint> {
    endpoint(std::net::SocketAddr::from(([0, 0, 0, 0], 0)), None)
}

fn transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_secs(2)));
    t.max_idle_timeout(Some(quinn::VarInt::from_u32(10_000).into()));
    // Blobs (image layers) stream over single streams: windows wide enough to keep a fast link busy.
    t.stream_receive_window(quinn::VarInt::from_u32(16 << 20));
    t.receive_window(quinn::VarInt::from_u32(64 << 20));
    t.send_window(64 << 20);
    t
}

/// The common name of the certificate a peer authenticated with, if it presented one.
pub fn peer_name(connection: &quinn::Connection) -> Option<String> {
    let identity = connection.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_chain_to_the_ca() {
        let ca = ClusterCa::generate("test").unwrap();
        let id = ca.issue("coordinator-1").unwrap();
        let (certs, _) = chain(&id).unwrap();
        assert_eq!(certs.len(), 2);
        let (_, leaf) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
        assert_eq!(
            leaf.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "coordinator-1"
        );
        assert_eq!(
            ca_fingerprint(&id.ca_pem).unwrap(),
            ca_fingerprint(&ca.cert_pem).unwrap()
        );
        assert_eq!(ca_fingerprint(&ca.cert_pem).unwrap().len(), 64);
        server_config(&id).unwrap();
        client_config(&id).unwrap();
        assert!(!format!("{id:?}{ca:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn join_tokens_round_trip() {
        let fp = "ab".repeat(32);
        let token = format_join_token(&fp, "s3cret");
        assert_eq!(parse_join_token(&token).unwrap(), (fp, "s3cret".to_owned()));
        for bad in [
            "",
            "sdj1-xyz-s",
            "sdj2-abab-s",
            &format!("sdj1-{}-", "ab".repeat(32)),
        ] {
            assert!(parse_join_token(bad).is_err(), "{bad}");
        }
    }
}
