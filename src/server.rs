//! The accept loop: TLS (or not), HTTP/1.1 and HTTP/2, upgrades, and a graceful drain.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests start the real
//! server on port 0 and stop it when they like.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::http::{App, ConnInfo};
use crate::tls::Certificates;

/// Serves until `shutdown` completes, then closes every WebSocket with 1001 and waits for open
/// connections to finish, at most the configured drain timeout. `tls` is `None` for plain
/// HTTP.
pub async fn run(
    listener: TcpListener,
    tls: Option<Certificates>,
    app: App,
    shutdown: impl Future<Output = ()>,
) {
    let limits = app.settings().limits.clone();
    let handshake_timeout = limits.tls_handshake_timeout();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own default is 30 s, and the auto builder sets none for the first bytes.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout());
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    // Connections still in their TLS handshake hold a watcher too; they give up on this.
    let (stopping, _) = watch::channel(false);
    let mut backoff = Duration::ZERO;
    tokio::pin!(shutdown);

    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff = Duration::ZERO;
                    accepted
                }
                Err(err) => {
                    // Usually EMFILE (out of descriptors): wait for some to be freed instead of
                    // spinning or giving up; existing connections carry on.
                    backoff = (backoff * 2).clamp(Duration::from_millis(50), Duration::from_secs(1));
                    error!("cannot accept a connection: {err}; retrying in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let watcher = graceful.watcher();
        let builder = builder.clone();
        let app = app.clone();
        let acceptor = tls.as_ref().map(|tls| TlsAcceptor::from(tls.current()));
        let mut stop = stopping.subscribe();
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                let info = ConnInfo { peer, tls: false };
                return serve_http(&builder, watcher, tcp, app, info).await;
            };
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp));
            let stream = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(err)) => {
                        app.metrics().tls_handshake_failed();
                        return debug!(%peer, "TLS handshake failed: {err}");
                    }
                    Err(_) => {
                        app.metrics().tls_handshake_failed();
                        return debug!(%peer, "TLS handshake timed out after {handshake_timeout:?}");
                    }
                },
                _ = stop.changed() => return,
            };
            drop(stop);
            let info = ConnInfo { peer, tls: true };
            serve_http(&builder, watcher, stream, app, info).await;
        });
    }

    drop(listener);
    stopping.send_replace(true);
    info!(
        "shutting down: closing {} websocket(s) and draining connections",
        app.connections()
    );
    app.close_sessions();
    // In a cluster: free this instance's names and tell remote partners (or, with a grace
    // period, let them wait for a resume elsewhere) now, before the drain: the grace of a
    // socket held here must not run out during the drain and end its call after all.
    app.registry().leave().await;
    let drained = async {
        graceful.shutdown().await;
        app.sessions_closed().await;
    };
    let deadline = limits.drain_timeout();
    if tokio::time::timeout(deadline, drained).await.is_err() {
        warn!("connections still open after {deadline:?}; stopping anyway");
    }
}

async fn serve_http<I>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    app: App,
    info: ConnInfo,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.handle(req, info).await) }
    });
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(err) = watcher.watch(connection).await {
        debug!(peer = %info.peer, "connection ended with an error: {err}");
    }
}
