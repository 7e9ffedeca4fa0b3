//! The SQLite registry holds secrets (the service account's token and
//! password, the link-signing key, registration tokens): it is readable by
//! its owner only, whatever the umask says.

use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Makes an empty `path`, mode 0600, unless it exists. SQLite then opens
/// it as a new database and gives its `-wal` and `-shm` files the same mode.
pub fn create_if_missing(path: &Path) -> io::Result<()> {
    match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Err(err) if err.kind() != io::ErrorKind::AlreadyExists => Err(err),
        _ => Ok(()),
    }
}
