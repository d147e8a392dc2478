//! The accept loop: TLS (or not), HTTP/1.1 and HTTP/2, upgrades, and a graceful drain.
//!
//! [`run`] takes an already-bound listener and a shutdown future, so tests start the real
//! server on port 0 and stop it when they like; [`serve`] takes several (a host name that
//! resolves to more than one address).
//!
//! Three things happen before hyper sees a connection. On the TLS port, a client that speaks
//! plain HTTP (someone typed `http://` or no scheme) is answered with a redirect to the same
//! address on `https://` instead of bytes it cannot read. With the built-in TURN relay on,
//! a connection whose first message is STUN goes to the relay instead of hyper: in the clear
//! (TURN over TCP), or after the TLS handshake (TURN over TLS), so that one port serves the
//! page, the signaling and the relay. And every connection must send its first bytes within
//! `header_read_timeout_secs`: hyper-util's auto builder reads them to tell HTTP/1 from
//! HTTP/2 with no deadline of its own, so a silent socket would be held forever (slowloris).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Sleep;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::config::Listen;
use crate::http::{App, ConnInfo};
use crate::tls::Certificates;
use crate::turn::{Transport, TurnRelay};

/// Binds every address `listen` stands for. With port 0 (tests), the first address picks a
/// free port and the others take the same one. An address this machine does not have (IPv6
/// turned off, say) is skipped with a warning while another one works; anything else, such as
/// a port already taken, stops start-up.
pub async fn bind(listen: &Listen) -> anyhow::Result<Vec<TcpListener>> {
    let addrs = listen.resolve().await.map_err(|err| {
        anyhow::anyhow!("cannot look up the host in listen = \"{listen}\": {err}")
    })?;
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(addrs.len());
    let mut skipped = Vec::new();
    for mut addr in addrs {
        if let Some(first) = listeners.first() {
            addr.set_port(first.local_addr()?.port());
        }
        match TcpListener::bind(addr).await {
            Ok(listener) => listeners.push(listener),
            Err(err) if err.kind() == io::ErrorKind::AddrNotAvailable => skipped.push((addr, err)),
            Err(err) => {
                let hint = if err.kind() == io::ErrorKind::AddrInUse {
                    "is another dialtone (or another server) running there?"
                } else if err.kind() == io::ErrorKind::PermissionDenied {
                    "ports below 1024 need root or CAP_NET_BIND_SERVICE"
                } else {
                    "check the address"
                };
                anyhow::bail!("cannot listen on {addr} (listen = \"{listen}\"): {err}: {hint}");
            }
        }
    }
    if listeners.is_empty() {
        let tried: Vec<String> = skipped
            .iter()
            .map(|(addr, err)| format!("{addr}: {err}"))
            .collect();
        anyhow::bail!(
            "cannot listen on any address of listen = \"{listen}\" ({})",
            tried.join("; ")
        );
    }
    for (addr, err) in skipped {
        warn!("not listening on {addr}, which {listen} also names: {err}");
    }
    Ok(listeners)
}

/// Serves until `shutdown` completes, then closes every WebSocket with 1001 and waits for open
/// connections to finish, at most the configured drain timeout. `tls` is `None` for plain
/// HTTP.
pub async fn run(
    listener: TcpListener,
    tls: Option<Certificates>,
    app: App,
    shutdown: impl Future<Output = ()>,
) {
    serve(vec![listener], tls, app, shutdown).await;
}

/// [`run`] on several listeners at once, all serving the same application.
pub async fn serve(
    listeners: Vec<TcpListener>,
    tls: Option<Certificates>,
    app: App,
    shutdown: impl Future<Output = ()>,
) {
    if let Some(tls) = &tls {
        app.serving(tls.clone());
    }
    let addresses: Vec<std::net::SocketAddr> = listeners
        .iter()
        .filter_map(|listener| listener.local_addr().ok())
        .collect();
    if let (Some(relay), Some(first)) = (app.turn_relay(), addresses.first()) {
        relay.on_web_port(first.port(), tls.clone(), app.behind_proxy());
    }
    app.listening_on(addresses);
    let limits = app.settings().limits.clone();
    let handshake_timeout = limits.tls_handshake_timeout();
    let first_bytes = limits.header_read_timeout();
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

    let mut next = 0;
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = accept_any(&listeners, &mut next) => match accepted {
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
                if let Some(relay) = app.turn_relay().filter(|r| r.serves(Transport::Tcp)) {
                    match tokio::time::timeout(first_bytes, first_byte(&tcp)).await {
                        Ok(Some(0x00 | 0x01)) => {
                            // Not an HTTP connection: the drain at shutdown does not wait for it.
                            drop(watcher);
                            return relay_in_the_clear(tcp, relay, peer, first_bytes).await;
                        }
                        Ok(Some(_)) => {}
                        _ => return debug!(%peer, "closed: nothing sent"),
                    }
                }
                let info = ConnInfo { peer, tls: false };
                let tcp = FirstBytes::new(tcp, first_bytes);
                return serve_http(&builder, watcher, tcp, app, info).await;
            };
            let first = tokio::select! {
                first = tokio::time::timeout(handshake_timeout, first_byte(&tcp)) => first,
                _ = stop.changed() => return,
            };
            match first {
                Ok(Some(TLS_HANDSHAKE)) => {}
                Ok(Some(byte)) if byte.is_ascii_uppercase() => {
                    drop(stop);
                    return redirect_plain_http(tcp, &app, peer, first_bytes, watcher).await;
                }
                // A STUN message's first byte (TURN over TCP on the page's port).
                Ok(Some(0x00 | 0x01))
                    if app
                        .turn_relay()
                        .is_some_and(|relay| relay.serves(Transport::Tcp)) =>
                {
                    drop((stop, watcher));
                    if let Some(relay) = app.turn_relay() {
                        relay_in_the_clear(tcp, relay, peer, first_bytes).await;
                    }
                    return;
                }
                Ok(_) => {
                    app.metrics().tls_handshake_failed();
                    return debug!(%peer, "closed: neither TLS nor HTTP");
                }
                Err(_) => {
                    app.metrics().tls_handshake_failed();
                    return debug!(%peer, "no TLS handshake within {handshake_timeout:?}");
                }
            }
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
            if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                // A CA checking a TLS-ALPN-01 challenge: the handshake was the answer.
                let mut stream = stream;
                let _ = tokio::time::timeout(first_bytes, stream.shutdown()).await;
                return debug!(%peer, "answered an ACME TLS-ALPN-01 check");
            }
            let mut stream = stream;
            let mut read = BytesMut::new();
            if let Some(relay) = app.turn_relay().filter(|r| r.serves(Transport::Tls)) {
                // The first message tells TURN from HTTP; the bytes read go on to either.
                match first_message(&mut stream, first_bytes).await {
                    Some(first) if crate::turn::stream::is_stun(&first) => {
                        drop(watcher);
                        let local = stream.get_ref().0.local_addr();
                        let Ok(local) = local else { return };
                        return relay
                            .serve_stream(Transport::Tls, stream, peer, local, first)
                            .await;
                    }
                    Some(first) => read = first,
                    None => return debug!(%peer, "no request within {first_bytes:?}"),
                }
            }
            let info = ConnInfo { peer, tls: true };
            let stream = FirstBytes::after(read, stream, first_bytes);
            serve_http(&builder, watcher, stream, app, info).await;
        });
    }

    drop(listeners);
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

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// Waits for one listener of several to accept, starting the search after the last one that
/// did so that a busy listener cannot starve the others.
async fn accept_any(
    listeners: &[TcpListener],
    next: &mut usize,
) -> io::Result<(TcpStream, std::net::SocketAddr)> {
    std::future::poll_fn(|cx| {
        for offset in 0..listeners.len() {
            let at = (*next + offset) % listeners.len();
            if let Poll::Ready(accepted) = listeners[at].poll_accept(cx) {
                *next = at + 1;
                return Poll::Ready(accepted);
            }
        }
        Poll::Pending
    })
    .await
}

/// The connection's first byte, left in the socket for whoever reads next; `None` when the
/// peer closed without sending one.
async fn first_byte(tcp: &TcpStream) -> Option<u8> {
    let mut byte = [0u8; 1];
    match tcp.peek(&mut byte).await {
        Ok(1) => Some(byte[0]),
        _ => None,
    }
}

/// At least the first 8 bytes of a connection (what tells STUN from HTTP), within `limit`;
/// `None` when the client closes or stays silent.
async fn first_message<I: AsyncRead + Unpin>(io: &mut I, limit: Duration) -> Option<BytesMut> {
    let mut read = BytesMut::with_capacity(2048);
    let enough = async {
        while read.len() < 8 {
            if io.read_buf(&mut read).await.ok()? == 0 {
                return None;
            }
        }
        Some(())
    };
    tokio::time::timeout(limit, enough).await.ok()??;
    Some(read)
}

/// A connection in the clear whose first byte may begin STUN: it goes to the relay when its
/// first 8 bytes do (TURN over TCP), and is closed otherwise (neither TLS nor HTTP).
async fn relay_in_the_clear(
    mut tcp: TcpStream,
    relay: &TurnRelay,
    peer: std::net::SocketAddr,
    limit: Duration,
) {
    let Ok(local) = tcp.local_addr() else { return };
    match first_message(&mut tcp, limit).await {
        Some(first) if crate::turn::stream::is_stun(&first) => {
            relay
                .serve_stream(Transport::Tcp, tcp, peer, local, first)
                .await;
        }
        _ => debug!(%peer, "closed: neither TLS, HTTP nor STUN"),
    }
}

/// Plain HTTP on the TLS port: one HTTP/1.1 request, answered with a redirect to the same host
/// and path on `https://`, then the connection is closed.
async fn redirect_plain_http(
    tcp: TcpStream,
    app: &App,
    peer: std::net::SocketAddr,
    header_timeout: Duration,
    watcher: Watcher,
) {
    let app = app.clone();
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(app.redirect_to_tls(&req)) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(false)
        .serve_connection(TokioIo::new(tcp), service);
    if let Err(err) = watcher.watch(connection).await {
        debug!(%peer, "plain HTTP on the TLS port: {err}");
    }
}

/// The bytes that tell HTTP/2 from HTTP/1 (the HTTP/2 preface is 24 bytes long). Until they
/// have been read, a read waits no longer than the deadline; after that hyper's own header
/// timeout (HTTP/1) takes over.
const VERSION_BYTES: usize = 24;

/// A connection whose first [`VERSION_BYTES`] must arrive before a deadline; bytes already
/// read from it (to tell TURN from HTTP) are read again first.
struct FirstBytes<I> {
    read: BytesMut,
    io: I,
    /// `None` once the first bytes have come.
    deadline: Option<Pin<Box<Sleep>>>,
    seen: usize,
}

impl<I> FirstBytes<I> {
    fn new(io: I, limit: Duration) -> FirstBytes<I> {
        FirstBytes::after(BytesMut::new(), io, limit)
    }

    /// `io` with `read`, its first bytes already read, put back in front.
    fn after(read: BytesMut, io: I, limit: Duration) -> FirstBytes<I> {
        FirstBytes {
            read,
            io,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
            seen: 0,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytes<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = if this.read.is_empty() {
            Pin::new(&mut this.io).poll_read(cx, buf)
        } else {
            let n = this.read.len().min(buf.remaining());
            buf.put_slice(&this.read[..n]);
            this.read.advance(n);
            Poll::Ready(Ok(()))
        };
        let Some(deadline) = &mut this.deadline else {
            return read;
        };
        match read {
            Poll::Ready(Ok(())) => {
                let got = buf.filled().len() - before;
                this.seen += got;
                if got == 0 || this.seen >= VERSION_BYTES {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request within the header timeout",
                )))
            }
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytes<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
