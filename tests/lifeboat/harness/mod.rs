//! Real parts for the tests: Synapse, registries, and the lifeboat binary.

pub mod browser;
pub mod cli;
pub mod faulty_front;
pub mod matrix;
pub mod proxy;
pub mod registries;
pub mod smtp;
pub mod synapse;

pub use cli::Lifeboat;
pub use matrix::{MatrixUser, RoomSpec, eventually};
pub use registries::TestDatabase;
pub use smtp::TestSmtp;
pub use synapse::{TestSynapse, federation_pair, unique};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The python of the venv with Synapse and aiosmtpd, made on first use by
/// tools/synapse-venv.sh (cached across runs).
pub fn venv_python() -> &'static PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let output = Command::new(repo_root().join("tools/synapse-venv.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("tools/synapse-venv.sh runs");
        assert!(output.status.success(), "tools/synapse-venv.sh failed to provide the Synapse venv");
        PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
    })
}

/// A loopback port free now, for a server a test starts (serve's web page,
/// metrics, chromedriver). Picked at random below the kernel's ephemeral
/// range: a port the kernel handed out for binding to 0 may be taken again,
/// before the server binds it, as the source port of any outgoing connection
/// the tests make (the same race tools/synapse_harness.py avoids). Nor a
/// port a Synapse harness keeps for a server it is restarting.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    if low > 11_000 {
        for attempt in 0u32..200 {
            let port = 10_000 + RandomState::new().hash_one(attempt) as u32 % (low - 10_000);
            if !kept_by_a_synapse_harness(port) && std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Whether a live Synapse harness reserved `port` (tools/synapse_harness.py
/// `reserve_port`: a file named by the port, holding the harness's pid).
fn kept_by_a_synapse_harness(port: u32) -> bool {
    let reserved = std::env::temp_dir().join("lifeboat-test-ports").join(port.to_string());
    std::fs::read_to_string(reserved)
        .ok()
        .and_then(|pid| pid.trim().parse::<u32>().ok())
        .is_some_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Whether some run holds the lease `name` in `registry` now.
pub async fn lease_held(registry: &lifeboat::registry::Registry, name: &str) -> bool {
    let held: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM leases WHERE name = $1")
        .bind(name)
        .fetch_one(registry.pool())
        .await
        .unwrap();
    held == 1
}

/// A user ID as the registry's API takes it.
pub fn id(text: &str) -> lifeboat::user_id::UserId {
    lifeboat::user_id::UserId::parse(text).unwrap()
}

/// An email address as the registry's API takes it.
pub fn email(text: &str) -> lifeboat::email::EmailAddress {
    lifeboat::email::EmailAddress::parse(text).unwrap()
}

/// A contact address (an email address, or a Matrix ID) as the registry's
/// API takes it.
pub fn contact(text: &str) -> lifeboat::registry::ContactAddress {
    lifeboat::registry::ContactAddress::parse(text).unwrap()
}
