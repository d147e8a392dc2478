//! The reference relay: the least a WebSocket relay between pairs can do on this machine, the
//! limit every dialtone row is set against. No JSON, no registry, no checks: a connection's
//! first text frame names it (the generator's login), a fixed reply answers it, and every
//! later text frame goes as it came to the partner (`a17` ↔ `b17`). Same runtime, same
//! WebSocket library, same per-connection reader, bounded queue and writer task as dialtone,
//! so what it costs is the floor of that design, not of a different one.
//!
//! Started by the benchmark as `loadgen --reference-relay PORT [CERT KEY]`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

type Peers = Arc<Mutex<HashMap<String, mpsc::Sender<Message>>>>;

pub async fn serve(port: u16, tls: Option<(String, String)>) -> anyhow::Result<()> {
    let acceptor = match tls {
        None => None,
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(&cert)?.collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_file(&key)?;
            let config = rustls::ServerConfig::builder_with_provider(dialtone::tls::provider())
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key)?;
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
        }
    };
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("reference relay: binding 127.0.0.1:{port}"))?;
    let peers = Peers::default();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (peers, acceptor) = (peers.clone(), acceptor.clone());
        tokio::spawn(async move {
            match acceptor {
                None => connection(tcp, peers).await,
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        connection(tls, peers).await;
                    }
                }
            }
        });
    }
}

/// The name after `"username":"`, found without parsing.
fn name_in(login: &str) -> Option<&str> {
    let at = login.find("\"username\":\"")? + 12;
    let len = login[at..].find('"')?;
    Some(&login[at..at + len])
}

/// The partner of `a17` is `b17`, and the other way round.
fn partner_of(name: &str) -> String {
    match name.strip_prefix('a') {
        Some(rest) => format!("b{rest}"),
        None => format!("a{}", name.get(1..).unwrap_or("")),
    }
}

async fn connection<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: S, peers: Peers) {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(io, Some(config)).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(256);
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.feed(frame).await.is_err() {
                return;
            }
            while let Ok(frame) = rx.try_recv() {
                if sink.feed(frame).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
        }
    });
    let mut me: Option<String> = None;
    let mut partner: Option<mpsc::Sender<Message>> = None;
    while let Some(Ok(frame)) = stream.next().await {
        let Message::Text(text) = frame else {
            continue;
        };
        let Some(name) = &me else {
            let name = name_in(&text).unwrap_or("").to_owned();
            peers
                .lock()
                .expect("peers lock")
                .insert(name.clone(), tx.clone());
            me = Some(name);
            let reply = r#"{"type":"login","success":true}"#;
            if tx.send(Message::text(reply)).await.is_err() {
                break;
            }
            continue;
        };
        if partner.is_none() {
            partner = peers
                .lock()
                .expect("peers lock")
                .get(&partner_of(name))
                .cloned();
        }
        if let Some(to) = &partner
            && to.send(Message::Text(text)).await.is_err()
        {
            partner = None;
        }
    }
    if let Some(name) = me {
        peers.lock().expect("peers lock").remove(&name);
    }
    drop(tx);
    writer.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_partners() {
        assert_eq!(name_in(r#"{"type":"login","username":"a17"}"#), Some("a17"));
        assert_eq!(partner_of("a17"), "b17");
        assert_eq!(partner_of("b17"), "a17");
    }
}
