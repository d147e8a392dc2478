//! Who is online in the whole cluster: this instance's users, and the lists the others
//! stored in Redis.

use std::sync::Arc;
use std::time::Duration;

use super::super::Online;
use super::Cluster;
use crate::signaling::protocol::name_key;

/// How long an instance's presence list outlives its writes: instances write it at most a
/// couple of seconds apart (see `signaling::presence`), and it is read only while the
/// instance's lease holds, so a dead instance's list is never shown.
const PRESENCE_KEPT: Duration = Duration::from_secs(30);

impl Cluster {
    /// The presence list of the whole cluster: this instance's users, and the lists the
    /// others stored (each at most `limit` names; read and written in one script). A user
    /// who just moved between instances is listed once.
    ///
    /// An instance's list is its total, then one line per user: `1` (busy) or `0`, and the
    /// name. Names have no control characters, so lines cannot break inside one.
    pub async fn online(&self, limit: usize) -> Option<Online> {
        // Copied under the lock, sorted outside it.
        let users: Vec<(Arc<str>, bool)> = {
            let local = self.inner.lock();
            local
                .members
                .iter()
                .filter(|(_, m)| m.seat.is_present())
                .map(|(name, m)| (name.clone(), m.call.is_some()))
                .collect()
        };
        let mine = (users.len(), first_by_key(users, limit));
        let mut list = mine.0.to_string();
        for (name, busy) in &mine.1 {
            list.push('\n');
            list.push(if *busy { '1' } else { '0' });
            list.push_str(name);
        }
        if !self.inner.is_up() {
            return None;
        }
        let inner = &self.inner;
        let others: Vec<String> = inner
            .run(
                "presence",
                inner
                    .invoke(&inner.scripts.presence)
                    .arg((inner.lease + PRESENCE_KEPT).as_millis() as u64)
                    .arg(&list),
            )
            .await
            .ok()?;
        let (mut total, mut users) = mine;
        for other in &others {
            let mut lines = other.lines();
            total += lines.next().and_then(|n| n.parse().ok()).unwrap_or(0);
            users.extend(lines.filter_map(|line| {
                let name = line.get(1..).filter(|name| !name.is_empty())?;
                Some((Arc::from(name), line.starts_with('1')))
            }));
        }
        // A user who just moved between instances may be in two lists: listed once, and
        // busy if either list says so.
        let mut keyed: Vec<(String, Arc<str>, bool)> = users
            .into_iter()
            .map(|(name, busy)| (name_key(&name).into_owned(), name, busy))
            .collect();
        keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0).then(b.2.cmp(&a.2)));
        let before = keyed.len();
        keyed.dedup_by(|later, first| later.0 == first.0);
        total = total.saturating_sub(before - keyed.len());
        keyed.truncate(limit);
        Some(Online {
            users: keyed
                .into_iter()
                .map(|(_, name, busy)| (name, busy))
                .collect(),
            total,
        })
    }
}

/// The first `limit` users by [`name_key`], in that order.
fn first_by_key(users: Vec<(Arc<str>, bool)>, limit: usize) -> Vec<(Arc<str>, bool)> {
    let mut keyed: Vec<(String, (Arc<str>, bool))> = users
        .into_iter()
        .map(|user| (name_key(&user.0).into_owned(), user))
        .collect();
    keyed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    keyed.truncate(limit);
    keyed.into_iter().map(|(_, user)| user).collect()
}
