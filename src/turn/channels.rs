//! The data path's shortcut. Once the crate has bound a channel (its ChannelBind success
//! passes on its way out to the client), ChannelData on that channel is relayed here, both
//! ways, without a trip through the crate: a client's goes straight out of its allocation's
//! relay socket (the UDP [`super::guard::Guard`], or a stream engine), a peer's straight
//! back to the client with the 4-byte header written in front
//! ([`super::socket::RelaySocket`]), on the UDP socket or into the connection's queue.
//!
//! Why: per packet the crate's path copies the data three times, builds a request (with a
//! copy of the realm), asks the socket for its own address (a system call) and takes two
//! async locks; this one copies nothing over UDP and takes one short lock.
//!
//! The crate stays the one that decides. The shortcut knows only channels the crate said it
//! bound, forgets each one a little before the crate's own timer would, and stops with the
//! allocation (the crate closes its relay socket). Everything else (Send and Data
//! indications, a channel not known here, requests) goes through the crate as before; the
//! peer policy is checked by the relay socket on every send either way.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use stun::attributes::{
    ATTR_CHANNEL_NUMBER, ATTR_XOR_PEER_ADDRESS, ATTR_XOR_RELAYED_ADDRESS, AttrType,
};
use stun::message::Message;
use tokio::net::UdpSocket;
use turn::proto::lifetime::DEFAULT_LIFETIME;

use super::socket::RelaySocket;
use super::stream::Connection;
use super::stun::{decode, xor_address};
use super::{Client, State};

/// How long before the crate's timer a binding is forgotten here: the crate starts its timer
/// before its answer passes the guard, so this side must end first.
const MARGIN: Duration = Duration::from_secs(5);
/// ChannelBind requests awaiting the crate's answer, at most (past this they are forgotten:
/// those channels then go through the crate until bound again).
const PENDING_BINDS: usize = 1024;

/// Channel numbers the crate accepts (RFC 8656 §12: 0x4000 through 0x7FFF in its reading).
const CHANNEL_NUMBERS: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;

/// One allocation's way back to its client, and the channels bound on it.
pub(crate) struct Route {
    client: SocketAddr,
    out: Out,
    channels: Mutex<Channels>,
}

/// How a route reaches its client.
pub(crate) enum Out {
    /// The listening UDP socket the client sends to.
    Datagram(Arc<UdpSocket>),
    /// The client's TCP or TLS connection (its queue), while it lasts.
    Stream(Weak<Connection>),
}

#[derive(Default)]
struct Channels {
    /// Number → its peer, and until when it may be used here.
    peers: HashMap<u16, (SocketAddr, Instant)>,
    /// Peer → its number (the crate binds each peer to one number at a time).
    numbers: HashMap<SocketAddr, u16>,
}

impl Route {
    pub(crate) fn new(client: SocketAddr, out: Out) -> Route {
        Route {
            client,
            out,
            channels: Mutex::default(),
        }
    }

    /// Sends a whole ChannelData message to the client. As in the crate, a failed send is
    /// the client's loss, not the allocation's end.
    pub(crate) async fn deliver(&self, frame: &[u8]) {
        match &self.out {
            Out::Datagram(socket) => {
                let _ = socket.send_to(frame, self.client).await;
            }
            Out::Stream(connection) => {
                if let Some(connection) = connection.upgrade() {
                    connection.enqueue(frame.to_vec());
                }
            }
        }
    }

    /// The crate bound `number` to `peer`, or refreshed that binding, just before `now`.
    pub(crate) fn bound(&self, number: u16, peer: SocketAddr, now: Instant) {
        let until = now + DEFAULT_LIFETIME.saturating_sub(MARGIN);
        let mut channels = crate::sync::lock(&self.channels);
        let Channels { peers, numbers } = &mut *channels;
        // Expired ones go (the crate may since have let their number or peer be bound anew).
        peers.retain(|_, (_, end)| *end > now);
        numbers.retain(|_, n| peers.contains_key(n));
        if let Some((old, _)) = peers.insert(number, (peer, until))
            && old != peer
        {
            numbers.remove(&old);
        }
        if let Some(old) = numbers.insert(peer, number)
            && old != number
        {
            peers.remove(&old);
        }
    }

    /// Where ChannelData on `number` goes, while its binding holds.
    pub(crate) fn peer(&self, number: u16, now: Instant) -> Option<SocketAddr> {
        let channels = crate::sync::lock(&self.channels);
        let (peer, until) = channels.peers.get(&number)?;
        (*until > now).then_some(*peer)
    }

    /// The channel a datagram from `peer` goes back to the client on, while it holds.
    pub(crate) fn number(&self, peer: SocketAddr, now: Instant) -> Option<u16> {
        let channels = crate::sync::lock(&self.channels);
        let number = *channels.numbers.get(&peer)?;
        let (_, until) = channels.peers.get(&number)?;
        (*until > now).then_some(number)
    }
}

/// A datagram's channel number and data when it is ChannelData the crate would take: a
/// valid number, and a length within the datagram (over UDP, padding may follow it).
pub(crate) fn channel_data(datagram: &[u8]) -> Option<(u16, &[u8])> {
    let header = datagram.get(..4)?;
    let number = u16::from_be_bytes([header[0], header[1]]);
    if !CHANNEL_NUMBERS.contains(&number) {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([header[2], header[3]]));
    datagram.get(4..4 + length).map(|data| (number, data))
}

/// Writes the ChannelData header for `length` bytes of data on `number` into `frame[..4]`,
/// pads the data to a multiple of 4 as the crate does, and says how long the whole is.
pub(crate) fn frame_channel_data(frame: &mut [u8], number: u16, length: usize) -> usize {
    frame[..2].copy_from_slice(&number.to_be_bytes());
    frame[2..4].copy_from_slice(&(length as u16).to_be_bytes());
    let end = 4 + length;
    let padded = end.next_multiple_of(4).min(frame.len());
    frame[end..padded].fill(0);
    padded
}

/// One transport's shortcuts: each client's allocation's relay socket, and the ChannelBind
/// requests on their way to the crate. Fed by what the client sends the crate (`requested`)
/// and what the crate answers (`answered`).
pub(crate) struct Shortcuts {
    state: Arc<State>,
    relays: Mutex<HashMap<Client, Weak<RelaySocket>>>,
    binds: PendingBinds,
}

impl Shortcuts {
    pub(crate) fn new(state: Arc<State>) -> Shortcuts {
        Shortcuts {
            state,
            relays: Mutex::default(),
            binds: PendingBinds::default(),
        }
    }

    /// Where `client`'s ChannelData on `number` goes by the shortcut: its allocation's relay
    /// socket and the peer bound to that number, while both hold.
    pub(crate) fn route(
        &self,
        client: Client,
        number: u16,
    ) -> Option<(Arc<RelaySocket>, SocketAddr)> {
        let mut relays = crate::sync::lock(&self.relays);
        let relay = relays.get(&client)?.upgrade();
        let Some(relay) = relay.filter(|relay| relay.route().is_some()) else {
            relays.remove(&client);
            return None;
        };
        drop(relays);
        let peer = relay.route()?.peer(number, Instant::now())?;
        Some((relay, peer))
    }

    /// A request of `client`'s the crate is about to see: a ChannelBind is kept until the
    /// crate's answer says whether it holds.
    pub(crate) fn requested(&self, request: &[u8], client: Client) {
        if request.get(..2) != Some(&[0x00, 0x09]) {
            return;
        }
        let Some(message) = decode(request) else {
            return;
        };
        let number = attribute(&message, ATTR_CHANNEL_NUMBER)
            .and_then(|value| value.get(..2).map(|n| u16::from_be_bytes([n[0], n[1]])));
        let peer = attribute(&message, ATTR_XOR_PEER_ADDRESS)
            .and_then(|value| xor_address(value, &message.transaction_id.0));
        if let (Some(number), Some(peer)) = (number, peer) {
            let bind = Bind {
                client,
                number,
                peer,
            };
            self.binds.requested(message.transaction_id.0, bind);
        }
    }

    /// What the crate answers `client`: the relay socket its Allocate got (whose way back is
    /// `out`), and the channels it bound.
    pub(crate) fn answered(&self, response: &[u8], client: Client, out: impl FnOnce() -> Out) {
        let transaction = response.get(8..20).unwrap_or_default();
        match response.get(..2) {
            // Allocate success: the relayed address names the relay socket (by its port).
            Some([0x01, 0x03]) => {
                let Some(message) = decode(response) else {
                    return;
                };
                let Some(relayed) = attribute(&message, ATTR_XOR_RELAYED_ADDRESS)
                    .and_then(|value| xor_address(value, &message.transaction_id.0))
                else {
                    return;
                };
                let relay = crate::sync::lock(&self.state.relays)
                    .get(&relayed.port())
                    .and_then(Weak::upgrade);
                let Some(relay) = relay else {
                    return;
                };
                relay.set_route(Route::new(client.addr, out()));
                let mut relays = crate::sync::lock(&self.relays);
                if relays.len() >= self.state.max_allocations {
                    relays.retain(|_, relay| relay.upgrade().is_some_and(|r| r.route().is_some()));
                }
                relays.insert(client, Arc::downgrade(&relay));
            }
            // ChannelBind success: the crate bound the pending request's number and peer.
            Some([0x01, 0x09]) => {
                let bound = self.binds.answered(transaction, client, true);
                let relay = crate::sync::lock(&self.relays)
                    .get(&client)
                    .and_then(Weak::upgrade);
                if let (Some(bind), Some(relay)) = (bound, relay)
                    && let Some(route) = relay.route()
                {
                    route.bound(bind.number, bind.peer, Instant::now());
                }
            }
            // ChannelBind error: nothing was bound.
            Some([0x01, 0x19]) => {
                self.binds.answered(transaction, client, false);
            }
            _ => {}
        }
    }
}

/// The value of `message`'s first attribute of type `typ`.
fn attribute(message: &Message, typ: AttrType) -> Option<&[u8]> {
    message
        .attributes
        .0
        .iter()
        .find(|attr| attr.typ == typ)
        .map(|attr| attr.value.as_slice())
}

/// ChannelBind requests passed to the crate, by transaction id, until it answers.
#[derive(Default)]
pub(crate) struct PendingBinds(Mutex<HashMap<[u8; 12], Bind>>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bind {
    pub(crate) client: Client,
    pub(crate) number: u16,
    pub(crate) peer: SocketAddr,
}

impl PendingBinds {
    /// Notes a ChannelBind request of `client`'s that goes to the crate.
    pub(crate) fn requested(&self, transaction: [u8; 12], bind: Bind) {
        let mut pending = crate::sync::lock(&self.0);
        if pending.len() >= PENDING_BINDS {
            pending.clear();
        }
        pending.insert(transaction, bind);
    }

    /// The crate's answer to `client` for `transaction`: the binding it made, if it
    /// succeeded; either way the request is no longer pending.
    pub(crate) fn answered(
        &self,
        transaction: &[u8],
        client: Client,
        success: bool,
    ) -> Option<Bind> {
        let key: [u8; 12] = transaction.try_into().ok()?;
        let mut pending = crate::sync::lock(&self.0);
        let bind = pending.get(&key).filter(|bind| bind.client == client)?;
        let bind = *bind;
        pending.remove(&key);
        success.then_some(bind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    async fn route() -> Route {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        Route::new(addr("192.0.2.1:5000"), Out::Datagram(Arc::new(socket)))
    }

    fn client(text: &str) -> Client {
        Client {
            addr: addr(text),
            local: addr("10.0.0.1:3478"),
            transport: super::super::Transport::Udp,
        }
    }

    #[tokio::test]
    async fn a_binding_holds_until_a_little_before_the_crates_expiry_and_a_refresh_extends_it() {
        let route = route().await;
        let now = Instant::now();
        let peer = addr("198.51.100.7:40000");
        assert_eq!(route.peer(0x4000, now), None, "nothing before a bind");
        route.bound(0x4000, peer, now);
        assert_eq!(route.peer(0x4000, now), Some(peer));
        assert_eq!(route.number(peer, now), Some(0x4000));
        assert_eq!(route.peer(0x4001, now), None);
        assert_eq!(route.number(addr("198.51.100.7:40001"), now), None);
        let end = now + DEFAULT_LIFETIME - MARGIN;
        let just_before = end - Duration::from_millis(1);
        assert_eq!(route.peer(0x4000, just_before), Some(peer));
        assert_eq!(route.number(peer, just_before), Some(0x4000));
        assert_eq!(
            route.peer(0x4000, end),
            None,
            "forgotten before the crate forgets it"
        );
        assert_eq!(route.number(peer, end), None);
        let later = now + Duration::from_secs(300);
        route.bound(0x4000, peer, later);
        assert_eq!(route.peer(0x4000, end), Some(peer), "a refresh extends it");
    }

    #[tokio::test]
    async fn a_number_or_a_peer_bound_anew_after_expiry_leaves_nothing_of_the_old_binding() {
        let route = route().await;
        let now = Instant::now();
        let (first, second) = (addr("198.51.100.7:40000"), addr("198.51.100.8:40000"));
        route.bound(0x4000, first, now);
        let expired = now + DEFAULT_LIFETIME;
        // The number again, to another peer: the first peer no longer maps to it.
        route.bound(0x4000, second, expired);
        assert_eq!(route.peer(0x4000, expired), Some(second));
        assert_eq!(route.number(first, expired), None);
        assert_eq!(route.number(second, expired), Some(0x4000));
        // The peer again, on another number: the old number no longer leads to it.
        let later = expired + DEFAULT_LIFETIME;
        route.bound(0x4001, second, later);
        assert_eq!(route.peer(0x4000, later), None);
        assert_eq!(route.peer(0x4001, later), Some(second));
        assert_eq!(route.number(second, later), Some(0x4001));
    }

    #[tokio::test]
    async fn several_channels_hold_side_by_side_and_expired_ones_are_dropped_at_the_next_bind() {
        let route = route().await;
        let now = Instant::now();
        let (first, second) = (addr("198.51.100.7:40000"), addr("198.51.100.8:40000"));
        route.bound(0x4000, first, now);
        let later = now + Duration::from_secs(1);
        route.bound(0x4001, second, later);
        assert_eq!(
            route.peer(0x4000, later),
            Some(first),
            "the first still holds"
        );
        assert_eq!(route.peer(0x4001, later), Some(second));
        assert_eq!(route.number(first, later), Some(0x4000));
        // At the first one's end, a bind of a third channel drops it from the maps.
        let end = now + DEFAULT_LIFETIME - MARGIN;
        route.bound(0x4002, addr("198.51.100.9:40000"), end);
        let channels = crate::sync::lock(&route.channels);
        assert!(!channels.peers.contains_key(&0x4000), "expired: dropped");
        assert!(!channels.numbers.contains_key(&first));
        assert_eq!(channels.peers.len(), 2);
    }

    #[tokio::test]
    async fn a_number_or_a_peer_bound_anew_while_the_old_binding_holds_replaces_it_whole() {
        // The crate refuses both while the old binding holds; should it ever allow one, no
        // datagram may go out on a channel that now belongs to another peer.
        let route = route().await;
        let now = Instant::now();
        let (first, second) = (addr("198.51.100.7:40000"), addr("198.51.100.8:40000"));
        route.bound(0x4000, first, now);
        route.bound(0x4000, second, now);
        assert_eq!(
            route.number(first, now),
            None,
            "the old peer lost the number"
        );
        assert_eq!(route.peer(0x4000, now), Some(second));
        route.bound(0x4001, second, now);
        assert_eq!(
            route.peer(0x4000, now),
            None,
            "the old number lost the peer"
        );
        assert_eq!(route.number(second, now), Some(0x4001));
    }

    #[test]
    fn channel_data_is_what_the_crate_would_decode() {
        assert_eq!(
            channel_data(&[0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0]),
            Some((0x4000, &[1u8, 2, 3][..])),
            "padding after the data is allowed"
        );
        assert_eq!(
            channel_data(&[0x7F, 0xFF, 0x00, 0x00]),
            Some((0x7FFF, &[][..]))
        );
        assert_eq!(
            channel_data(&[0x40, 0x00, 0x00, 0x04, 1, 2, 3]),
            None,
            "too short"
        );
        assert_eq!(
            channel_data(&[0x3F, 0xFF, 0x00, 0x00]),
            None,
            "below the range"
        );
        assert_eq!(
            channel_data(&[0x80, 0x00, 0x00, 0x00]),
            None,
            "above the range"
        );
        assert_eq!(channel_data(&[0x40, 0x00, 0x00]), None, "no whole header");
    }

    #[test]
    fn a_frame_has_the_header_and_is_padded_to_four_like_the_crates() {
        let mut frame = [0xAAu8; 16];
        frame[4..7].copy_from_slice(&[1, 2, 3]);
        assert_eq!(frame_channel_data(&mut frame, 0x4001, 3), 8);
        assert_eq!(&frame[..8], &[0x40, 0x01, 0x00, 0x03, 1, 2, 3, 0]);
        let mut exact = [0u8; 8];
        assert_eq!(frame_channel_data(&mut exact, 0x4000, 4), 8);
        let mut crates = turn::proto::chandata::ChannelData {
            data: vec![9; 5],
            number: turn::proto::channum::ChannelNumber(0x4002),
            raw: vec![],
        };
        crates.encode();
        let mut ours = [0xFFu8; 12];
        ours[4..9].copy_from_slice(&[9; 5]);
        let length = frame_channel_data(&mut ours, 0x4002, 5);
        assert_eq!(&ours[..length], &crates.raw[..]);
    }

    #[test]
    fn a_bind_is_made_only_by_its_own_clients_success_and_answered_once() {
        let binds = PendingBinds::default();
        let own = client("192.0.2.1:5000");
        let bind = Bind {
            client: own,
            number: 0x4000,
            peer: addr("198.51.100.7:40000"),
        };
        binds.requested([1; 12], bind);
        binds.requested([2; 12], bind);
        assert_eq!(
            binds.answered(&[1; 12], client("192.0.2.2:5000"), true),
            None,
            "another client"
        );
        assert_eq!(binds.answered(&[1; 12], own, true), Some(bind));
        assert_eq!(binds.answered(&[1; 12], own, true), None, "answered once");
        assert_eq!(
            binds.answered(&[2; 12], own, false),
            None,
            "an error binds nothing"
        );
        assert_eq!(binds.answered(&[2; 12], own, true), None, "and ends it");
        assert_eq!(binds.answered(&[3; 11], own, true), None, "a short id");
    }

    #[test]
    fn pending_binds_are_bounded() {
        let binds = PendingBinds::default();
        let bind = Bind {
            client: client("192.0.2.1:5000"),
            number: 0x4000,
            peer: addr("198.51.100.7:40000"),
        };
        for i in 0..=PENDING_BINDS as u32 {
            let mut id = [0u8; 12];
            id[..4].copy_from_slice(&i.to_be_bytes());
            binds.requested(id, bind);
        }
        assert_eq!(crate::sync::lock(&binds.0).len(), 1);
    }
}
