//! The server side of a TLS connection over rustls's unbuffered API, so that an idle
//! connection holds no buffers of its own.
//!
//! rustls's buffered `ServerConnection` (what tokio-rustls wraps) keeps a 4 KiB receive buffer
//! for the life of every connection, at a size private to rustls 0.23: a third of an idle WSS
//! connection's memory (issue 13). Here, reads and writes go through one scratch buffer per
//! thread, and a connection keeps bytes only while a record is half-received, its ciphertext
//! half-sent, or its plaintext half-read by the caller; each of those buffers is freed once
//! it is empty.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, InsufficientSizeError};
use rustls::{ServerConfig, unbuffered::UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

// (Sizes as literals: cargo-mutants' `18 + 1024` would only change how many reads or records
// the same bytes take, which no test can see.)
/// Room for one whole TLS record (2^14 bytes of plaintext plus the largest overhead) and then
/// some: one socket read fills at most this (18 KiB).
const SCRATCH: usize = 18_432;
/// The most plaintext encrypted per write: one full record (16 KiB).
const MAX_PLAINTEXT: usize = 16_384;
/// Ciphertext queued by the reading side (answers to the peer's key updates) beyond which
/// reading waits for the socket to take it: a peer that sends but never reads cannot grow it
/// (64 KiB).
const MAX_UNSENT: usize = 65_536;

thread_local! {
    /// Socket reads land here, and records are decrypted from here.
    static READ_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Writes are encrypted here, then handed to the socket.
    static WRITE_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// A TLS connection on `IO` after its handshake: plaintext in, plaintext out.
pub struct TlsStream<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// The start of a record (or of a handshake message) that has not fully arrived: the
    /// front of the next input rustls sees.
    partial: Vec<u8>,
    /// Ciphertext the socket has not taken yet, from `unsent_at` on.
    unsent: Vec<u8>,
    unsent_at: usize,
    /// Plaintext the caller has not read yet, from `plain_at` on.
    plain: Vec<u8>,
    plain_at: usize,
    /// The peer sent close_notify, or the socket ended.
    read_closed: bool,
    /// close_notify is queued.
    write_closed: bool,
    /// A read or write failed: rustls must not be called again (but for the alert it queued).
    broken: bool,
}

/// Runs the server handshake on `io`. Time it out from outside: a peer that stops
/// mid-handshake leaves this waiting.
pub async fn accept<IO>(io: IO, config: Arc<ServerConfig>) -> io::Result<TlsStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(invalid)?;
    let mut stream = TlsStream {
        io,
        conn,
        partial: Vec::new(),
        unsent: Vec::new(),
        unsent_at: 0,
        plain: Vec::new(),
        plain_at: 0,
        read_closed: false,
        write_closed: false,
        broken: false,
    };
    let handshake = poll_fn(|cx| stream.poll_handshake(cx)).await;
    if let Err(err) = handshake {
        // Tell the peer why (rustls queued an alert), if the socket takes it right away.
        stream.flush_alert();
        return Err(err);
    }
    Ok(stream)
}

impl<IO> TlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.poll_send_unsent(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection during the TLS handshake",
                )));
            }
            ready!(self.poll_receive(cx, None))?;
        }
    }

    /// One socket read, fed to rustls: decrypted bytes go to `out` while it has room, the rest
    /// to `self.plain`; what rustls answers goes to `self.unsent`.
    fn poll_receive(
        &mut self,
        cx: &mut Context<'_>,
        mut out: Option<&mut ReadBuf<'_>>,
    ) -> Poll<io::Result<()>> {
        READ_SCRATCH.with_borrow_mut(|scratch| {
            let kept = self.partial.len();
            let size = kept + SCRATCH;
            if scratch.len() < size {
                scratch.resize(size, 0);
            }
            scratch[..kept].copy_from_slice(&self.partial);
            let mut read = ReadBuf::new(&mut scratch[kept..size]);
            ready!(Pin::new(&mut self.io).poll_read(cx, &mut read))?;
            let got = read.filled().len();
            if got == 0 {
                self.read_closed = true;
                return Poll::Ready(Ok(()));
            }
            let input = &mut scratch[..kept + got];
            let used = self
                .absorb(input, &mut out)
                .inspect_err(|_| self.broken = true)?;
            self.partial.clear();
            if used < input.len() {
                self.partial.extend_from_slice(&input[used..]);
            } else {
                self.partial = Vec::new();
            }
            Poll::Ready(Ok(()))
        })
    }

    /// Feeds `input` to rustls until it needs more bytes; returns how many it consumed.
    fn absorb(
        &mut self,
        input: &mut [u8],
        out: &mut Option<&mut ReadBuf<'_>>,
    ) -> io::Result<usize> {
        let mut used = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut input[used..]);
            let more = match state.map_err(invalid)? {
                ConnectionState::ReadTraffic(mut traffic) => {
                    while let Some(record) = traffic.next_record() {
                        let record = record.map_err(invalid)?;
                        discard += record.discard;
                        deliver(record.payload, out, &mut self.plain);
                    }
                    true
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(&mut self.unsent, |buffer: &mut [u8]| encode.encode(buffer))?;
                    true
                }
                // The bytes are in `unsent`, ahead of anything encrypted later.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    true
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.read_closed = true;
                    false
                }
                ConnectionState::BlockedHandshake | ConnectionState::WriteTraffic(_) => false,
                // Early data is off (`max_early_data_size` 0); a state a later rustls adds is
                // not one this code knows how to honour.
                other => {
                    return Err(invalid(format!("unexpected TLS state {other:?}")));
                }
            };
            used += discard;
            if !more {
                return Ok(used);
            }
        }
    }

    /// Encrypts `data` (at most one record's worth) and hands it to the socket; whatever the
    /// socket does not take waits in `unsent`.
    fn write_record(&mut self, cx: &mut Context<'_>, data: &[u8]) -> io::Result<()> {
        WRITE_SCRATCH.with_borrow_mut(|scratch| {
            // The scratch keeps its length: rustls writes over old bytes, nothing is zeroed.
            let end = self
                .encrypt_into(Some(data), scratch, 0)
                .inspect_err(|_| self.broken = true)?;
            let sent = match Pin::new(&mut self.io).poll_write(cx, &scratch[..end]) {
                Poll::Ready(Ok(sent)) => sent,
                Poll::Ready(Err(err)) => return Err(err),
                Poll::Pending => 0,
            };
            self.unsent.extend_from_slice(&scratch[sent..end]);
            Ok(())
        })
    }

    /// Writes the record for `data` (or, with `None`, a close_notify) into `out` from `at` on,
    /// after any handshake message rustls has queued; returns where the bytes end. `out` is
    /// only ever lengthened.
    fn encrypt_into(
        &mut self,
        data: Option<&[u8]>,
        out: &mut Vec<u8>,
        mut at: usize,
    ) -> io::Result<usize> {
        let guess = data.map_or(64, |data| data.len() + 64);
        loop {
            // What rustls sees first must be what it left unconsumed last time.
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(&mut self.partial);
            let done = match state.map_err(invalid)? {
                ConnectionState::WriteTraffic(mut write) => {
                    at = fill(out, at, guess, |buffer: &mut [u8]| match data {
                        Some(data) => write.encrypt(data, buffer),
                        None => write.queue_close_notify(buffer),
                    })?;
                    true
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    at = fill(out, at, 64, |buffer: &mut [u8]| encode.encode(buffer))?;
                    false
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    false
                }
                ConnectionState::ReadTraffic(mut traffic) => {
                    // Records are drained as they are read; should one be left, keep it.
                    while let Some(record) = traffic.next_record() {
                        self.plain
                            .extend_from_slice(record.map_err(invalid)?.payload);
                    }
                    false
                }
                ConnectionState::PeerClosed => {
                    self.read_closed = true;
                    false
                }
                ConnectionState::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the TLS connection is closed",
                    ));
                }
                other => return Err(invalid(format!("cannot write in TLS state {other:?}"))),
            };
            self.partial.drain(..discard);
            if done {
                return Ok(at);
            }
        }
    }

    /// Hands `unsent` to the socket until it is empty.
    fn poll_send_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.unsent_at < self.unsent.len() {
            let sent =
                ready!(Pin::new(&mut self.io).poll_write(cx, &self.unsent[self.unsent_at..]))?;
            if sent == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.unsent_at += sent;
        }
        self.unsent = Vec::new();
        self.unsent_at = 0;
        Poll::Ready(Ok(()))
    }

    /// After an error, rustls's view of the input may not match ours any more, and feeding
    /// it more is not safe (it can panic): every call fails instead.
    fn check(&self) -> io::Result<()> {
        if self.broken {
            return Err(invalid("the TLS connection failed earlier"));
        }
        Ok(())
    }

    /// The alert rustls queued for a failed handshake, if the socket takes it now.
    fn flush_alert(&mut self) {
        // With something to send, rustls returns it before looking at the input at all.
        if !self.conn.wants_write() {
            return;
        }
        let status = self.conn.process_tls_records(&mut []);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = status.state {
            let _ = append(&mut self.unsent, |buffer: &mut [u8]| encode.encode(buffer));
        }
        let waker = std::task::Waker::noop();
        let _ = self.poll_send_unsent(&mut Context::from_waker(waker));
    }

    /// Serves `buf` from plaintext already decrypted; false when there is none.
    fn take_plain(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        if self.plain_at >= self.plain.len() {
            return false;
        }
        let n = buf.remaining().min(self.plain.len() - self.plain_at);
        buf.put_slice(&self.plain[self.plain_at..self.plain_at + n]);
        self.plain_at += n;
        if self.plain_at == self.plain.len() {
            self.plain = Vec::new();
            self.plain_at = 0;
        }
        true
    }
}

/// Copies `payload` into `out` as far as it has room, and the rest into `spill`.
fn deliver(payload: &[u8], out: &mut Option<&mut ReadBuf<'_>>, spill: &mut Vec<u8>) {
    let mut rest = payload;
    if spill.is_empty()
        && let Some(out) = out.as_deref_mut()
    {
        let n = out.remaining().min(rest.len());
        out.put_slice(&rest[..n]);
        rest = &rest[n..];
    }
    spill.extend_from_slice(rest);
}

/// Runs `write` on `out` from `at` on, lengthening `out` as rustls asks (never shortening
/// it); returns where the written bytes end.
fn fill<E>(
    out: &mut Vec<u8>,
    at: usize,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> io::Result<usize>
where
    E: Into<Room>,
{
    let mut room = guess;
    loop {
        if out.len() < at + room {
            out.resize(at + room, 0);
        }
        match write(&mut out[at..]).map_err(Into::into) {
            Ok(written) => return Ok(at + written),
            Err(Room::Needs(required)) => room = required,
            Err(Room::Failed(err)) => return Err(err),
        }
    }
}

/// Appends what `write` puts out (a handshake message) to the queue `out`; on an error, `out`
/// is as it was.
fn append<E>(out: &mut Vec<u8>, write: impl FnMut(&mut [u8]) -> Result<usize, E>) -> io::Result<()>
where
    E: Into<Room>,
{
    let at = out.len();
    let end = fill(out, at, 64, write);
    out.truncate(*end.as_ref().unwrap_or(&at));
    end.map(drop)
}

/// Why rustls could not write into a buffer: too small (by how much), or for good.
enum Room {
    Needs(usize),
    Failed(io::Error),
}

impl From<EncodeError> for Room {
    fn from(err: EncodeError) -> Room {
        match err {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Room::Needs(required_size)
            }
            other => Room::Failed(invalid(other)),
        }
    }
}

impl From<EncryptError> for Room {
    fn from(err: EncryptError) -> Room {
        match err {
            EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Room::Needs(required_size)
            }
            other => Room::Failed(invalid(other)),
        }
    }
}

fn invalid(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

impl<IO> AsyncRead for TlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.take_plain(buf) || this.read_closed {
                return Poll::Ready(Ok(()));
            }
            this.check()?;
            // Answers rustls owes the peer go out first; a peer that does not read them
            // stops being read.
            if let Poll::Ready(Err(err)) = this.poll_send_unsent(cx) {
                return Poll::Ready(Err(err));
            }
            if this.unsent.len() - this.unsent_at > MAX_UNSENT {
                return Poll::Pending;
            }
            let before = buf.filled().len();
            ready!(this.poll_receive(cx, Some(buf)))?;
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<IO> AsyncWrite for TlsStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // Ciphertext still waiting means the socket is full: take nothing more until it drains.
        ready!(this.poll_send_unsent(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let data = &buf[..buf.len().min(MAX_PLAINTEXT)];
        this.write_record(cx, data)?;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_unsent(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.check()?;
        if !this.write_closed {
            this.write_closed = true;
            let mut unsent = std::mem::take(&mut this.unsent);
            let at = unsent.len();
            let queued = this
                .encrypt_into(None, &mut unsent, at)
                .inspect_err(|_| this.broken = true);
            unsent.truncate(*queued.as_ref().unwrap_or(&at));
            this.unsent = unsent;
            queued?;
        }
        ready!(this.poll_send_unsent(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    struct Pair {
        server: TlsStream<TcpStream>,
        client: tokio_rustls::client::TlsStream<TcpStream>,
    }

    /// A server configuration with a fresh certificate for localhost, and a client
    /// configuration (limited to `versions`) that trusts only that certificate.
    fn configs(
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> (ServerConfig, rustls::ClientConfig) {
        let names = vec!["localhost".to_owned()];
        let (cert, key) = crate::tls::generate(&names, SystemTime::now()).unwrap();
        let cert = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let provider = crate::tls::provider();
        let server_config = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client_config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server_config, client_config)
    }

    /// A server stream and a rustls client that checks its certificate, over loopback TCP.
    async fn pair(tls12: bool) -> Pair {
        let version = if tls12 {
            &rustls::version::TLS12
        } else {
            &rustls::version::TLS13
        };
        let (server_config, client_config) = configs(&[version]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let (client, server) = tokio::join!(
            async {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let name = ServerName::try_from("localhost").unwrap();
                connector.connect(name, tcp).await.unwrap()
            },
            async {
                let (tcp, _) = listener.accept().await.unwrap();
                accept(tcp, Arc::new(server_config)).await.unwrap()
            }
        );
        Pair { server, client }
    }

    /// Bytes that show where they were cut: a counter, not a repeated pattern.
    fn message(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
            .collect()
    }

    /// Echoes everything back, reading `chunk` bytes at a time, until the client closes.
    async fn echo(mut server: TlsStream<TcpStream>, chunk: usize) -> TlsStream<TcpStream> {
        let mut buf = vec![0u8; chunk];
        loop {
            let n = server.read(&mut buf).await.unwrap();
            if n == 0 {
                return server;
            }
            server.write_all(&buf[..n]).await.unwrap();
            server.flush().await.unwrap();
        }
    }

    async fn round_trip(pair: Pair, chunk: usize, sizes: &[usize]) {
        let Pair { server, mut client } = pair;
        let echoing = tokio::spawn(echo(server, chunk));
        for (i, &len) in sizes.iter().enumerate() {
            let sent = message(len, i as u32);
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            let mut back = vec![0u8; len];
            tokio::time::timeout(WAIT, client.read_exact(&mut back))
                .await
                .expect("no echo within 10 s")
                .unwrap();
            assert!(
                back == sent,
                "{len} bytes came back changed (reads of {chunk})"
            );
        }
        client.shutdown().await.unwrap();
        let server = tokio::time::timeout(WAIT, echoing).await.unwrap().unwrap();
        // The server saw close_notify: it read a clean end, not an error.
        assert!(server.read_closed);
    }

    #[tokio::test]
    async fn what_goes_in_comes_back_whatever_the_read_and_record_sizes() {
        // From one byte to several full records, read one byte, a few, or plenty at a time:
        // records split across reads, several records in one read, plaintext left over.
        let sizes = [1, 5, 300, 3_000, 16_384, 16_385, 70_000, 2];
        for chunk in [1, 7, 512, 65_536] {
            round_trip(pair(false).await, chunk, &sizes).await;
        }
        round_trip(pair(true).await, 512, &sizes).await;
    }

    #[tokio::test]
    async fn the_client_renewing_its_keys_changes_nothing_it_sees() {
        let Pair { server, mut client } = pair(false).await;
        let echoing = tokio::spawn(echo(server, 512));
        for i in 0..5 {
            // A TLS 1.3 key update that asks the server to update its own keys too.
            client.get_mut().1.refresh_traffic_keys().unwrap();
            let sent = message(2_000, i);
            client.write_all(&sent).await.unwrap();
            client.flush().await.unwrap();
            let mut back = vec![0u8; sent.len()];
            tokio::time::timeout(WAIT, client.read_exact(&mut back))
                .await
                .expect("no echo after a key update")
                .unwrap();
            assert!(back == sent);
        }
        client.shutdown().await.unwrap();
        tokio::time::timeout(WAIT, echoing).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_server_shutdown_is_a_clean_end_for_the_client() {
        let Pair {
            mut server,
            mut client,
        } = pair(false).await;
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        let mut got = Vec::new();
        // tokio-rustls reports a missing close_notify as an error: this must read cleanly.
        tokio::time::timeout(WAIT, client.read_to_end(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, b"bye");
        assert!(server.write_all(b"more").await.is_err());
    }

    #[tokio::test]
    async fn after_a_corrupt_record_every_call_fails_at_once() {
        let Pair {
            mut server,
            mut client,
        } = pair(false).await;
        // An application-data record that was not sealed with the session's keys.
        let mut forged = vec![23, 3, 3, 0, 32];
        forged.extend_from_slice(&[0x5a; 32]);
        client.get_mut().0.write_all(&forged).await.unwrap();
        let mut buf = [0u8; 64];
        let first = tokio::time::timeout(WAIT, server.read(&mut buf))
            .await
            .expect("the forged record was not read");
        assert!(first.is_err(), "a forged record was accepted: {first:?}");
        // rustls is not asked again: no wait for more input, no data, an error.
        let again = tokio::time::timeout(WAIT, server.read(&mut buf))
            .await
            .expect("a read after the error waited for input");
        assert!(again.is_err());
        assert!(server.write_all(b"more").await.is_err());
    }

    #[tokio::test]
    async fn an_idle_connection_keeps_no_buffers() {
        let Pair {
            mut server,
            mut client,
        } = pair(false).await;
        // A record cut in two: the first half waits in the connection, and is freed after.
        client.write_all(&message(3_000, 1)).await.unwrap();
        client.flush().await.unwrap();
        let mut got = vec![0u8; 3_000];
        tokio::time::timeout(WAIT, server.read_exact(&mut got[..100]))
            .await
            .unwrap()
            .unwrap();
        assert!(
            server.plain.capacity() > 0,
            "the rest of the record is kept"
        );
        server.read_exact(&mut got[100..]).await.unwrap();
        assert_eq!(got, message(3_000, 1));
        server.write_all(&message(20_000, 2)).await.unwrap();
        server.flush().await.unwrap();
        let mut back = vec![0u8; 20_000];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(
            (
                server.partial.capacity(),
                server.unsent.capacity(),
                server.plain.capacity()
            ),
            (0, 0, 0)
        );
    }

    /// A socket that takes one byte per write: every record reaches the server in pieces.
    struct Trickle(TcpStream);

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let one = &buf[..buf.len().min(1)];
            let sent = ready!(Pin::new(&mut self.0).poll_write(cx, one))?;
            // Give the server a chance to read this byte on its own.
            std::thread::sleep(Duration::from_micros(50));
            Poll::Ready(Ok(sent))
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handshake_and_records_that_arrive_a_byte_at_a_time_still_work() {
        let (config, client_config) = configs(rustls::DEFAULT_VERSIONS);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut server = accept(tcp, Arc::new(config)).await.unwrap();
            let mut got = vec![0u8; 1_000];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(&got).await.unwrap();
            server.flush().await.unwrap();
            server
        });
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let tcp = Trickle(TcpStream::connect(addr).await.unwrap());
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = tokio::time::timeout(WAIT, connector.connect(name, tcp))
            .await
            .unwrap()
            .unwrap();
        let sent = message(1_000, 9);
        client.write_all(&sent).await.unwrap();
        client.flush().await.unwrap();
        let mut back = vec![0u8; 1_000];
        tokio::time::timeout(WAIT, client.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert!(back == sent);
        let server = server.await.unwrap();
        assert_eq!(server.partial.capacity(), 0);
    }

    #[tokio::test]
    async fn garbage_instead_of_a_handshake_is_an_error_and_an_alert() {
        let (config, _) = configs(rustls::DEFAULT_VERSIONS);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut peer = TcpStream::connect(addr).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        // A handshake record holding an empty ClientHello.
        peer.write_all(&[0x16, 3, 1, 0, 4, 1, 0, 0, 0])
            .await
            .unwrap();
        let err = tokio::time::timeout(WAIT, accept(tcp, Arc::new(config)))
            .await
            .unwrap()
            .err()
            .expect("garbage passed for a handshake");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let mut alert = Vec::new();
        tokio::time::timeout(WAIT, peer.read_to_end(&mut alert))
            .await
            .unwrap()
            .unwrap();
        // An alert record (content type 21).
        assert_eq!(alert.first(), Some(&21), "no alert: {alert:?} after {err}");
    }
}
