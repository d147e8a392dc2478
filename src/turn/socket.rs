//! One allocation's relay socket as the turn crate sees it: it sends only where the peer
//! policy allows, whatever permission the crate holds, and counts what it relays.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use tokio::net::UdpSocket;
use webrtc_util::Conn;

use super::policy;
use super::{State, Transport};

/// One allocation's relay socket.
pub struct RelaySocket {
    socket: UdpSocket,
    state: Arc<State>,
    /// How the allocation's client reaches the relay, for the counters.
    transport: Transport,
}

impl RelaySocket {
    pub(crate) fn new(socket: UdpSocket, state: Arc<State>, transport: Transport) -> RelaySocket {
        RelaySocket {
            socket,
            state,
            transport,
        }
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

    /// From a peer, on its way to the client (the crate checks the permission).
    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        let (n, peer) = self.socket.recv_from(buf).await?;
        self.count(n);
        Ok((n, peer))
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    /// To a peer: only where the policy allows, whatever permission the crate holds.
    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if policy::check(self.state.peers, target.ip(), &self.state.own).is_err() {
            self.state
                .counters(self.transport)
                .peers_denied
                .fetch_add(1, Ordering::Relaxed);
            return Err(webrtc_util::Error::Other(format!("peer {target} denied")));
        }
        let n = self.socket.send_to(buf, target).await?;
        self.count(n);
        Ok(n)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
