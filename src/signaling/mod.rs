//! The signaling relay: users log in by name and exchange offers, answers and ICE candidates.
//!
//! - [`protocol`]: the JSON messages, one enum per direction.
//! - [`registry`]: who is logged in and who is calling whom, behind one lock.
//! - [`session`]: one task per WebSocket.
//! - [`queue`]: each socket's bounded frame queue.
//! - [`grace`]: dropped users held for a while, and the tokens that take them back.
//! - [`presence`]: who's online, when the operator turns it on.

pub mod grace;
pub mod presence;
pub mod protocol;
pub mod queue;
pub mod registry;
pub mod session;
