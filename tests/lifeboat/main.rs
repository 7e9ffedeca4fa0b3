//! lifeboat's integration tests: one binary, real parts (see harness/).

mod harness;
mod synapse_scenarios;
