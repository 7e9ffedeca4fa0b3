//! Files that hold secrets (the SQLite registry with its WAL, backups:
//! the service account's token and password, the link-signing key,
//! registration tokens) are readable by their owner only, whatever the
//! umask says.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

const OWNER_ONLY: u32 = 0o600;

/// Creates (or truncates) `path` for writing, mode 0600.
pub fn create(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new().write(true).create(true).truncate(true).mode(OWNER_ONLY).open(path)?;
    // A file left from an earlier run keeps its old mode through `open`.
    file.set_permissions(Permissions::from_mode(OWNER_ONLY))?;
    Ok(file)
}

/// Makes an empty `path`, mode 0600, unless it exists. SQLite then opens
/// it as a new database and gives its `-wal` and `-shm` files the same mode.
pub fn create_if_missing(path: &Path) -> io::Result<()> {
    match OpenOptions::new().write(true).create_new(true).mode(OWNER_ONLY).open(path) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(err) => Err(err),
    }
}
