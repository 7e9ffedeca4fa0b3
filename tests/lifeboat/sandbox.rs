//! The README's newcomer sandbox works end to end: start, wipe, stop.

use std::process::Command;

use crate::harness::repo_root;

struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn run(&self, args: &[&str]) -> (i32, String) {
        let output = Command::new(repo_root().join("tools/sandbox.sh"))
            .args(args)
            .env("LIFEBOAT_SANDBOX_DIR", self.dir.path())
            .env("LIFEBOAT_BIN", env!("CARGO_BIN_EXE_lifeboat"))
            .env_remove("LIFEBOAT_SANDBOX_PROFILE")
            .output()
            .expect("tools/sandbox.sh runs");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.code().unwrap_or(-1), text)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.run(&["stop", "--clean"]);
    }
}

#[test]
fn the_sandbox_shows_sync_and_check_then_detects_the_wipe() {
    let sandbox = Sandbox { dir: tempfile::Builder::new().prefix("lifeboat-sandbox-").tempdir().unwrap() };

    let (code, out) = sandbox.run(&["start"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Sync run 1 complete: 6 accounts listed."), "the demo accounts and the admin: {out}");
    assert!(out.contains("lifeboat check: no loss (exit 0)"), "{out}");
    assert!(out.contains("tools/sandbox.sh stop"), "it says how to stop it: {out}");

    let (code, out) = sandbox.run(&["wipe"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verdict: suspected_reset"), "{out}");

    let (code, out) = sandbox.run(&["stop", "--clean"]);
    assert_eq!(code, 0, "{out}");
    assert!(!sandbox.dir.path().exists(), "--clean removes the sandbox folder");
}
