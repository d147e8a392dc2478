//! The signaling relay: users log in by name and exchange offers, answers and ICE candidates.
//!
//! - [`protocol`]: the JSON messages, one enum per direction.
//! - [`registry`]: who is logged in and who is calling whom, behind one lock.
//! - [`session`]: one task per WebSocket.
//! - [`grace`]: dropped users held for a while, and the tokens that take them back.

pub mod grace;
pub mod protocol;
pub mod registry;
pub mod session;
