//! One allocation's relay socket as the turn crate sees it: it sends only where the peer
//! policy allows, whatever permission the crate holds, and counts what it relays. Once the
//! crate has bound a channel, a peer's datagrams on it go straight back to the client from
//! here, on the UDP socket or into the connection's queue (`channels.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use async_trait::async_trait;
use tokio::net::UdpSocket;
use webrtc_util::Conn;

use super::channels::{Route, frame_channel_data};
use super::policy;
use super::{State, Transport};

/// The most a relay socket takes of one datagram: the crate's buffer (its `RTP_MTU`).
const DATAGRAM: usize = 1500;

/// One allocation's relay socket.
pub struct RelaySocket {
    socket: UdpSocket,
    /// Its local address, asked once (the crate asks on every packet it relays).
    local: SocketAddr,
    state: Arc<State>,
    /// How the allocation's client reaches the relay, for the counters.
    transport: Transport,
    /// The way back to the client, once its Allocate succeeded (see `channels.rs`).
    route: OnceLock<Route>,
    /// Set when the crate closes the allocation: the shortcut stops at once.
    closed: AtomicBool,
}

impl RelaySocket {
    pub(crate) fn new(
        socket: UdpSocket,
        state: Arc<State>,
        transport: Transport,
    ) -> std::io::Result<RelaySocket> {
        Ok(RelaySocket {
            local: socket.local_addr()?,
            socket,
            state,
            transport,
            route: OnceLock::new(),
            closed: AtomicBool::new(false),
        })
    }

    /// The allocation's client is known: the shortcut may use this way back to it.
    pub(crate) fn set_route(&self, route: Route) {
        let _ = self.route.set(route);
    }

    /// The way back to the client, while the allocation is open.
    pub(crate) fn route(&self) -> Option<&Route> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        self.route.get()
    }

    /// To a peer: only where the policy allows, whatever permission the crate holds. (Also
    /// called by the shortcut directly, without the trait's boxed future.)
    pub(crate) async fn relay_to(&self, buf: &[u8], target: SocketAddr) -> std::io::Result<usize> {
        if policy::check(self.state.peers, target.ip(), &self.state.own).is_err() {
            self.state
                .counters(self.transport)
                .peers_denied
                .fetch_add(1, Ordering::Relaxed);
            return Err(std::io::Error::other(format!("peer {target} denied")));
        }
        let n = self.socket.send_to(buf, target).await?;
        self.count(n);
        Ok(n)
    }

    /// A client's ChannelData `data` on a bound channel, sent to `peer` (as `relay_to`) and
    /// counted as relayed on a channel.
    pub(crate) async fn relay_on_channel(&self, data: &[u8], peer: SocketAddr) {
        if self.relay_to(data, peer).await.is_ok() {
            self.count_channel();
        }
    }

    fn count_channel(&self) {
        self.state
            .counters(self.transport)
            .channel_packets
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A peer's datagram of `length` bytes, in `frame[4..]`, relayed as ChannelData when a
    /// channel is bound to that peer; false when the crate must take it.
    async fn shortcut(&self, frame: &mut [u8], length: usize, peer: SocketAddr) -> bool {
        let Some(route) = self.route() else {
            return false;
        };
        let Some(number) = route.number(peer, Instant::now()) else {
            return false;
        };
        let whole = frame_channel_data(frame, number, length);
        route.deliver(&frame[..whole]).await;
        self.count_channel();
        true
    }

    fn count(&self, bytes: usize) {
        let counters = self.state.counters(self.transport);
        counters.packets_relayed.fetch_add(1, Ordering::Relaxed);
        counters
            .bytes_relayed
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

#[async_trait]
impl Conn for RelaySocket {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        let n = self.socket.recv(buf).await?;
        self.count(n);
        Ok(n)
    }

    /// From a peer, on its way to the client: on a bound channel sent on from here, else
    /// handed to the crate (which checks the permission).
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        // Room for the ChannelData header in front and its padding behind.
        let mut frame = [0u8; 4 + DATAGRAM + 3];
        let most = buf.len().min(DATAGRAM);
        loop {
            let (n, peer) = self.socket.recv_from(&mut frame[4..4 + most]).await?;
            self.count(n);
            if !self.shortcut(&mut frame, n, peer).await {
                buf[..n].copy_from_slice(&frame[4..4 + n]);
                return Ok((n, peer));
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    /// To a peer: only where the policy allows, whatever permission the crate holds.
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        self.relay_to(buf, target)
            .await
            .map_err(|err| webrtc_util::Error::Other(err.to_string()))
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.local)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// The crate closes the allocation (its socket goes when the crate drops it).
    async fn close(&self) -> webrtc_util::Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

impl Drop for RelaySocket {
    /// Out of the registry of relay sockets (`State::relays`), unless its port is in use again.
    fn drop(&mut self) {
        let mut relays = crate::sync::lock(&self.state.relays);
        let port = self.local.port();
        if relays
            .get(&port)
            .is_some_and(|relay| relay.strong_count() == 0)
        {
            relays.remove(&port);
        }
    }
}
