//! lifeboat's integration tests: one binary, real parts (see harness/).

mod backups;
mod cli_errors;
mod federation;
mod harness;
mod holds;
mod listing_failures;
mod notices;
mod registry_backends;
mod rooms;
mod sandbox;
mod seed_story;
mod serve_bot;
mod synapse_scenarios;
mod web_pages;
