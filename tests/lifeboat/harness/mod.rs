//! Real parts for the tests: Synapse, registries, and the lifeboat binary.

pub mod cli;
pub mod registries;
pub mod smtp;
pub mod synapse;

pub use cli::Lifeboat;
pub use registries::TestDatabase;
pub use smtp::TestSmtp;
pub use synapse::{TestSynapse, unique};
