//! Delivery to the sockets of this process, written once for both engines.
//!
//! Each engine keeps its own state (one map in memory; a copy of Redis's records in a
//! cluster), but both end in the same place: a [`Seat`] per logged-in user, holding the way
//! into that user's socket. Rebinding a user to another socket, broadcasting, holding frames
//! back until a login is answered, and telling a partner that the other side went are done
//! here, so the two engines cannot drift apart in who receives what, and in what order.

use hyper_tungstenite::tungstenite::Message;

use super::queue::{Outbox, Queued, Receiver};
use crate::signaling::protocol::{CloseReason, ServerMessage};

/// A logged-in user's place in this process: the queue of the socket that serves them now.
#[derive(Debug)]
pub(super) struct Seat {
    outbox: Outbox,
    /// `Some` while the login is still being decided (a claim in flight to Redis): frames
    /// for the user wait here, so the login reply is the first thing the client reads.
    held: Option<Vec<Message>>,
    /// In grace: nobody reads the queue now, so it gets only what the partner sends (no
    /// broadcasts).
    away: bool,
    /// The engine took the name away (another instance holds it now): the session is told
    /// to end, and nothing more is delivered as if it were still the user's.
    evicted: bool,
}

impl Seat {
    /// A user whose login is already answered.
    pub(super) fn new(outbox: Outbox) -> Seat {
        Seat {
            outbox,
            held: None,
            away: false,
            evicted: false,
        }
    }

    /// A user whose login is still being decided: frames wait until [`Seat::seated`].
    pub(super) fn claiming(outbox: Outbox) -> Seat {
        Seat {
            held: Some(Vec::new()),
            ..Seat::new(outbox)
        }
    }

    /// The login went through: `welcome` first, then whatever arrived meanwhile.
    pub(super) fn seated(&mut self, welcome: Message) {
        self.outbox.deliver(welcome);
        for frame in self.held.take().unwrap_or_default() {
            self.outbox.deliver(frame);
        }
    }

    /// Whether the login is still being decided (the user is not counted or listed yet).
    pub(super) fn is_claiming(&self) -> bool {
        self.held.is_some()
    }

    /// Whether this user counts as online here: logged in, and not evicted.
    pub(super) fn is_present(&self) -> bool {
        !self.is_claiming() && !self.evicted
    }

    /// Whether a broadcast reaches this user: present and not in grace.
    pub(super) fn reads_now(&self) -> bool {
        self.is_present() && !self.away
    }

    pub(super) fn is_away(&self) -> bool {
        self.away
    }

    pub(super) fn is_evicted(&self) -> bool {
        self.evicted
    }

    /// Queues a frame for the user, or holds it until the login reply has gone.
    pub(super) fn push(&mut self, frame: Message) {
        match &mut self.held {
            Some(held) => held.push(frame),
            None => {
                self.outbox.deliver(frame);
            }
        }
    }

    /// Tells the user that `from`, their partner, went: `close`, reason `disconnected`.
    pub(super) fn tell_gone(&mut self, from: &str) {
        self.push(Message::text(disconnected(from)));
    }

    /// Another instance holds the name now: the session is told to end.
    pub(super) fn evict(&mut self) {
        self.evicted = true;
        self.outbox.evict();
    }

    /// Moves the user to another socket's queue: `welcome` first, then what `held` kept (a
    /// socket in grace kept it), and only then, once the caller lets go of its lock, anything
    /// new. `away`: the new queue is a grace holding queue that no socket reads.
    pub(super) fn rebind(
        &mut self,
        outbox: Outbox,
        held: Option<&mut Receiver<Queued>>,
        away: bool,
        welcome: Option<Message>,
    ) {
        if let Some(frame) = welcome {
            outbox.deliver(frame);
        }
        if let Some(held) = held {
            outbox.take_from(held);
        }
        self.outbox = outbox;
        self.away = away;
    }
}

/// Queues `frame` for every seat that reads now.
pub(super) fn broadcast<'a>(seats: impl Iterator<Item = &'a Seat>, frame: &Message) {
    for seat in seats.filter(|seat| seat.reads_now()) {
        seat.outbox.deliver(frame.clone());
    }
}

/// What a partner is told when the other side's socket went: `close`, reason `disconnected`.
pub(super) fn disconnected(from: &str) -> String {
    ServerMessage::Close {
        username: from,
        reason: CloseReason::Disconnected,
    }
    .to_json()
}

#[cfg(test)]
mod tests {
    use super::super::queue::channel;
    use super::*;

    fn texts(rx: &mut Receiver<Queued>) -> Vec<String> {
        std::iter::from_fn(|| rx.try_recv())
            .map(|frame| frame.into_text().unwrap().to_string())
            .collect()
    }

    #[test]
    fn a_claiming_seat_holds_frames_until_the_login_reply_has_gone() {
        let (tx, mut rx) = channel(8);
        let mut seat = Seat::claiming(Outbox::new(tx));
        assert!(seat.is_claiming() && !seat.is_present() && !seat.reads_now());
        seat.push(Message::text("early offer"));
        seat.tell_gone("bob");
        assert!(texts(&mut rx).is_empty(), "nothing before the login reply");
        seat.seated(Message::text("welcome"));
        let got = texts(&mut rx);
        assert_eq!(got[..2], ["welcome", "early offer"]);
        assert!(
            got[2].contains("\"disconnected\"") && got[2].contains("bob"),
            "{got:?}"
        );
        assert!(!seat.is_claiming() && seat.is_present() && seat.reads_now());
        assert!(!seat.is_evicted() && !seat.is_away());
        seat.push(Message::text("later"));
        assert_eq!(texts(&mut rx), ["later"]);
    }

    #[test]
    fn broadcasts_reach_only_seats_that_read_now() {
        let (tx, mut reading) = channel(8);
        let (claiming_tx, mut claiming) = channel(8);
        let (away_tx, mut away) = channel(8);
        let (evicted_tx, mut evicted) = channel(8);
        let mut in_grace = Seat::new(Outbox::new(away_tx));
        in_grace.rebind(in_grace.outbox.clone(), None, true, None);
        let mut gone = Seat::new(Outbox::new(evicted_tx));
        gone.evict();
        assert!(gone.is_evicted() && !gone.is_present());
        assert!(in_grace.is_away() && in_grace.is_present() && !in_grace.reads_now());
        let seats = [
            Seat::new(Outbox::new(tx)),
            Seat::claiming(Outbox::new(claiming_tx)),
            in_grace,
            gone,
        ];
        broadcast(seats.iter(), &Message::text("online"));
        assert_eq!(texts(&mut reading), ["online"]);
        for (queue, who) in [
            (&mut claiming, "claiming"),
            (&mut away, "away"),
            (&mut evicted, "evicted"),
        ] {
            assert!(texts(queue).is_empty(), "{who} got the broadcast");
        }
    }

    #[test]
    fn a_rebound_seat_gets_the_welcome_then_what_was_held_then_the_rest() {
        let (old_tx, _old_rx) = channel(8);
        let (held_tx, mut held) = channel(8);
        let (new_tx, mut new) = channel(8);
        Outbox::new(held_tx.clone()).deliver(Message::text("held 1"));
        Outbox::new(held_tx).deliver(Message::text("held 2"));
        let mut seat = Seat::new(Outbox::new(old_tx));
        seat.rebind(
            Outbox::new(new_tx),
            Some(&mut held),
            false,
            Some(Message::text("welcome back")),
        );
        seat.push(Message::text("new"));
        assert_eq!(texts(&mut new), ["welcome back", "held 1", "held 2", "new"]);
        assert!(!seat.is_away());
    }
}
