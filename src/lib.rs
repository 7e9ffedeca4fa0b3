//! lifeboat: an off-server registry of a Synapse homeserver's accounts and
//! contacts, loss detection, and (in later parts) the way back in.

pub mod check;
pub mod cli;
pub mod config;
pub mod email;
pub mod reconcile;
pub mod registry;
pub mod synapse;
pub mod sync;
pub mod user_id;
