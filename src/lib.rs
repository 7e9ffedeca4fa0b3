//! lifeboat: an off-server registry of a Synapse homeserver's accounts and
//! contacts, loss detection, and (in later parts) the way back in.

pub mod backup;
pub mod bot;
pub mod campaign;
pub mod check;
pub mod cli;
pub mod config;
pub mod dm;
pub mod drill;
pub mod email;
pub mod holds;
pub mod lease;
pub mod links;
pub mod mail;
pub mod notice;
pub mod notify;
pub mod owner_only;
pub mod plural;
pub mod reconcile;
pub mod recover;
pub mod registry;
pub mod rooms;
pub mod serve;
pub mod synapse;
pub mod sync;
pub mod tokens;
pub mod user_id;
pub mod watch;
pub mod web;
pub mod worker;
