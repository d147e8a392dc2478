//! Who's online (`[presence] enabled`): every logged-in page gets the list of users online,
//! busy marked, and an update when it changes.
//!
//! One task per instance reads the list from the registry engine (so with Redis it covers
//! every instance) and broadcasts it when it differs from the last one sent. Changes are
//! coalesced: the task waits a moment after the first ring, and at least [`MIN_GAP`] between
//! two broadcasts, so a storm of N logins costs each page a few lists, not N. A list has at
//! most [`ONLINE_LIMIT`] names, so one frame stays small whatever the size of the service.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hyper_tungstenite::tungstenite::Message;

use super::protocol::{ONLINE_LIMIT, OnlineUser, ServerMessage};
use super::registry::{Online, Registry};

/// How long the task waits after a change for the ones that come with it.
const GATHER: Duration = Duration::from_millis(250);
/// The shortest time between two broadcasts.
const MIN_GAP: Duration = Duration::from_secs(1);

/// The latest list sent, for a page that logs in now.
#[derive(Debug, Default)]
pub struct Presence {
    last: Mutex<Option<Message>>,
}

impl Presence {
    /// Starts the task. It ends once the returned handle (held by the app) is dropped.
    pub fn start(registry: Registry) -> Arc<Presence> {
        let presence = Arc::new(Presence::default());
        tokio::spawn(run(registry, Arc::downgrade(&presence)));
        presence
    }

    /// The list as last broadcast, if one was.
    pub fn current(&self) -> Option<Message> {
        crate::sync::lock(&self.last).clone()
    }
}

/// The `online` frame for a list.
pub fn frame(online: &Online) -> String {
    let users: Vec<OnlineUser<'_>> = online
        .users
        .iter()
        .map(|(name, busy)| OnlineUser {
            username: name,
            busy: *busy,
        })
        .collect();
    ServerMessage::Online {
        users: &users,
        total: online.total,
    }
    .to_json()
}

async fn run(registry: Registry, presence: Weak<Presence>) {
    let changes = registry.changes();
    let poll = registry.presence_poll();
    let mut shown: Option<Online> = None;
    loop {
        // A ring while the last list was being built is kept as a permit, so none is lost.
        let _ = tokio::time::timeout(poll, changes.notified()).await;
        tokio::time::sleep(GATHER).await;
        let Some(presence) = presence.upgrade() else {
            return;
        };
        // Unknown now (the backplane is away): keep the last list.
        let Some(online) = registry.online(ONLINE_LIMIT).await else {
            continue;
        };
        if shown.as_ref() == Some(&online) {
            continue;
        }
        let message = Message::text(frame(&online));
        *crate::sync::lock(&presence.last) = Some(message.clone());
        registry.broadcast(&message);
        shown = Some(online);
        drop(presence);
        tokio::time::sleep(MIN_GAP - GATHER).await;
    }
}
