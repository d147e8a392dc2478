//! TLS modes against the real server: `files` with each key format, its errors, and the
//! certificate `auto` makes.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{TestServer, repo_public};
use dialtone::config::{TlsConfig, TlsMode};
use dialtone::tls;
use hyper::StatusCode;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn files_mode(cert: &Path, key: &Path) -> String {
    format!(
        "[tls]\nmode = \"files\"\ncert = {:?}\nkey = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

fn files_config(cert: &Path, key: &Path) -> TlsConfig {
    TlsConfig {
        mode: TlsMode::Files,
        cert: cert.to_owned(),
        key: key.to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn files_mode_serves_with_rsa_sec1_and_pkcs8_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem) = tls::generate(&["localhost".into()], SystemTime::now()).unwrap();
    assert!(key_pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8");
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key_pem).unwrap();

    let pairs = [
        (fixture("rsa-cert.pem"), fixture("rsa-key.pem")),
        (fixture("ec-cert.pem"), fixture("ec-key.pem")),
        (dir.path().join("cert.pem"), dir.path().join("key.pem")),
    ];
    for (cert, key) in pairs {
        let server = TestServer::start_with(&files_mode(&cert, &key), &repo_public()).await;
        let expected = CertificateDer::from_pem_file(&cert).unwrap();
        assert_eq!(server.cert.as_ref(), Some(&expected));
        // The client trusts only the file's certificate, and verifies the server by it.
        let reply = server.get("/").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", cert.display());
        server.stop().await;
    }
}

#[test]
fn files_mode_errors_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "hello, I am not PEM\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let unreadable = dir.path().join("a-directory.pem");
    std::fs::create_dir(&unreadable).unwrap();

    let error = |cert: &Path, key: &Path| -> String {
        tls::setup(&files_config(cert, key))
            .expect_err("setup must fail")
            .to_string()
    };
    let (rsa_cert, rsa_key) = (fixture("rsa-cert.pem"), fixture("rsa-key.pem"));
    let ec_key = fixture("ec-key.pem");

    let err = error(&missing, &rsa_key);
    assert!(
        err.contains("missing.pem") && err.contains("cannot read the cert file"),
        "{err}"
    );
    let err = error(&rsa_cert, &missing);
    assert!(
        err.contains("missing.pem") && err.contains("cannot read the key file"),
        "{err}"
    );
    let err = error(&unreadable, &rsa_key);
    assert!(err.contains("a-directory.pem"), "{err}");
    let err = error(&empty, &rsa_key);
    assert!(
        err.contains("empty.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
    let err = error(&garbage, &rsa_key);
    assert!(
        err.contains("garbage.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
    let err = error(&rsa_cert, &empty);
    assert!(
        err.contains("empty.pem") && err.contains("no PEM private key"),
        "{err}"
    );
    // A key of the right kind but the wrong pair.
    let err = error(&rsa_cert, &ec_key);
    assert!(err.contains("does not belong"), "{err}");
    let (_, other_key) = tls::generate(&["localhost".into()], SystemTime::now()).unwrap();
    let other = dir.path().join("other-key.pem");
    std::fs::write(&other, other_key).unwrap();
    let err = error(&fixture("ec-cert.pem"), &other);
    assert!(
        err.contains("does not belong") && err.contains("other-key.pem"),
        "{err}"
    );
}

#[test]
fn auto_mode_covers_localhost_the_host_name_and_every_lan_address() {
    let dir = tempfile::tempdir().unwrap();
    let config = TlsConfig {
        mode: TlsMode::Auto,
        cert: dir.path().join("certs/cert.pem"),
        key: dir.path().join("certs/key.pem"),
        ..Default::default()
    };
    let made = tls::setup(&config).unwrap().unwrap();
    let (_, parsed) = x509_parser::parse_x509_certificate(&made.certificate).unwrap();
    assert!(
        !parsed.is_ca(),
        "browsers and rustls want an end-entity certificate"
    );
    let san = parsed.subject_alternative_name().unwrap().unwrap();
    let listed: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => dns.to_string(),
            x509_parser::extensions::GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => std::net::IpAddr::from(<[u8; 4]>::try_from(*bytes).unwrap()).to_string(),
                _ => std::net::IpAddr::from(<[u8; 16]>::try_from(*bytes).unwrap()).to_string(),
            },
            other => format!("{other:?}"),
        })
        .collect();
    let host = gethostname::gethostname().into_string().unwrap();
    for wanted in ["localhost", "127.0.0.1", "::1", host.as_str()] {
        assert!(listed.iter().any(|n| n == wanted), "{wanted} in {listed:?}");
    }
    for ip in dialtone::net::lan_addresses() {
        assert!(listed.contains(&ip.to_string()), "{ip} in {listed:?}");
    }
    let validity = parsed.validity();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(validity.not_before.timestamp() < now);
    assert!(validity.not_after.timestamp() > now + 300 * 24 * 3600);
}

#[test]
fn auto_mode_never_overwrites_a_certificate_it_did_not_make() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(fixture("ec-cert.pem"), &cert).unwrap();
    std::fs::copy(fixture("ec-key.pem"), &key).unwrap();
    let names = vec!["localhost".to_string(), "198.51.100.3".to_string()];
    // It lacks 198.51.100.3, but it is the user's: kept, and only warned about.
    let used = tls::auto(&cert, &key, &names).unwrap();
    assert!(
        !used.self_signed,
        "not ours: no self-signed warning in the banner"
    );
    assert_eq!(
        std::fs::read(&cert).unwrap(),
        std::fs::read(fixture("ec-cert.pem")).unwrap()
    );
    assert_eq!(
        used.certificate,
        CertificateDer::from_pem_file(fixture("ec-cert.pem")).unwrap()
    );
}

#[test]
fn auto_mode_replaces_a_broken_or_expired_certificate_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let names = vec!["localhost".to_string()];
    let long_ago = SystemTime::now() - Duration::from_secs(800 * 24 * 3600);
    let (old_cert, old_key) =
        tls::generate_valid(&names, long_ago, long_ago + Duration::from_secs(3600)).unwrap();
    std::fs::write(&cert, &old_cert).unwrap();
    std::fs::write(&key, &old_key).unwrap();
    let renewed = tls::auto(&cert, &key, &names).unwrap();
    assert!(renewed.origin.contains("expired"), "{}", renewed.origin);
    assert_ne!(std::fs::read_to_string(&cert).unwrap(), old_cert);

    std::fs::write(&key, "").unwrap();
    let repaired = tls::auto(&cert, &key, &names).unwrap();
    assert!(repaired.origin.contains("unusable"), "{}", repaired.origin);
}

/// Browsers reconnect after every network change: each returning one resumes its TLS session
/// (no certificate, no signature) from a ticket, however many came before it. Sessions kept
/// in the server's memory instead would cover only the last 256 clients.
#[tokio::test]
async fn every_returning_client_resumes_its_tls_session() {
    use rustls::HandshakeKind;
    use rustls::pki_types::ServerName;

    let server = TestServer::start().await;
    let cert = server.cert.clone().expect("TLS is on by default");
    // One connector per client: each its own session cache, as each browser has.
    let clients: Vec<_> = (0..300)
        .map(|_| common::connector(&cert, &[b"http/1.1"]))
        .collect();
    let visit = |connector: tokio_rustls::TlsConnector| {
        let addr = server.addr;
        async move {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let tls = connector.connect(name, tcp).await.unwrap();
            let kind = tls.get_ref().1.handshake_kind();
            // Reading the reply reads the tickets that came after the handshake.
            let reply = common::http1(tls, hyper::Request::get("/"), &[]).await;
            assert_eq!(reply.status, StatusCode::OK);
            kind
        }
    };
    for client in &clients {
        assert_eq!(visit(client.clone()).await, Some(HandshakeKind::Full));
    }
    let mut resumed = 0;
    for client in &clients {
        if visit(client.clone()).await == Some(HandshakeKind::Resumed) {
            resumed += 1;
        }
    }
    assert_eq!(resumed, clients.len(), "returning clients that resumed");
    server.stop().await;
}
