//! Who may call what (`--auth-token`, `--auth-reads`) and the server's TLS
//! identity (`--tls-cert`, `--tls-key`).

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use subtle::ConstantTimeEq;
use tokio_rustls::TlsAcceptor;
use tonic::Status;
use tonic::codegen::http::HeaderMap;

/// The shared secret that callers present as `authorization: Bearer
/// <token>`. Its `Debug` output does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthToken(String);

impl AuthToken {
    /// A token is printable ASCII without spaces (it travels in a header).
    pub fn new(token: impl Into<String>) -> anyhow::Result<Self> {
        let token = token.into();
        if token.is_empty() {
            bail!("the auth token is empty");
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            bail!("the auth token must be printable ASCII without spaces");
        }
        Ok(AuthToken(token))
    }

    /// Compares in constant time (for tokens of the same length; the
    /// length itself is not hidden).
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthToken(<redacted>)")
    }
}

/// What a call needs to be let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Health checking and server reflection: never a token.
    Open,
    /// Reads of the API: a token only with `--auth-reads`.
    Read,
    /// Everything else, including any RPC not listed as a read: a token
    /// whenever the server has one.
    Write,
}

/// The API's RPCs that change nothing.
const READS: &[&str] = &[
    "/tradewatch.v1.TradeService/GetRecord",
    "/tradewatch.v1.TradeService/ListRecords",
    "/tradewatch.v1.TradeService/Aggregate",
    "/tradewatch.v1.TradeService/GetDataAvailability",
    "/tradewatch.v1.TradeService/CompareMirror",
    "/tradewatch.v1.TradeService/GetGroup",
    "/tradewatch.v1.TradeService/ListGroups",
    "/tradewatch.v1.MilestoneService/GetWatch",
    "/tradewatch.v1.MilestoneService/ListWatches",
    "/tradewatch.v1.MilestoneService/Subscribe",
    "/tradewatch.v1.MilestoneService/ListEvents",
];

/// Classifies a call by its path (`/package.Service/Method`).
pub fn access(path: &str) -> Access {
    if path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.") {
        Access::Open
    } else if READS.contains(&path) {
        Access::Read
    } else {
        Access::Write
    }
}

/// Who may call the API: nobody needs a token without one configured.
#[derive(Debug, Clone, Default)]
pub struct Auth {
    pub token: Option<AuthToken>,
    /// Reads need the token too.
    pub reads: bool,
}

impl Auth {
    /// Lets the call to `path` in, or says why not (`UNAUTHENTICATED`).
    pub fn check(&self, path: &str, headers: &HeaderMap) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let needed = match access(path) {
            Access::Open => false,
            Access::Read => self.reads,
            Access::Write => true,
        };
        if !needed {
            return Ok(());
        }
        let method = path.rsplit('/').next().unwrap_or(path);
        let Some(value) = headers.get("authorization") else {
            return Err(Status::unauthenticated(format!(
                "{method} needs the header `authorization: Bearer <token>`"
            )));
        };
        let value = value.as_bytes();
        let presented = match value.split_at_checked(7) {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case(b"bearer ") => rest.trim_ascii(),
            _ => {
                return Err(Status::unauthenticated(
                    "the authorization header must be `Bearer <token>`",
                ));
            }
        };
        if token.matches(presented) {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!(
                "{method}: the bearer token is not valid for this server"
            )))
        }
    }
}

/// How long a client gets to finish the TLS handshake (gRPC and the web
/// page alike).
pub(crate) const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The PEM files of the server's TLS identity: a certificate (chain) and its
/// private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Reads and checks both files, so that a bad one stops the server at
    /// start with a message naming it; the acceptor offers `alpn` (`h2` for
    /// gRPC, `http/1.1` for the web page).
    pub(crate) fn acceptor(&self, alpn: &[u8]) -> anyhow::Result<TlsAcceptor> {
        use tokio_rustls::rustls::{self, pki_types::pem::PemObject as _};

        let cert = read(&self.cert, "certificate")?;
        let key = read(&self.key, "private key")?;
        if !contains(&cert, b"-----BEGIN CERTIFICATE-----") {
            bail!(
                "TLS certificate {}: no PEM certificate in it (expected a -----BEGIN CERTIFICATE----- block)",
                self.cert.display()
            );
        }
        if !(contains(&key, b"-----BEGIN ") && contains(&key, b"PRIVATE KEY-----")) {
            bail!(
                "TLS key {}: no PEM private key in it (expected a -----BEGIN … PRIVATE KEY----- block)",
                self.key.display()
            );
        }
        let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("TLS certificate {}: {e}", self.cert.display()))?;
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(&key)
            .map_err(|e| anyhow::anyhow!("TLS key {}: {e}", self.key.display()))?;
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        // Building the config parses both and checks that they belong together.
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                anyhow::anyhow!(
                    "TLS certificate {} with key {}: {}",
                    self.cert.display(),
                    self.key.display(),
                    chain(&e)
                )
            })?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(TlsAcceptor::from(std::sync::Arc::new(config)))
    }
}

fn read(path: &Path, what: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read TLS {what} {}", path.display()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// An error and its sources, joined with ": ".
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The RPCs that change something. Every RPC of the API must be here or
    /// in `READS`, so that a new one is classified on purpose.
    const WRITES: &[&str] = &[
        "/tradewatch.v1.TradeService/PutRecords",
        "/tradewatch.v1.TradeService/IngestRecords",
        "/tradewatch.v1.TradeService/DeleteRecord",
        "/tradewatch.v1.TradeService/PutGroup",
        "/tradewatch.v1.TradeService/DeleteGroup",
        "/tradewatch.v1.MilestoneService/CreateWatch",
        "/tradewatch.v1.MilestoneService/DeleteWatch",
    ];

    #[test]
    fn every_rpc_is_classified() {
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let mut seen = 0;
        for file in set.file.iter().filter(|f| f.package() == "tradewatch.v1") {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/tradewatch.v1.{}/{}", service.name(), method.name());
                    let expected = if WRITES.contains(&path.as_str()) {
                        Access::Write
                    } else {
                        assert!(
                            READS.contains(&path.as_str()),
                            "{path} is neither a read nor a write"
                        );
                        Access::Read
                    };
                    assert_eq!(access(&path), expected, "{path}");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, READS.len() + WRITES.len());
        assert_eq!(access("/grpc.health.v1.Health/Check"), Access::Open);
        assert_eq!(
            access("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Access::Open
        );
        assert_eq!(access("/tradewatch.v1.TradeService/Unknown"), Access::Write);
    }

    fn headers(authorization: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = authorization {
            h.insert("authorization", v.parse().unwrap());
        }
        h
    }

    #[test]
    fn bearer_tokens() {
        let auth = Auth {
            token: Some(AuthToken::new("s3cret").unwrap()),
            reads: false,
        };
        let put = "/tradewatch.v1.TradeService/PutRecords";
        let get = "/tradewatch.v1.TradeService/GetRecord";
        assert!(auth.check(put, &headers(Some("Bearer s3cret"))).is_ok());
        assert!(auth.check(put, &headers(Some("bearer  s3cret "))).is_ok());
        assert!(auth.check(get, &headers(None)).is_ok());
        for bad in [
            None,
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("Basic s3cret"),
            Some("s3cret"),
        ] {
            let status = auth.check(put, &headers(bad)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        let reads = Auth { reads: true, ..auth };
        assert!(reads.check(get, &headers(None)).is_err());
        assert!(
            reads
                .check("/grpc.health.v1.Health/Check", &headers(None))
                .is_ok()
        );
        assert!(Auth::default().check(put, &headers(None)).is_ok());
    }

    #[test]
    fn tokens_are_checked_and_hidden() {
        assert!(AuthToken::new("").is_err());
        assert!(AuthToken::new("has space").is_err());
        assert_eq!(
            format!("{:?}", AuthToken::new("s3cret").unwrap()),
            "AuthToken(<redacted>)"
        );
    }
}
