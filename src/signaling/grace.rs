//! Users whose socket dropped keep their name and call for a grace period, and a reconnect
//! token proves that a new socket is the same user coming back.
//!
//! Every logged-in user has one *holder* on this instance: their live session, or, after the
//! socket dropped, a parked task that keeps their registry [`Connection`] (so the name stays
//! taken and the call stays up) and a bounded queue for what their partner sends meanwhile.
//! A login that presents the user's token asks the holder for the [`Connection`] through a
//! [`Handoff`], and carries on with it: same name, same call, the held messages first.
//!
//! A token takes a name back only as it was logged in (the page logs in again with the name
//! the server confirmed): "BOB" with bob's token is just a name that is taken.
//!
//! Tokens are 128 random bits, new at every login. Only their SHA-256 digest is kept, it is
//! compared in constant time, and neither is ever logged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tracing::info;

use super::queue;
use super::registry::{Connection, Outbox, Queued};

/// Frames kept for a user in grace. Only their partner can send them anything (others get
/// `busy`), and a partner's burst of ICE candidates is a few dozen; a queue this full means
/// the partner floods, and the grace ends early.
pub const HELD_FRAMES: usize = 128;
/// How long a reconnecting login waits for the holder to hand the session over.
const HANDOFF_WAIT: Duration = Duration::from_secs(2);

/// A user's registry membership on its way from one holder to the next.
pub struct Held {
    pub conn: Connection,
    /// What arrived while the user was parked, to deliver before anything new.
    pub queue: Option<queue::Receiver<Queued>>,
    /// A pending request to resume a call (with whom, until when), which moves with them.
    pub resume: Option<(Arc<str>, Instant)>,
}

/// The request a reconnecting login sends to the holder: reply with the session.
pub type Handoff = oneshot::Sender<Held>;

/// Where a reconnecting login leaves its request for the holder: one slot, since a second
/// request while one is pending loses anyway. (A tokio mpsc channel here cost every logged-in
/// user ~750 bytes, idle or not, in bench/run's idle-memory figure.)
#[derive(Default)]
struct Mailbox {
    request: Mutex<Option<Handoff>>,
    /// Holds a permit when a request arrives with the holder not waiting.
    arrived: Notify,
}

impl Mailbox {
    fn slot(&self) -> MutexGuard<'_, Option<Handoff>> {
        crate::sync::lock(&self.request)
    }
}

/// What the current holder listens on for a reconnecting login.
pub struct Claim {
    name: Arc<str>,
    epoch: u64,
    mailbox: Arc<Mailbox>,
}

impl Claim {
    /// The next handoff request whose login still waits. Never completes while none comes.
    /// (A request whose login gave up is dropped here: handing the session to it would only
    /// fail, and the holder would then log the user out.)
    pub async fn next(&mut self) -> Handoff {
        loop {
            let pending = self.mailbox.slot().take();
            match pending {
                Some(handoff) if !handoff.is_closed() => return handoff,
                _ => self.mailbox.arrived.notified().await,
            }
        }
    }
}

/// A claim that may not exist yet (before login): waits forever without one.
pub async fn next_handoff(claim: &mut Option<Claim>) -> Handoff {
    match claim {
        Some(claim) => claim.next().await,
        None => std::future::pending().await,
    }
}

struct Holder {
    digest: [u8; 32],
    mailbox: Arc<Mailbox>,
    epoch: u64,
}

/// The token digests and holders of this instance's users.
#[derive(Default)]
pub struct Sessions {
    holders: Mutex<HashMap<Arc<str>, Holder>>,
    epochs: AtomicU64,
    parked: AtomicUsize,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("parked", &self.parked())
            .finish_non_exhaustive()
    }
}

/// A fresh token: 128 bits from the system's secure generator, base64url.
pub fn new_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    // The system generator does not fail on any platform dialtone runs on; if it ever did,
    // an all-zero token would be guessable, so refuse to go on rather than hand one out.
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random number generator failed");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The token's SHA-256 digest in hex: what the Redis engine keeps, so another instance can
/// check a token too.
pub fn digest_hex(token: &str) -> String {
    digest(token).iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(token: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
    out
}

/// Equal digests, in time that does not depend on where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    subtle::ConstantTimeEq::ct_eq(&a[..], &b[..]).into()
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<Arc<str>, Holder>> {
        // Only inserts and removes happen under this lock.
        crate::sync::lock(&self.holders)
    }

    /// After a login (fresh, or by token): `token` is now the one that takes `name` back, and
    /// the returned claim is where that request will arrive.
    pub fn register(&self, name: &str, token: &str) -> Claim {
        let mailbox = Arc::new(Mailbox::default());
        let name: Arc<str> = Arc::from(name);
        let epoch = self.epochs.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            name.clone(),
            Holder {
                digest: digest(token),
                mailbox: mailbox.clone(),
                epoch,
            },
        );
        Claim {
            name,
            epoch,
            mailbox,
        }
    }

    /// The holder is done with the name (it left, or its grace ran out). A newer claim on the
    /// same name is left alone.
    pub fn forget(&self, claim: &Claim) {
        let mut holders = self.lock();
        if holders
            .get(&claim.name)
            .is_some_and(|holder| holder.epoch == claim.epoch)
        {
            holders.remove(&claim.name);
        }
    }

    /// A login presenting `token` for `name`: the session, taken from its holder, when the
    /// token is the current one. `None` when it is not (or nobody here holds the name).
    pub async fn take(&self, name: &str, token: &str) -> Option<Held> {
        let wanted = digest(token);
        let mailbox = {
            let holders = self.lock();
            let holder = holders.get(name)?;
            if !same(&holder.digest, &wanted) {
                return None;
            }
            holder.mailbox.clone()
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut slot = mailbox.slot();
            // A handoff already in progress for this name: this one loses. (One whose login
            // gave up waiting is no longer in progress.)
            if slot.as_ref().is_some_and(|pending| !pending.is_closed()) {
                return None;
            }
            *slot = Some(tx);
        }
        mailbox.arrived.notify_one();
        tokio::time::timeout(HANDOFF_WAIT, rx).await.ok()?.ok()
    }

    /// Users held in grace now.
    pub fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
    }

    /// Holds `held` for `grace` in a task of its own: the name stays taken, the call stays up,
    /// and what the partner sends waits in a bounded queue. Ends in a handoff to a login with
    /// the token, or, when the grace runs out (or the queue fills), drops the membership,
    /// which frees the name and tells the partner `disconnected`.
    /// `gone` runs when the user is logged out for good (not when they come back).
    pub fn park(
        self: &Arc<Self>,
        mut held: Held,
        claim: Claim,
        grace: Duration,
        gone: impl FnOnce() + Send + 'static,
    ) {
        let (tx, rx) = queue::channel(HELD_FRAMES);
        let outbox = Outbox::new(tx);
        held.conn
            .rebind(outbox.clone(), held.queue.as_mut(), true, |_| None);
        let sessions = self.clone();
        sessions.parked.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let mut claim = claim;
            let name = held.conn.name().map(str::to_owned);
            let handoff = tokio::select! {
                handoff = claim.next() => Ok(handoff),
                () = tokio::time::sleep(grace) => Err("did not come back in time: logged out"),
                () = outbox.bell().notified() => Err(if held.conn.evicted() {
                    "came back on another instance"
                } else {
                    "too many messages held: logged out"
                }),
            };
            sessions.parked.fetch_sub(1, Ordering::Relaxed);
            match handoff {
                Ok(handoff) => {
                    held.queue = Some(rx);
                    // If the login gave up waiting, the membership is dropped here instead.
                    if let Err(held) = handoff.send(held) {
                        sessions.forget(&claim);
                        drop(held);
                    }
                }
                Err(why) => {
                    sessions.forget(&claim);
                    drop(held.conn);
                    info!(user = name.as_deref(), "{why}");
                    gone();
                }
            }
        });
    }

    /// Whether another user may be parked: no more than `cap` at once, so sockets that log in
    /// and vanish in a loop cannot pile up memory.
    pub fn may_park(&self, cap: usize) -> bool {
        self.parked() < cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_compared_by_digest() {
        let (a, b) = (new_token(), new_token());
        assert_ne!(a, b);
        // 128 bits in base64url without padding.
        assert_eq!(a.len(), 22);
        assert!(same(&digest(&a), &digest(&a)));
        assert!(!same(&digest(&a), &digest(&b)));
        let mut flipped = digest(&a);
        flipped[31] ^= 1;
        assert!(!same(&digest(&a), &flipped));
        // Two differences that would cancel out if they were xor-ed together.
        let mut twice = digest(&a);
        twice[0] ^= 1;
        twice[1] ^= 1;
        assert!(!same(&digest(&a), &twice));
    }

    #[tokio::test]
    async fn a_holder_skips_a_request_whose_login_gave_up() {
        use futures_util::FutureExt;
        let sessions = Sessions::default();
        let mut claim = sessions.register("alice", "t1");
        // A login that stopped waiting (its 2 s ran out) left its request behind.
        let (stale, gave_up) = oneshot::channel::<Held>();
        drop(gave_up);
        *claim.mailbox.slot() = Some(stale);
        claim.mailbox.arrived.notify_one();
        assert!(
            claim.next().now_or_never().is_none(),
            "a stale request was taken"
        );
        // A login that waits still gets through, and the holder's reply reaches it.
        let (live, waiting) = oneshot::channel::<Held>();
        *claim.mailbox.slot() = Some(live);
        claim.mailbox.arrived.notify_one();
        let handoff = claim
            .next()
            .now_or_never()
            .expect("a live request was not taken");
        assert!(!handoff.is_closed());
        drop(waiting);
        assert!(handoff.is_closed());
    }

    #[tokio::test]
    async fn a_second_login_loses_to_one_that_waits_but_not_to_one_that_gave_up() {
        use futures_util::FutureExt;
        let sessions = Sessions::default();
        let mut claim = sessions.register("alice", "t1");
        let mut first = Box::pin(sessions.take("alice", "t1"));
        assert!(
            first.as_mut().now_or_never().is_none(),
            "the first login waits"
        );
        // While the first still waits, a second one with the same token loses at once.
        let second = sessions.take("alice", "t1").now_or_never();
        assert!(
            matches!(second, Some(None)),
            "a second login did not lose at once"
        );
        // The first one gives up (its 2 s ran out): a third one is not blocked by it.
        drop(first);
        let mut third = std::pin::pin!(sessions.take("alice", "t1"));
        assert!(
            third.as_mut().now_or_never().is_none(),
            "the third login was refused"
        );
        let handoff = claim
            .next()
            .now_or_never()
            .expect("no request for the holder");
        assert!(!handoff.is_closed(), "the holder got the stale request");
    }

    #[test]
    fn a_newer_claim_survives_the_older_ones_forget() {
        let sessions = Sessions::default();
        let old = sessions.register("alice", "t1");
        let new = sessions.register("alice", "t2");
        sessions.forget(&old);
        assert!(sessions.lock().contains_key("alice"));
        sessions.forget(&new);
        assert!(!sessions.lock().contains_key("alice"));
    }
}
