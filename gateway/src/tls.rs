//! TLS termination for the gateway.
//!
//! The gateway picks a certificate for each handshake by SNI. A name with a configured custom-domain certificate
//! gets that certificate; every other name (including clients that send no SNI) gets the default certificate,
//! normally a wildcard for `*.app.<domain>`. Without default certificate files a self-signed wildcard is generated
//! at start-up, which is only good for development. Certificates are read from PEM files and re-read when the
//! files change (see [`Certificates::watch`]), so a renewal done by an external tool needs no restart. Obtaining
//! certificates (ACME) is not done here.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};

/// A certificate for one custom domain, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainCert {
    /// The exact host name this certificate is served for (no wildcards).
    pub domain: String,
    /// PEM file with the certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 RSA or SEC1 EC).
    pub key: PathBuf,
}

/// The label used for the default certificate in logs and in [`Certificates::reload_changed`].
const DEFAULT_LABEL: &str = "default";

/// Smallest polling period accepted by [`Certificates::watch`]; zero would make `tokio::time::interval` panic.
const MIN_POLL: Duration = Duration::from_millis(100);

/// What the certificate resolver serves; replaced as a whole on reload so a handshake sees one consistent view.
struct Table {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

/// Size and modification time of a file, used to notice that it was rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// Stamps of a (certificate, key) file pair.
type PairStamp = (FileStamp, FileStamp);

/// A file pair to watch for changes.
struct Source {
    /// `None` for the default certificate, else the normalised custom domain.
    domain: Option<String>,
    cert: PathBuf,
    key: PathBuf,
    /// Stamp of the files as last loaded successfully.
    loaded: PairStamp,
    /// The last load error, so a broken pair is warned about once, not on every poll.
    last_error: Option<String>,
}

impl Source {
    fn label(&self) -> &str {
        self.domain.as_deref().unwrap_or(DEFAULT_LABEL)
    }
}

/// Server certificates chosen by SNI: custom domains by exact name, everything else gets the default certificate.
pub struct Certificates {
    app_domain: String,
    self_signed: bool,
    provider: Arc<CryptoProvider>,
    table: RwLock<Arc<Table>>,
    /// Also serialises reloads, so two concurrent `reload_changed` calls cannot lose each other's updates.
    sources: Mutex<Vec<Source>>,
}

impl Certificates {
    /// Loads the default certificate pair (or generates a self-signed `*.app.<app_domain>` one when `default` is
    /// `None`) and the custom-domain certificates. Any unreadable or inconsistent file is an error naming the file.
    pub fn load(
        app_domain: &str,
        default: Option<(PathBuf, PathBuf)>,
        domains: Vec<DomainCert>,
    ) -> anyhow::Result<Arc<Certificates>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let app_domain = normalize(app_domain);
        if app_domain.is_empty() {
            bail!("TLS: the app domain is empty");
        }
        let mut sources = Vec::with_capacity(domains.len() + 1);

        let self_signed = default.is_none();
        let default_key = match default {
            Some((cert, key)) => {
                let (certified, stamp) = load_pair(&provider, &cert, &key)?;
                sources.push(Source { domain: None, cert, key, loaded: stamp, last_error: None });
                certified
            }
            None => {
                let names = [format!("*.app.{app_domain}"), format!("app.{app_domain}")];
                let (cert, key) = generate(&names).context("generating the self-signed default certificate")?;
                let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
                let certified = CertifiedKey::from_der(vec![cert.der().clone()], key_der, &provider)
                    .context("loading the self-signed default certificate")?;
                tracing::warn!(
                    names = ?names,
                    "TLS: no default certificate; serving a generated self-signed one that clients will not trust"
                );
                Arc::new(certified)
            }
        };

        let mut by_name = HashMap::with_capacity(domains.len());
        for DomainCert { domain, cert, key } in domains {
            let name = normalize(&domain);
            if name.is_empty() {
                bail!("TLS: empty custom domain name for certificate file {}", cert.display());
            }
            if by_name.contains_key(&name) {
                bail!("TLS: custom domain {name} is configured twice (second certificate file {})", cert.display());
            }
            let (certified, stamp) = load_pair(&provider, &cert, &key).with_context(|| format!("domain {name}"))?;
            by_name.insert(name.clone(), certified);
            sources.push(Source { domain: Some(name), cert, key, loaded: stamp, last_error: None });
        }

        Ok(Arc::new(Certificates {
            app_domain,
            self_signed,
            provider,
            table: RwLock::new(Arc::new(Table { default: default_key, by_name })),
            sources: Mutex::new(sources),
        }))
    }

    /// Re-reads every file pair whose size or modification time changed since it was last loaded and returns the
    /// domains that now serve a new certificate (`"default"` for the default pair). A pair that fails to load keeps
    /// its previous certificate and is tried again on the next call, which covers a certificate and key being
    /// written one after the other.
    pub fn reload_changed(&self) -> Vec<String> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let mut updates: Vec<(Option<String>, Arc<CertifiedKey>)> = Vec::new();

        for source in sources.iter_mut() {
            // A missing file is usually mid-replacement: keep serving the old pair and look again next time.
            let changed = stamp_pair(&source.cert, &source.key).map(|stamp| stamp != source.loaded);
            let result = match changed {
                Ok(false) => continue,
                Ok(true) => load_pair(&self.provider, &source.cert, &source.key),
                Err(err) => Err(err),
            };
            match result {
                Ok((certified, stamp)) => {
                    tracing::info!(domain = source.label(), cert = %source.cert.display(), "TLS: certificate reloaded");
                    source.loaded = stamp;
                    source.last_error = None;
                    updates.push((source.domain.clone(), certified));
                }
                Err(err) => {
                    let err = format!("{err:#}");
                    if source.last_error.as_ref() != Some(&err) {
                        tracing::warn!(domain = source.label(), "TLS: keeping the current certificate: {err}");
                    }
                    source.last_error = Some(err);
                }
            }
        }

        if updates.is_empty() {
            return Vec::new();
        }
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        let mut next = Table { default: Arc::clone(&table.default), by_name: table.by_name.clone() };
        let mut reloaded = Vec::with_capacity(updates.len());
        for (domain, certified) in updates {
            match domain {
                Some(name) => {
                    next.by_name.insert(name.clone(), certified);
                    reloaded.push(name);
                }
                None => {
                    next.default = certified;
                    reloaded.push(DEFAULT_LABEL.to_owned());
                }
            }
        }
        *table = Arc::new(next);
        reloaded
    }

    /// Spawns a task that calls [`Certificates::reload_changed`] every `every` (at least 100 ms). Abort the returned
    /// handle on shutdown.
    pub fn watch(self: Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every.max(MIN_POLL));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // The first tick is immediate and everything was just loaded.
            loop {
                ticks.tick().await;
                let this = Arc::clone(&self);
                // File reads and key parsing are blocking work; keep them off the async workers.
                if let Err(err) = tokio::task::spawn_blocking(move || this.reload_changed()).await {
                    tracing::warn!("TLS: certificate reload task failed: {err}");
                }
            }
        })
    }

    /// What is being served, for a start-up log line: the default certificate first, then custom domains sorted.
    pub fn names(&self) -> Vec<String> {
        let table = self.current();
        let mut domains: Vec<String> = table.by_name.keys().cloned().collect();
        domains.sort();
        let default = if self.self_signed {
            format!("{DEFAULT_LABEL} (self-signed *.app.{})", self.app_domain)
        } else {
            DEFAULT_LABEL.to_owned()
        };
        std::iter::once(default).chain(domains).collect()
    }

    fn current(&self) -> Arc<Table> {
        Arc::clone(&self.table.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The certificate for a (possibly absent) SNI name.
    fn pick(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let table = self.current();
        server_name.and_then(|name| table.by_name.get(&normalize(name))).unwrap_or(&table.default).clone()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(client_hello.server_name()))
    }
}

impl fmt::Debug for Certificates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificates")
            .field("app_domain", &self.app_domain)
            .field("names", &self.names())
            .finish_non_exhaustive()
    }
}

/// The rustls server configuration for the gateway: certificates from `certs`, ALPN `h2` then `http/1.1`, no
/// client authentication.
pub fn server_config(certs: Arc<Certificates>) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(Arc::clone(&certs.provider))
        .with_safe_default_protocol_versions()
        .context("TLS: building the server configuration")?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Host names compare case-insensitively, and `example.com.` is the same name as `example.com`.
fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn stamp_file(path: &Path, what: &str) -> anyhow::Result<FileStamp> {
    let meta = std::fs::metadata(path).map_err(|e| anyhow!("{what} file {}: cannot read: {e}", path.display()))?;
    Ok(FileStamp { modified: meta.modified().ok(), len: meta.len() })
}

fn stamp_pair(cert: &Path, key: &Path) -> anyhow::Result<PairStamp> {
    Ok((stamp_file(cert, "certificate")?, stamp_file(key, "key")?))
}

/// Reads and checks one certificate/key pair. The stamp is taken before reading, so a write that races with the
/// read changes the stamp again and is picked up on the next poll.
fn load_pair(provider: &CryptoProvider, cert: &Path, key: &Path) -> anyhow::Result<(Arc<CertifiedKey>, PairStamp)> {
    let stamp = stamp_pair(cert, key)?;

    let cert_pem = std::fs::read(cert).map_err(|e| anyhow!("certificate file {}: cannot read: {e}", cert.display()))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("certificate file {}: invalid PEM: {e}", cert.display()))?;
    if chain.is_empty() {
        bail!("certificate file {}: no certificate in it (expected a PEM CERTIFICATE block)", cert.display());
    }

    let key_pem = std::fs::read(key).map_err(|e| anyhow!("key file {}: cannot read: {e}", key.display()))?;
    let key_der = match PrivateKeyDer::from_pem_slice(&key_pem) {
        Ok(der) => der,
        Err(rustls::pki_types::pem::Error::NoItemsFound) => {
            bail!("key file {}: no private key in it (expected PKCS#8, RSA or EC PEM)", key.display())
        }
        Err(e) => bail!("key file {}: invalid PEM: {e}", key.display()),
    };
    let signing_key = provider
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| anyhow!("key file {}: unusable private key: {e}", key.display()))?;

    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown` means the key type cannot report its public key; rustls's own `from_der` accepts that too.
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            bail!("key file {} does not match certificate file {}", key.display(), cert.display())
        }
        Err(e) => bail!("certificate file {}: invalid certificate: {e}", cert.display()),
    }
    Ok((Arc::new(certified), stamp))
}

/// A self-signed certificate (ECDSA P-256) for `names`, with the first name as common name.
fn generate(names: &[String]) -> Result<(rcgen::Certificate, rcgen::KeyPair), rcgen::Error> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    if let Some(first) = names.first() {
        // A distinct subject per certificate keeps test root stores with several self-signed certs unambiguous.
        params.distinguished_name.push(rcgen::DnType::CommonName, first.clone());
    }
    let cert = params.self_signed(&key)?;
    Ok((cert, key))
}

/// Helpers for tests and benches.
pub mod testing {
    /// A fresh self-signed certificate for `names`, as (certificate PEM, PKCS#8 private key PEM).
    ///
    /// # Panics
    ///
    /// If rcgen rejects a name (for example an empty one).
    pub fn self_signed(names: &[&str]) -> (String, String) {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let (cert, key) = super::generate(&names).expect("rcgen could not generate a self-signed certificate");
        (cert.pem(), key.serialize_pem())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    const A: &str = "a.example.com";
    const B: &str = "b.example.org";

    /// Writes `contents` and gives the file a modification time no earlier write in this process used, so change
    /// detection does not depend on the file system's timestamp granularity.
    fn write_bumped(path: &Path, contents: &str) {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        std::fs::write(path, contents).unwrap();
        let secs = 1_700_000_000 + NEXT.fetch_add(1, Ordering::Relaxed);
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)).unwrap();
    }

    /// Writes a new self-signed pair for `names` under `dir/<stem>.{crt,key}` and returns its DER certificate.
    fn write_pair(dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf, CertificateDer<'static>) {
        let (cert_pem, key_pem) = testing::self_signed(names);
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        write_bumped(&cert, &cert_pem);
        write_bumped(&key, &key_pem);
        (cert, key, der_of(&cert_pem))
    }

    fn der_of(cert_pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap()
    }

    fn domain(name: &str, cert: &Path, key: &Path) -> DomainCert {
        DomainCert { domain: name.to_owned(), cert: cert.to_owned(), key: key.to_owned() }
    }

    /// A TLS server that completes handshakes and then waits for the client to close.
    async fn serve(certs: Arc<Certificates>) -> std::net::SocketAddr {
        let acceptor = TlsAcceptor::from(server_config(certs).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut sink = Vec::new();
                        let _ = tls.read_to_end(&mut sink).await;
                    }
                });
            }
        });
        addr
    }

    /// Handshakes with SNI `name`, trusting exactly `roots`; returns (served leaf certificate, negotiated ALPN).
    async fn handshake(
        addr: std::net::SocketAddr,
        name: &str,
        roots: &[CertificateDer<'static>],
        alpn: &[&[u8]],
    ) -> anyhow::Result<(CertificateDer<'static>, Option<Vec<u8>>)> {
        let mut store = rustls::RootCertStore::empty();
        for root in roots {
            store.add(root.clone())?;
        }
        let mut config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(store)
                .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let connector = TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(addr).await?;
        let server_name = rustls::pki_types::ServerName::try_from(name.to_owned())?;
        let tls = connector.connect(server_name, tcp).await?;
        let (_, conn) = tls.get_ref();
        let leaf = conn.peer_certificates().and_then(|c| c.first()).context("no peer certificate")?.clone();
        Ok((leaf, conn.alpn_protocol().map(<[u8]>::to_vec)))
    }

    #[tokio::test]
    async fn serves_by_sni_and_reloads_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        let (a_cert, a_key, a_der) = write_pair(dir.path(), "a", &[A]);
        let (b_cert, b_key, b_der) = write_pair(dir.path(), "b", &[B]);
        let (d_cert, d_key, d_der) = write_pair(dir.path(), "default", &["*.app.test.local", "app.test.local"]);

        let certs = Certificates::load(
            "test.local",
            Some((d_cert, d_key)),
            vec![domain(A, &a_cert, &a_key), domain(B, &b_cert, &b_key)],
        )
        .unwrap();
        assert_eq!(certs.names(), vec!["default".to_owned(), A.to_owned(), B.to_owned()]);
        let addr = serve(Arc::clone(&certs)).await;
        let mut roots = vec![a_der.clone(), b_der.clone(), d_der.clone()];
        let h2_first: &[&[u8]] = &[b"h2", b"http/1.1"];

        let (leaf, alpn) = handshake(addr, A, &roots, h2_first).await.unwrap();
        assert_eq!(leaf, a_der);
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        let (leaf, _) = handshake(addr, B, &roots, h2_first).await.unwrap();
        assert_eq!(leaf, b_der);
        let (leaf, alpn) = handshake(addr, "x.app.test.local", &roots, &[b"http/1.1"]).await.unwrap();
        assert_eq!(leaf, d_der);
        assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));

        // Nothing changed: nothing is reloaded.
        assert!(certs.reload_changed().is_empty());

        // Certificate written before its key: the new certificate does not match the old key yet, keep the old.
        let (new_cert_pem, new_key_pem) = testing::self_signed(&[A]);
        let new_der = der_of(&new_cert_pem);
        roots.push(new_der.clone());
        write_bumped(&a_cert, &new_cert_pem);
        assert!(certs.reload_changed().is_empty());
        assert_eq!(handshake(addr, A, &roots, h2_first).await.unwrap().0, a_der);

        // The key follows: the next poll picks the pair up.
        write_bumped(&a_key, &new_key_pem);
        assert_eq!(certs.reload_changed(), vec![A.to_owned()]);
        assert_eq!(handshake(addr, A, &roots, h2_first).await.unwrap().0, new_der);
        assert_eq!(handshake(addr, B, &roots, h2_first).await.unwrap().0, b_der);

        // Garbage over a good certificate: the old one stays, then a repaired file is picked up.
        write_bumped(&b_cert, "this is not a certificate\n");
        assert!(certs.reload_changed().is_empty());
        assert!(certs.reload_changed().is_empty(), "a broken pair is retried but not reported as reloaded");
        assert_eq!(handshake(addr, B, &roots, h2_first).await.unwrap().0, b_der);
        let (b2_cert, b2_key, b2_der) = write_pair(dir.path(), "b2", &[B]);
        write_bumped(&b_cert, &std::fs::read_to_string(&b2_cert).unwrap());
        write_bumped(&b_key, &std::fs::read_to_string(&b2_key).unwrap());
        roots.push(b2_der.clone());
        assert_eq!(certs.reload_changed(), vec![B.to_owned()]);
        assert_eq!(handshake(addr, B, &roots, h2_first).await.unwrap().0, b2_der);

        // A deleted file also keeps the old certificate.
        std::fs::remove_file(&a_key).unwrap();
        assert!(certs.reload_changed().is_empty());
        assert_eq!(handshake(addr, A, &roots, h2_first).await.unwrap().0, new_der);
    }

    #[tokio::test]
    async fn generated_default_covers_the_app_wildcard() {
        let certs = Certificates::load("Test.Local.", None, Vec::new()).unwrap();
        assert_eq!(certs.names(), vec!["default (self-signed *.app.test.local)".to_owned()]);
        let generated = certs.pick(None).cert[0].clone();
        let addr = serve(Arc::clone(&certs)).await;
        for name in ["x.app.test.local", "app.test.local", "anything.example.net"] {
            let roots = std::slice::from_ref(&generated);
            let served = handshake(addr, name, roots, &[b"h2"]).await;
            if name.ends_with("test.local") {
                assert_eq!(served.unwrap().0, generated, "{name}");
            } else {
                // Served, but the wildcard does not cover other names, so verification fails.
                assert!(served.is_err(), "{name}");
            }
        }
        // Reloading with no files configured is a no-op.
        assert!(certs.reload_changed().is_empty());
    }

    #[test]
    fn sni_is_case_insensitive_and_ignores_trailing_dot() {
        let dir = tempfile::tempdir().unwrap();
        let (a_cert, a_key, a_der) = write_pair(dir.path(), "a", &[A]);
        let certs = Certificates::load("test.local", None, vec![domain("A.Example.com.", &a_cert, &a_key)]).unwrap();
        for sni in ["a.example.com", "A.EXAMPLE.COM", "a.example.com."] {
            assert_eq!(certs.pick(Some(sni)).cert[0], a_der, "{sni}");
        }
        for sni in [None, Some("example.com"), Some("x.a.example.com"), Some("")] {
            assert_ne!(certs.pick(sni).cert[0], a_der, "{sni:?}");
        }
        assert!(format!("{certs:?}").contains("a.example.com"));
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a_cert, a_key, _) = write_pair(dir.path(), "a", &[A]);
        let (_, b_key, _) = write_pair(dir.path(), "b", &[B]);
        let garbage = dir.path().join("garbage.crt");
        write_bumped(&garbage, "not a certificate\n");
        let missing = dir.path().join("missing.crt");
        let err_of = |cert: &Path, key: &Path| {
            let err = Certificates::load("test.local", None, vec![domain(A, cert, key)]).unwrap_err();
            format!("{err:#}")
        };

        let err = err_of(&garbage, &a_key);
        assert!(err.contains(&garbage.display().to_string()) && err.contains("no certificate"), "{err}");

        let err = err_of(&missing, &a_key);
        assert!(err.contains(&missing.display().to_string()) && err.contains("cannot read"), "{err}");

        // A certificate file given as the key: no key in it.
        let err = err_of(&a_cert, &a_cert);
        assert!(err.contains("no private key"), "{err}");

        let err = err_of(&a_cert, &b_key);
        assert!(err.contains("does not match") && err.contains(&b_key.display().to_string()), "{err}");

        // Also for the default pair.
        let err = Certificates::load("test.local", Some((garbage.clone(), a_key.clone())), Vec::new()).unwrap_err();
        assert!(format!("{err:#}").contains(&garbage.display().to_string()), "{err:#}");

        let err = Certificates::load("test.local", None, vec![domain(A, &a_cert, &a_key), domain(A, &a_cert, &a_key)])
            .unwrap_err();
        assert!(format!("{err:#}").contains("twice"), "{err:#}");
    }

    #[tokio::test]
    async fn watch_polls_for_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (a_cert, a_key, _) = write_pair(dir.path(), "a", &[A]);
        let certs = Certificates::load("test.local", None, vec![domain(A, &a_cert, &a_key)]).unwrap();
        let (new_cert_pem, new_key_pem) = testing::self_signed(&[A]);
        write_bumped(&a_cert, &new_cert_pem);
        write_bumped(&a_key, &new_key_pem);
        let handle = Arc::clone(&certs).watch(Duration::ZERO);
        let new_der = der_of(&new_cert_pem);
        for _ in 0..100 {
            if certs.pick(Some(A)).cert[0] == new_der {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        handle.abort();
        assert_eq!(certs.pick(Some(A)).cert[0], new_der);
    }
}
