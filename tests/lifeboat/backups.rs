//! A backup restores into a fresh registry, on either backend, row for row.

use lifeboat::backup::{backup, restore, snapshot_lines};
use lifeboat::registry::{Actor, ContactSource, Registry, TokenPurpose};
use lifeboat::synapse::ListedUser;
use serde_json::{Value, json};

use crate::harness::{Lifeboat, TestDatabase, TestSynapse, contact, email, id, unique};

/// A registry with something in every kept table.
async fn lived_in(registry: &Registry) {
    let actor = Actor::cli();
    let users = |ids: &[&str]| -> Vec<ListedUser> {
        ids.iter()
            .map(|id| {
                serde_json::from_value(json!({"name": id, "creation_ts": 7, "displayname": "Zoë \"z\""})).unwrap()
            })
            .collect()
    };
    for listing in [users(&["@a:x", "@b:x", "@c:x"]), users(&["@a:x"])] {
        let run = registry.begin_sync_run().await.unwrap();
        registry.stage_listing_page(run, &listing).await.unwrap();
        registry.apply_listing(run, 0.5, &actor).await.unwrap();
    }
    registry.add_contact(&id("@b:x"), &contact("b@example.org"), ContactSource::Admin, Some(1), &actor).await.unwrap();
    registry.add_contact(&id("@c:x"), &contact("@c:elsewhere"), ContactSource::User, None, &actor).await.unwrap();
    let (incident, _) = registry
        .open_incident("Lost", "# What\n\nit went", lifeboat::registry::IncidentScope::Missing, true, &actor)
        .await
        .unwrap();
    registry.record_token(TokenPurpose::Notice, incident.id, &id("@b:x"), "TOKEN123", 99).await.unwrap();
    registry.plan_email_deliveries(incident.id).await.unwrap();
    registry
        .store_service_credential(
            &id("@lifeboat:x"),
            "syt_secret",
            Some("DEV"),
            lifeboat::registry::CredentialFrom::Recovery,
            &actor,
        )
        .await
        .unwrap();
    registry.store_dm_room(&id("@a:x"), "!room:x").await.unwrap();
    registry.set_setting("link_signing_key", "abc").await.unwrap();
}

async fn lines(registry: &Registry) -> Vec<String> {
    let mut lines = Vec::new();
    snapshot_lines(registry, |line| {
        lines.push(line);
        Ok(())
    })
    .await
    .unwrap();
    lines
}

/// The mail of a web page's link, and of a code proving an address, are
/// run-time state as the link and the code are: a backup keeps neither
/// (whoever reads the file would have the link). An alert's is kept.
#[tokio::test]
async fn a_backup_keeps_no_message_carrying_a_pages_link_or_a_code() {
    use lifeboat::outbox::queue_email;
    use lifeboat::registry::MessageKind;
    let database = TestDatabase::sqlite();
    let registry = Registry::connect(&database.url()).await.unwrap();
    let later = lifeboat::registry::now_ms() + 3_600_000;
    let link = lifeboat::messages::link(
        "x",
        lifeboat::messages::LinkEmail {
            subject: "Your way back".to_owned(),
            intro: "Open it".to_owned(),
            action: "Open".to_owned(),
            url: "https://lifeboat.test/claim?link=THE-LINK".to_owned(),
        },
    );
    queue_email(&registry, MessageKind::Link, &email("p@example.org"), &link, None, later).await.unwrap();
    let alert = lifeboat::messages::alert("x", "Accounts lost", "THE-ALERT");
    queue_email(&registry, MessageKind::Alert, &email("ops@example.org"), &alert, None, later).await.unwrap();

    let kept = lines(&registry).await.join("\n");
    assert!(!kept.contains("THE-LINK"), "{kept}");
    assert!(kept.contains("THE-ALERT"), "{kept}");
}

/// The file's rows, without its header and end lines.
fn file_rows(path: &std::path::Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let all: Vec<String> = text.lines().map(str::to_owned).collect();
    all[1..all.len() - 1].to_vec()
}

/// A row the restore itself writes: its audit entry, and the record of the
/// registry's last backup (the file restored).
fn written_by_the_restore(line: &str) -> bool {
    let value: Value = serde_json::from_str(line).unwrap();
    let last_backup = value["table"] == "settings" && value["row"][0].as_str().unwrap().starts_with("last_backup_");
    (value["table"] == "audit_log" && value["row"][4] == "restore") || last_backup
}

async fn round_trip(from: TestDatabase, to: TestDatabase) {
    let source = Registry::connect(&from.url()).await.unwrap();
    lived_in(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.backup");
    let written = backup(&source, &file, &[], "example.org", &Actor::cli(), &|_| {}).await.unwrap();
    let saved = file_rows(&file);
    assert_eq!(saved.len() as u64, written);
    assert!(saved.iter().any(|line| line.contains("TOKEN123")) && saved.iter().any(|line| line.contains("Zoë")));

    let target = Registry::connect(&to.url()).await.unwrap();
    assert_eq!(
        restore(&target, &file, None, false, "example.org", &Actor::cli(), &|_| {}).await.unwrap().rows,
        written
    );
    let restored: Vec<String> = lines(&target).await.into_iter().filter(|line| !written_by_the_restore(line)).collect();
    assert_eq!(restored, saved, "every row comes back as it was");
    let encrypted = target.setting("last_backup_encrypted").await.unwrap();
    assert_eq!(encrypted.as_deref(), Some("no"), "the restored registry's last backup is the file, plain");

    // New rows after a restore get fresh ids (sequences moved past the restored ones).
    target
        .add_contact(&id("@a:x"), &contact("a@example.org"), ContactSource::Admin, None, &Actor::cli())
        .await
        .unwrap();
    // Run-time rows pointing at accounts (a web link, a pending code) do not block --replace.
    let link = lifeboat::registry::NewWebLink {
        id: "link-1",
        purpose: "token",
        user_id: &id("@a:x"),
        address: &email("a@example.org"),
        code_hash: None,
        expires_at: i64::MAX / 2,
        asked_from: None,
        asked_as: None,
    };
    target.create_web_link(link).await.unwrap();
    let limits = lifeboat::registry::CODE_LIMITS;
    target.start_contact_verification(&id("@a:x"), &email("a@example.org"), "123456", 60_000, limits).await.unwrap();
    let refused =
        restore(&target, &file, None, false, "example.org", &Actor::cli(), &|_| {}).await.unwrap_err().to_string();
    assert!(refused.contains("the registry is not empty"), "{refused}");
    // Another homeserver's lifeboat would read every account as lost.
    let foreign =
        restore(&target, &file, None, true, "other.test", &Actor::cli(), &|_| {}).await.unwrap_err().to_string();
    assert!(foreign.contains("backup of example.org's registry") && foreign.contains("other.test"), "{foreign}");
    assert_eq!(
        restore(&target, &file, None, true, "example.org", &Actor::cli(), &|_| {}).await.unwrap().rows,
        written,
        "--replace empties it first"
    );

    source.close().await;
    target.close().await;
    from.drop_database().await;
    to.drop_database().await;
}

#[tokio::test]
async fn a_sqlite_backup_restores_row_for_row() {
    round_trip(TestDatabase::sqlite(), TestDatabase::sqlite()).await;
}

#[tokio::test]
async fn a_postgres_backup_restores_row_for_row() {
    round_trip(TestDatabase::postgres().await, TestDatabase::postgres().await).await;
}

#[tokio::test]
async fn a_sqlite_registry_moves_to_postgres_through_a_backup() {
    round_trip(TestDatabase::sqlite(), TestDatabase::postgres().await).await;
}

/// A lived-in SQLite registry's backup: its folder (removed when dropped),
/// the file, and the file's text.
async fn a_backup() -> (tempfile::TempDir, std::path::PathBuf, String) {
    let database = TestDatabase::sqlite();
    let source = Registry::connect(&database.url()).await.unwrap();
    lived_in(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.backup");
    backup(&source, &file, &[], "example.org", &Actor::cli(), &|_| {}).await.unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    (dir, file, text)
}

#[tokio::test]
async fn a_truncated_backup_is_refused_and_changes_nothing() {
    let (_dir, file, text) = a_backup().await;
    let cut: Vec<&str> = text.lines().collect();
    std::fs::write(&file, cut[..cut.len() - 3].join("\n")).unwrap();

    let target_db = TestDatabase::sqlite();
    let target = Registry::connect(&target_db.url()).await.unwrap();
    let err =
        restore(&target, &file, None, false, "example.org", &Actor::cli(), &|_| {}).await.unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
    assert!(lines(&target).await.is_empty(), "a failed restore leaves nothing behind");
}

/// A value edited by hand into another type (text where a time in ms
/// belongs) would restore as nothing at all: the restore is refused, named
/// by the column, and leaves the registry as it was.
#[tokio::test]
async fn a_backup_with_a_value_of_the_wrong_type_is_refused_and_changes_nothing() {
    let (_dir, file, text) = a_backup().await;
    let edited: Vec<String> = text
        .lines()
        .map(|line| {
            let mut record: Value = serde_json::from_str(line).unwrap();
            if record["table"] == "registration_tokens" {
                // expires_at, 99 in `lived_in`, as text.
                let row = record["row"].as_array_mut().unwrap();
                let expires_at = row.iter_mut().find(|value| **value == 99).unwrap();
                *expires_at = Value::from("99");
            }
            record.to_string()
        })
        .collect();
    std::fs::write(&file, edited.join("\n") + "\n").unwrap();

    let target_db = TestDatabase::sqlite();
    let target = Registry::connect(&target_db.url()).await.unwrap();
    let err =
        restore(&target, &file, None, false, "example.org", &Actor::cli(), &|_| {}).await.unwrap_err().to_string();
    assert!(err.contains("a registration_tokens row's expires_at is text, not a whole number"), "{err}");
    assert!(lines(&target).await.is_empty(), "a failed restore leaves nothing behind");
}

/// A backup from before the last columns of some tables existed (the holds,
/// the room reads, the outbox's message columns and its wait) still
/// restores: the missing columns take their defaults, and its deliveries
/// are notices.
#[tokio::test]
async fn a_backup_written_before_the_newest_columns_restores_with_their_defaults() {
    let database = TestDatabase::sqlite();
    let source = Registry::connect(&database.url()).await.unwrap();
    lived_in(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.backup");
    let written = backup(&source, &file, &[], "example.org", &Actor::cli(), &|_| {}).await.unwrap();
    let text = std::fs::read_to_string(&file).unwrap();
    let older: Vec<String> = text
        .lines()
        .map(|line| {
            let mut record: Value = serde_json::from_str(line).unwrap();
            let newer = match record["table"].as_str() {
                Some("accounts") => 5,
                Some("rooms") => 1,
                Some("deliveries") => 6,
                _ => 0,
            };
            if let Some(row) = record["row"].as_array_mut() {
                row.truncate(row.len() - newer);
            }
            record.to_string()
        })
        .collect();
    std::fs::write(&file, older.join("\n") + "\n").unwrap();

    let target_db = TestDatabase::sqlite();
    let target = Registry::connect(&target_db.url()).await.unwrap();
    assert_eq!(
        restore(&target, &file, None, false, "example.org", &Actor::cli(), &|_| {}).await.unwrap().rows,
        written
    );
    let kinds: Vec<(String,)> = sqlx::query_as("SELECT kind FROM deliveries").fetch_all(target.pool()).await.unwrap();
    assert!(!kinds.is_empty() && kinds.iter().all(|(kind,)| kind == "notice"), "{kinds:?}");
}

/// A restore empties every kept table: a registry that holds only what a
/// `serve` wrote (the bot's session, say) is not empty to it either.
#[tokio::test]
async fn a_registry_holding_only_the_bots_session_is_not_emptied_without_replace() {
    let (_dir, file, _) = a_backup().await;
    let target_db = TestDatabase::sqlite();
    let target = Registry::connect(&target_db.url()).await.unwrap();
    target.set_setting("bot_session", "{\"device_id\":\"NEW\"}").await.unwrap();

    let err =
        restore(&target, &file, None, false, "example.org", &Actor::cli(), &|_| {}).await.unwrap_err().to_string();
    assert!(err.contains("the registry is not empty"), "{err}");
    assert_eq!(target.setting("bot_session").await.unwrap().as_deref(), Some("{\"device_id\":\"NEW\"}"));
    restore(&target, &file, None, true, "example.org", &Actor::cli(), &|_| {}).await.unwrap();
}

/// The registry's host was lost with Synapse's database: on a new registry
/// `recover` registered lifeboat's account again, and the older backup
/// restored over it keeps those credentials (the backup's dead token, and
/// no password, would lock lifeboat out of its own account).
#[tokio::test(flavor = "multi_thread")]
async fn restoring_a_backup_from_before_a_wipe_keeps_the_credentials_recover_made_since() {
    let synapse = TestSynapse::start();
    let (old, new) = (TestDatabase::sqlite(), TestDatabase::sqlite());
    synapse.create_user(&unique("tern"), &[]).await;
    let before = Lifeboat::recovering(&synapse, &old);
    assert_eq!(before.run(&["sync"]).await.code, 0);
    let file = before.dir().join("registry.backup");
    assert_eq!(before.run(&["backup", "--out", file.to_str().unwrap()]).await.code, 0);

    synapse.wipe();
    let after = Lifeboat::recovering(&synapse, &new);
    assert_eq!(after.run(&["recover"]).await.code, 0);
    // The crypto stores on this host were made with this registry's passphrase.
    let store = Registry::connect(&new.url()).await.unwrap();
    store.set_setting("bot_store_passphrase", "this host's").await.unwrap();
    let password = store.setting("service_account_password").await.unwrap();
    let refused = after.run(&["restore", file.to_str().unwrap()]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    let unasked = after.run(&["restore", file.to_str().unwrap(), "--replace"]).await;
    assert_eq!(unasked.code, 2, "never emptied on a guess: {unasked:?}");
    assert!(unasked.stderr.contains("pass --yes with --replace"), "{unasked:?}");
    let restored = after.run(&["restore", file.to_str().unwrap(), "--replace", "--yes"]).await;
    assert_eq!(restored.code, 0, "{restored:?}");
    assert!(restored.stdout.contains("credentials were kept"), "{restored:?}");
    assert_eq!(store.setting("service_account_password").await.unwrap(), password);
    assert_eq!(store.setting("bot_store_passphrase").await.unwrap().as_deref(), Some("this host's"));
    store.close().await;
    let listed = after.run(&["sync"]).await;
    assert_eq!(listed.code, 0, "lifeboat's own token still works: {listed:?}");
    let again = after.run(&["recover"]).await;
    assert_eq!(again.code, 0, "{again:?}");
}

/// Backup and restore report their rows as they go (the CLI counts them
/// on the terminal), every thousand.
#[tokio::test]
async fn backup_and_restore_report_their_progress_every_thousand_rows() {
    let database = TestDatabase::sqlite();
    let source = Registry::connect(&database.url()).await.unwrap();
    for n in 0..2_500 {
        source.audit(&Actor::cli(), "test", Some(&n.to_string()), None).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("registry.backup");
    let reported = std::sync::Mutex::new(Vec::new());
    let report = |rows| reported.lock().unwrap().push(rows);
    backup(&source, &file, &[], "example.org", &Actor::cli(), &report).await.unwrap();
    assert_eq!(std::mem::take(&mut *reported.lock().unwrap()), [1_000, 2_000]);

    let target_db = TestDatabase::sqlite();
    let target = Registry::connect(&target_db.url()).await.unwrap();
    restore(&target, &file, None, false, "example.org", &Actor::cli(), &report).await.unwrap();
    assert_eq!(*reported.lock().unwrap(), [1_000, 2_000]);
}

/// A new age key: its secret in a key file in `dir`, and its public key.
fn age_key(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, age::x25519::Recipient) {
    use age::secrecy::ExposeSecret;
    let key = age::x25519::Identity::generate();
    let file = dir.join(name);
    std::fs::write(&file, format!("# made by a test\n{}\n", key.to_string().expose_secret())).unwrap();
    (file, key.to_public())
}

/// A backup encrypted to an admin's age key shows none of what it holds
/// (lifeboat's admin token, the link-signing key, registration tokens) to
/// whoever finds the file, and restores only with that key, row for row.
#[tokio::test]
async fn an_encrypted_backup_hides_its_secrets_and_restores_only_with_its_key() {
    let database = TestDatabase::sqlite();
    let source = Registry::connect(&database.url()).await.unwrap();
    lived_in(&source).await;
    let dir = tempfile::tempdir().unwrap();
    let (key_file, public) = age_key(dir.path(), "admin.key");
    let (other_key, _) = age_key(dir.path(), "other.key");
    let file = dir.path().join("registry.backup.age");
    let before = lines(&source).await;
    let written = backup(&source, &file, &[public], "example.org", &Actor::cli(), &|_| {}).await.unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let shows = |text: &str| bytes.windows(text.len()).any(|window| window == text.as_bytes());
    assert!(bytes.starts_with(b"age-encryption.org/v1"), "an age file");
    for secret in ["syt_secret", "TOKEN123", "lifeboat_backup", "link_signing_key"] {
        assert!(!shows(secret), "{secret} is not in the clear");
    }

    let target_db = TestDatabase::sqlite();
    let target = Registry::connect(&target_db.url()).await.unwrap();
    let restore_with = |identity: Option<std::path::PathBuf>| {
        let (target, file) = (&target, &file);
        async move { restore(target, file, identity.as_deref(), false, "example.org", &Actor::cli(), &|_| {}).await }
    };
    let no_key = restore_with(None).await.unwrap_err().to_string();
    assert!(no_key.contains("is encrypted: pass --identity KEYFILE"), "{no_key}");
    let wrong_key = restore_with(Some(other_key)).await.unwrap_err().to_string();
    assert!(wrong_key.contains("is encrypted to other keys than those in"), "{wrong_key}");
    assert!(lines(&target).await.is_empty(), "a refused restore leaves nothing behind");

    // Cut short, its one chunk fails to decrypt: refused, said as a read that failed.
    let whole = bytes.clone();
    std::fs::write(&file, &whole[..whole.len() - 200]).unwrap();
    let cut = restore_with(Some(key_file.clone())).await.unwrap_err().to_string();
    assert!(cut.contains("cannot read") || cut.contains("truncated"), "{cut}");
    assert!(lines(&target).await.is_empty(), "nothing of a cut file is restored");

    std::fs::write(&file, &whole).unwrap();
    assert_eq!(restore_with(Some(key_file)).await.unwrap().rows, written);
    let restored: Vec<String> = lines(&target).await.into_iter().filter(|line| !written_by_the_restore(line)).collect();
    assert_eq!(restored, before, "every row comes back as it was");
    let encrypted = target.setting("last_backup_encrypted").await.unwrap();
    assert_eq!(encrypted.as_deref(), Some("yes"), "the restored registry's last backup is the file, encrypted");
    source.close().await;
    target.close().await;
}

/// `backup.encrypt_to` makes every `lifeboat backup` encrypted, and
/// `restore --identity` reads it back; a secret key pasted there by mistake
/// is refused without being repeated.
#[tokio::test]
async fn the_cli_encrypts_backups_to_the_configured_keys() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, public) = age_key(dir.path(), "admin.key");
    let registry = TestDatabase::sqlite();
    let configured = |registry: &TestDatabase, backup: &str| {
        let lifeboat = Lifeboat::for_synapse("http://127.0.0.1:1", "example.org", "unused", &registry.url());
        let config = std::fs::read_to_string(lifeboat.config_path()).unwrap();
        lifeboat.write_config(&format!("{config}\n[backup]\n{backup}\n"));
        lifeboat
    };
    let lifeboat = configured(&registry, &format!("encrypt_to = [\"{public}\"]"));
    let out = dir.path().join("nightly.backup");
    let written = lifeboat.run(&["backup", "--out", out.to_str().unwrap()]).await;
    assert_eq!(written.code, 0, "{written:?}");
    assert!(written.stdout.contains("encrypted to 1 age key"), "{written:?}");
    assert!(std::fs::read(&out).unwrap().starts_with(b"age-encryption.org/v1"));
    assert!(last_backup_audit(&registry).await.ends_with(" rows, encrypted"), "the audit log says so");

    let fresh = TestDatabase::sqlite();
    let elsewhere = configured(&fresh, "");
    let refused = elsewhere.run(&["restore", out.to_str().unwrap()]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(refused.stderr.contains("--identity"), "{refused:?}");
    let restored = elsewhere.run(&["restore", out.to_str().unwrap(), "--identity", key_file.to_str().unwrap()]).await;
    assert_eq!(restored.code, 0, "{restored:?}");
    assert!(!restored.stderr.contains("not encrypted"), "{restored:?}");

    // A plain file restores with a key given, and the admin learns it was plain.
    let plain = dir.path().join("plain.backup");
    assert_eq!(elsewhere.run(&["backup", "--out", plain.to_str().unwrap()]).await.code, 0);
    assert!(last_backup_audit(&fresh).await.ends_with(" rows, not encrypted"));
    let third_registry = TestDatabase::sqlite();
    let third = configured(&third_registry, "");
    let restored = third.run(&["restore", plain.to_str().unwrap(), "--identity", key_file.to_str().unwrap()]).await;
    assert_eq!(restored.code, 0, "{restored:?}");
    assert!(restored.stderr.contains("was not encrypted (--identity was not needed)"), "{restored:?}");

    let secret = std::fs::read_to_string(&key_file).unwrap().lines().nth(1).unwrap().to_owned();
    let pasted = configured(&registry, &format!("encrypt_to = [\"{secret}\"]"));
    let check = pasted.run(&["config", "check"]).await;
    assert_eq!(check.code, 2, "{check:?}");
    assert!(check.stderr.contains("is an age secret key"), "{check:?}");
    assert!(!check.stderr.contains(&secret) && !check.stdout.contains(&secret), "never repeated: {check:?}");
}

/// What the audit log says of the registry's last backup.
async fn last_backup_audit(registry: &TestDatabase) -> String {
    let store = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let entries = store.audit_log(1_000).await.unwrap();
    store.close().await;
    // Newest first.
    let backup = entries.iter().find(|entry| entry.action == "backup");
    backup.and_then(|entry| entry.detail.clone()).unwrap_or_default()
}
