//! A socket's bounded frame queue: many senders (the socket's own session, its partner's, the
//! engine), one receiver (the writer task).
//!
//! Why not tokio's bounded mpsc: it allocates its channel with cache-padded counters and a
//! first block of 32 slots up front, ~800 bytes on every connection, idle or not. Here an
//! idle queue is one allocation: a lock, two flags, a count and two `Notify`s; its slots come
//! with the first frame. The lock is held only to push or pop, never across an await.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hyper_tungstenite::tungstenite::Message;
use tokio::sync::Notify;

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum TrySendError<T> {
    /// The queue holds its capacity: the receiver is not keeping up.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

struct Slots<T> {
    frames: VecDeque<T>,
    /// The receiver was dropped.
    closed: bool,
    /// Every sender was dropped.
    abandoned: bool,
}

struct Chan<T> {
    slots: Mutex<Slots<T>>,
    capacity: usize,
    /// Holds a permit when something arrived (or the senders went) with the receiver not
    /// waiting, so no wake-up is lost.
    ready: Notify,
    /// Rung when a frame was refused for a full queue, or by a sender's owner (`bell`).
    bell: Notify,
    senders: AtomicUsize,
}

impl<T> Chan<T> {
    fn lock(&self) -> MutexGuard<'_, Slots<T>> {
        // Every change under this lock is a single push, pop or flag.
        crate::sync::lock(&self.slots)
    }
}

/// The sending side. The last clone dropped ends the queue for the receiver once it has
/// taken what is left.
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.chan.senders.fetch_add(1, Ordering::Relaxed);
        Sender {
            chan: self.chan.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        if self.chan.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.chan.lock().abandoned = true;
            self.chan.ready.notify_one();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").finish_non_exhaustive()
    }
}

/// The receiving side.
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let dropped = {
            let mut slots = self.chan.lock();
            slots.closed = true;
            std::mem::take(&mut slots.frames)
        };
        drop(dropped);
    }
}

/// A queue of at most `capacity` items.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan {
        slots: Mutex::new(Slots {
            frames: VecDeque::new(),
            closed: false,
            abandoned: false,
        }),
        capacity,
        ready: Notify::new(),
        bell: Notify::new(),
        senders: AtomicUsize::new(1),
    });
    let sender = Sender { chan: chan.clone() };
    (sender, Receiver { chan })
}

impl<T> Sender<T> {
    /// Queues `item` without waiting. A full queue rings the bell.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let chan = &self.chan;
        {
            let mut slots = chan.lock();
            if slots.closed {
                return Err(TrySendError::Closed(item));
            }
            if slots.frames.len() >= chan.capacity {
                drop(slots);
                chan.bell.notify_one();
                return Err(TrySendError::Full(item));
            }
            slots.frames.push_back(item);
        }
        chan.ready.notify_one();
        Ok(())
    }

    /// The queue's bell: rung when a frame was refused for a full queue, and by whoever
    /// else needs the attention of the queue's owner. It keeps one permit while nobody waits.
    pub fn bell(&self) -> &Notify {
        &self.chan.bell
    }
}

impl<T> Receiver<T> {
    /// The next item, waiting for one; `None` once every sender is gone and nothing is left.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut slots = self.chan.lock();
                if let Some(item) = slots.frames.pop_front() {
                    return Some(item);
                }
                if slots.abandoned {
                    return None;
                }
            }
            self.chan.ready.notified().await;
        }
    }

    /// The next item if one is there.
    pub fn try_recv(&mut self) -> Option<T> {
        self.chan.lock().frames.pop_front()
    }

    /// The queue's bell, as the senders see it.
    pub fn bell(&self) -> &Notify {
        &self.chan.bell
    }
}

/// What a socket's queue holds. Boxed so that a queue's slots, which stay allocated at the
/// most it ever held, are 8 bytes each rather than a `Message`'s 56.
pub type Queued = Box<Message>;

/// The way into one socket: its bounded queue, whose bell rings when that queue is full.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: Sender<Queued>,
}

impl Outbox {
    pub fn new(tx: Sender<Queued>) -> Outbox {
        Outbox { tx }
    }

    /// Queues a frame without waiting. A full queue means the client stopped reading: the
    /// bell rings and it is told to go (its session drops it) instead of letting the queue
    /// grow.
    pub fn deliver(&self, frame: Message) -> bool {
        self.tx.try_send(Box::new(frame)).is_ok()
    }

    /// What the socket's owner waits on: a full queue, or an eviction.
    pub fn bell(&self) -> &Notify {
        self.tx.bell()
    }
}

impl Outbox {
    /// Rings the bell without a full queue: the engine took the name away (another instance
    /// holds it now), and the session must end.
    pub fn evict(&self) {
        self.bell().notify_one();
    }

    /// Queues everything waiting in `held` (frames kept for a user in grace), in order.
    pub fn take_from(&self, held: &mut Receiver<Queued>) {
        while let Some(frame) = held.try_recv() {
            self.deliver(*frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_order_up_to_capacity_then_full() {
        let (tx, mut rx) = channel(2);
        assert_eq!(tx.try_send(1), Ok(()));
        assert_eq!(tx.clone().try_send(2), Ok(()));
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(tx.try_send(4), Ok(()));
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), Some(4));
        assert_eq!(rx.try_recv(), None);
    }

    #[tokio::test]
    async fn ends_for_the_receiver_when_the_last_sender_goes_after_what_is_left() {
        let (tx, mut rx) = channel(4);
        let other = tx.clone();
        tx.try_send("a").unwrap();
        drop(tx);
        // A clone still lives: the queue has not ended.
        assert_eq!(rx.recv().await, Some("a"));
        let waiting = tokio::spawn(async move { (rx.recv().await, rx) });
        tokio::task::yield_now().await;
        other.try_send("b").unwrap();
        let (got, mut rx) = waiting.await.unwrap();
        assert_eq!(got, Some("b"));
        drop(other);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_a_frame() {
        let (tx, mut rx) = channel(4);
        let waiting = tokio::spawn(async move { rx.recv().await });
        tokio::task::yield_now().await;
        tx.try_send(7).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got, Some(7));
    }

    #[tokio::test]
    async fn a_full_queue_rings_the_bell() {
        let (tx, _rx) = channel(1);
        tx.try_send(1).unwrap();
        assert_eq!(tx.try_send(2), Err(TrySendError::Full(2)));
        // The stored permit makes `notified()` complete at once.
        tokio::time::timeout(std::time::Duration::from_secs(1), tx.bell().notified())
            .await
            .expect("the bell rang");
    }

    #[test]
    fn a_closed_queue_refuses_and_frees_what_it_held() {
        let (tx, rx) = channel(4);
        let item = Arc::new(());
        tx.try_send(item.clone()).unwrap();
        drop(rx);
        assert_eq!(Arc::strong_count(&item), 1, "the queued item was dropped");
        assert!(matches!(tx.try_send(item), Err(TrySendError::Closed(_))));
    }

    #[test]
    fn a_full_queue_rings_the_bell_instead_of_growing() {
        let (tx, _rx) = channel(1);
        let outbox = Outbox::new(tx);
        assert!(outbox.deliver(Message::text("1")));
        assert!(!outbox.deliver(Message::text("2")));
        // The stored permit makes `notified()` complete at once.
        let rang = tokio_test_notified(outbox.bell());
        assert!(rang);
    }

    fn tokio_test_notified(bell: &Notify) -> bool {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_millis(100), bell.notified())
                .await
                .is_ok()
        })
    }
}
