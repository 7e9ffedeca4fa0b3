//! Bad input gets one clear sentence and the documented exit code.

use crate::harness::{Lifeboat, TestDatabase, id};

const MINIMAL: &str = "[homeserver]\nurl = \"http://127.0.0.1:9\"\nserver_name = \"example.org\"\n\
                       admin_token = \"tok\"\nretries = 0\n[registry]\nurl = \"sqlite://lifeboat.db\"\n";

/// One line on stderr, starting with `error:`.
fn one_sentence(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line on stderr, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0]
}

#[tokio::test]
async fn a_missing_config_file_says_how_to_make_one() {
    let lifeboat = Lifeboat::with_config(MINIMAL);
    std::fs::remove_file(lifeboat.config_path()).unwrap();
    let run = lifeboat.run(&["check"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let line = one_sentence(&run.stderr);
    assert!(line.contains("no config file at") && line.contains("config.example.toml"), "{line}");
}

/// Every setting the example shows, set or commented out, is printed back
/// (a secret's `_file` form stands for the secret, printed as set or not).
#[tokio::test]
async fn config_check_prints_every_setting_of_the_example() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml")).unwrap();
    let run = Lifeboat::with_config(&example).run(&["config", "check"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    // `section.key` for each setting a text shows under its `[section]`.
    let settings_in = |text: &str, comments: bool| {
        let mut section = "";
        let mut found = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(name) = line.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')) {
                section = name;
            }
            let line = if comments { line.trim_start_matches('#') } else { line };
            let Some((key, _)) = line.trim_start().split_once(" = ") else { continue };
            if !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_') && !key.ends_with("_file") {
                found.insert(format!("{section}.{key}"));
            }
        }
        found
    };
    let printed = settings_in(&run.stdout, false);
    let unprinted: Vec<String> = settings_in(&example, true).difference(&printed).cloned().collect();
    assert!(unprinted.is_empty(), "not printed: {unprinted:?}\n{}", run.stdout);
}

#[tokio::test]
async fn a_misspelled_key_is_named_with_the_file() {
    let lifeboat = Lifeboat::with_config(&MINIMAL.replace("server_name", "servername"));
    let run = lifeboat.run(&["config", "check"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let line = one_sentence(&run.stderr);
    assert!(line.contains("`homeserver.servername` in "), "{line}");
    assert!(line.contains("is not a lifeboat setting (expected one of url, public_url, server_name"), "{line}");
    assert!(line.contains("lifeboat.toml"), "{line}");

    // A section only the environment names is blamed on its variable.
    let from_env = Lifeboat::with_config(MINIMAL).env("LIFEBOAT__FOO__BAR", "1");
    let run = from_env.run(&["config", "check"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let line = one_sentence(&run.stderr);
    assert!(line.contains("`foo` (from env LIFEBOAT__FOO__BAR) is not a lifeboat setting"), "{line}");
}

#[tokio::test]
async fn a_missing_required_key_names_the_key_and_its_env_var() {
    let lifeboat = Lifeboat::with_config(&MINIMAL.replace("url = \"http://127.0.0.1:9\"\n", ""));
    let run = lifeboat.run(&["sync"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let line = one_sentence(&run.stderr);
    assert!(line.contains("`homeserver.url` is missing") && line.contains("LIFEBOAT__HOMESERVER__URL"), "{line}");
}

#[tokio::test]
async fn a_bad_value_from_an_env_var_names_the_env_var() {
    let lifeboat = Lifeboat::with_config(MINIMAL).env("LIFEBOAT__WATCH__LOSS_THRESHOLD", "lots");
    let run = lifeboat.run(&["config", "check"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let line = one_sentence(&run.stderr);
    assert!(line.contains("`watch.loss_threshold` (from env LIFEBOAT__WATCH__LOSS_THRESHOLD)"), "{line}");
    assert!(line.contains("`lots` is not a number"), "{line}");

    let out_of_range = Lifeboat::with_config(MINIMAL).env("LIFEBOAT__WATCH__LOSS_THRESHOLD", "1.5");
    let line = out_of_range.run(&["config", "check"]).await.stderr;
    assert!(line.contains("not a share between 0 (exclusive) and 1"), "{line}");
}

#[tokio::test]
async fn values_that_cannot_work_are_refused_with_their_minimum() {
    let cases = [
        ("LIFEBOAT__TOKENS__EXPIRY", "1s", "`tokens.expiry`", "at least 1h"),
        ("LIFEBOAT__TOKENS__EXPIRY", "0s", "`tokens.expiry`", "at least 1h"),
        ("LIFEBOAT__SYNC__DETAILS_MAX_AGE", "0s", "`sync.details_max_age`", "at least 1m"),
        ("LIFEBOAT__SYNC__PAGE_SIZE", "-5", "`sync.page_size`", "`-5` is out of range"),
        ("LIFEBOAT__BOT__ENCRYPTED_NOTICES", "on", "`bot.encrypted_notices`", "write true or false"),
        ("LIFEBOAT__BOT__ENCRYPTED_NOTICES", "1", "`bot.encrypted_notices`", "write true or false"),
        // No command could follow it: the bot would never answer.
        ("LIFEBOAT__BOT__COMMAND_PREFIX", " ", "`bot.command_prefix`", "must be one word"),
    ];
    for (var, value, key, problem) in cases {
        let run = Lifeboat::with_config(MINIMAL).env(var, value).run(&["config", "check"]).await;
        assert_eq!(run.code, 2, "{var}={value}: {run:?}");
        let line = one_sentence(&run.stderr);
        assert!(line.contains(key) && line.contains(problem), "{var}={value}: {line}");
    }
    let in_the_file = Lifeboat::with_config(&format!("{MINIMAL}[sync]\npage_size = -5\n"));
    let line = in_the_file.run(&["config", "check"]).await.stderr;
    assert!(line.contains("`-5` is out of range") && !line.contains("untagged"), "{line}");
    // A sender the mailer could not carry (a comma in an unquoted name) is
    // refused here, not by serve's mailer or at notify's first email.
    let comma = "[email]\nsmtp_url = \"smtp://127.0.0.1:2525\"\nfrom = \"Example, Inc. <lifeboat@example.org>\"\n";
    let run = Lifeboat::with_config(&format!("{MINIMAL}{comma}")).run(&["config", "check"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let line = one_sentence(&run.stderr);
    assert!(line.contains("`email.from`") && line.contains("put the name in quotes"), "{line}");
    // A duration written as a bare number is told its missing unit.
    let bare = Lifeboat::with_config(&format!("{MINIMAL}[watch]\ninterval = 900\n"));
    let run = bare.run(&["config", "check"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let line = one_sentence(&run.stderr);
    assert!(line.contains("`watch.interval`") && line.contains("write it like \"30s\""), "{line}");
    // A section written as one value is told it is a section.
    let without = MINIMAL.replace("[registry]\nurl = \"sqlite://lifeboat.db\"\n", "");
    let flat = Lifeboat::with_config(&format!("registry = \"sqlite://lifeboat.db\"\n{without}"));
    let run = flat.run(&["config", "check"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    let line = one_sentence(&run.stderr);
    assert!(line.contains("`registry`") && line.contains("is a section: write [registry]"), "{line}");
    assert!(!line.contains("Raw"), "{line}");
    for wrong_type in ["[sync]\npage_size = [1]\n", "[web]\ntrusted_proxies = [1]\n"] {
        let run = Lifeboat::with_config(&format!("{MINIMAL}{wrong_type}")).run(&["config", "check"]).await;
        assert!(run.code == 2 && !run.stderr.contains("untagged"), "{wrong_type}: {run:?}");
    }
    // A server name pasted with a non-breaking space makes no user ID: said
    // here, not as a panic in the first command that needs lifeboat's own ID.
    for command in [&["config", "check"][..], &["check"]] {
        let pasted = Lifeboat::with_config(&MINIMAL.replace("example.org", "example\u{00A0}.org"));
        let run = pasted.run(command).await;
        assert_eq!(run.code, 2, "{command:?}: {run:?}");
        assert!(one_sentence(&run.stderr).contains("homeserver.server_name"), "{}", run.stderr);
    }
    // A secret written as a number is refused without being shown.
    let numeric = Lifeboat::with_config(&MINIMAL.replace("admin_token = \"tok\"", "admin_token = 12345678"));
    let run = numeric.run(&["config", "check"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("must be a quoted string") && !run.stderr.contains("12345678"), "{}", run.stderr);
    // An admin room the bot could never find by it.
    for room in ["admins", "#admins", "https://matrix.to/#/#admins:example.org"] {
        let bot = Lifeboat::with_config(&format!("{MINIMAL}[bot]\naccess_token = \"t\"\nadmin_room = \"{room}\"\n"));
        let run = bot.run(&["config", "check"]).await;
        assert_eq!(run.code, 2, "{room}: {run:?}");
        assert!(one_sentence(&run.stderr).contains("`bot.admin_room`"), "{room}: {}", run.stderr);
    }
}

#[tokio::test]
async fn an_oversized_or_binary_postmortem_is_refused_before_anything_is_opened() {
    let lifeboat = Lifeboat::with_config(MINIMAL);
    let huge = "All accounts were lost. ".repeat(5 * 1024 * 1024 / 24);
    let cases = [(huge.as_str(), "more than the 64 KiB"), ("Lost.\0Sorry.", "control character")];
    for (postmortem, problem) in cases {
        std::fs::write(lifeboat.dir().join("postmortem.md"), postmortem).unwrap();
        let run = lifeboat.run(&["incident", "open", "--title", "Lost", "--postmortem", "postmortem.md"]).await;
        assert_eq!(run.code, 2, "{run:?}");
        assert!(one_sentence(&run.stderr).contains(problem), "{}", run.stderr);
    }
    std::fs::write(lifeboat.dir().join("postmortem.md"), "Lost.").unwrap();
    let two_lines =
        lifeboat.run(&["incident", "open", "--title", "Lost\nagain", "--postmortem", "postmortem.md"]).await;
    assert_eq!(two_lines.code, 2, "{two_lines:?}");
    assert!(one_sentence(&two_lines.stderr).contains("on one line"), "{}", two_lines.stderr);
    let listed = lifeboat.run(&["incident", "list"]).await;
    assert!(!listed.stdout.contains("Lost"), "nothing was opened: {listed:?}");
}

#[tokio::test]
async fn smtp_connections_default_to_8_and_stay_between_1_and_64() {
    let with_email = format!("{MINIMAL}[email]\nsmtp_url = \"smtp://127.0.0.1:25\"\nfrom = \"lifeboat@example.org\"\n");
    let default = Lifeboat::with_config(&with_email).run(&["config", "check"]).await;
    assert_eq!(default.code, 0, "{default:?}");
    assert!(default.stdout.contains("  connections = 8\n"), "{}", default.stdout);

    let from_env = Lifeboat::with_config(&with_email).env("LIFEBOAT__EMAIL__CONNECTIONS", "2");
    let run = from_env.run(&["config", "check"]).await;
    assert!(run.stdout.contains("  connections = 2\n"), "{run:?}");

    for bad in ["0", "65"] {
        let run = Lifeboat::with_config(&format!("{with_email}connections = {bad}\n")).run(&["config", "check"]).await;
        assert_eq!(run.code, 2, "{run:?}");
        let line = one_sentence(&run.stderr);
        assert!(line.contains("`email.connections`") && line.contains("between 1 and 64"), "{line}");
    }
}

#[tokio::test]
async fn config_check_refuses_the_smtp_urls_that_sending_would_refuse() {
    for (url, problem) in [
        ("smtp://lifeboat@mail.example.org", "but no password; set email.smtp_password"),
        (
            "smtp://lifeboat:pw@mail.example.org?tls=opportunistic",
            "unencrypted to a server that offers no STARTTLS; use ?tls=required",
        ),
        ("smtp://mail.example.org?tls=yes", "?tls=yes"),
        ("smtp://mail.example.org?ssl=1", "unknown parameter `ssl`"),
        ("http://mail.example.org", "only smtp:// and smtps://"),
    ] {
        let config = format!("{MINIMAL}[email]\nsmtp_url = \"{url}\"\nfrom = \"lifeboat@example.org\"\n");
        let run = Lifeboat::with_config(&config).run(&["config", "check"]).await;
        assert_eq!(run.code, 2, "{url}: {run:?}");
        let line = one_sentence(&run.stderr);
        assert!(line.contains("email.smtp_url") && line.contains(problem), "{url}: {line}");
        assert!(!line.contains(":pw@"), "the password is never repeated: {line}");
    }
}

#[tokio::test]
async fn broken_toml_is_reported_with_its_line() {
    let lifeboat = Lifeboat::with_config("[homeserver]\nurl = \"http://x\n");
    let run = lifeboat.run(&["config", "check"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(one_sentence(&run.stderr).contains("is not valid TOML at line 2"), "{run:?}");
}

#[tokio::test]
async fn secrets_come_from_files_and_are_never_printed() {
    let lifeboat = Lifeboat::with_config(&MINIMAL.replace("admin_token = \"tok\"", "admin_token_file = \"token.txt\""));
    std::fs::write(lifeboat.dir().join("token.txt"), "s3cret-token-value\n").unwrap();
    let run = lifeboat.run(&["config", "check"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("admin_token = (set, read from"), "{run:?}");
    assert!(!run.stdout.contains("s3cret-token-value"), "{run:?}");

    std::fs::remove_file(lifeboat.dir().join("token.txt")).unwrap();
    let run = lifeboat.run(&["config", "check"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(one_sentence(&run.stderr).contains("`homeserver.admin_token_file`"), "{run:?}");
}

#[tokio::test]
async fn env_vars_override_the_file() {
    let lifeboat = Lifeboat::with_config(MINIMAL)
        .env("LIFEBOAT__HOMESERVER__URL", "https://matrix.example.org")
        .env("LIFEBOAT__SYNC__PAGE_SIZE", "250");
    let run = lifeboat.run(&["config", "check"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("url = https://matrix.example.org/"), "{run:?}");
    assert!(run.stdout.contains("page_size = 250"), "{run:?}");
}

#[tokio::test]
async fn the_example_config_loads_as_is() {
    let example = std::fs::read_to_string(crate::harness::repo_root().join("config.example.toml")).unwrap();
    let lifeboat = Lifeboat::with_config(&example);
    let run = lifeboat.run(&["config", "check"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("admin_token = (set)"), "{run:?}");
    assert!(!run.stdout.contains("change-me"), "secrets are redacted: {run:?}");
    // Valid, but not anyone's server: the placeholders are named.
    let keys = ["homeserver.admin_token", "bot.password", "bot.admin_room", "homeserver.server_name"];
    for key in keys.into_iter().chain(["alerts.email", "email.from", "web.admin_contact"]) {
        assert!(run.stdout.contains(&format!("warning: {key} is ")), "{key}: {}", run.stdout);
    }
    assert!(run.stdout.contains("  trusted_proxies = []"), "every key in effect is shown: {}", run.stdout);
    // As copied, a metrics port someone else holds does not stop serve.
    assert!(run.stdout.contains("  bind = 127.0.0.1:9464 (default; skipped if taken)"), "{}", run.stdout);
}

#[tokio::test]
async fn output_piped_into_a_reader_that_went_away_ends_quietly() {
    use std::os::fd::FromRawFd;
    let example = std::fs::read_to_string(crate::harness::repo_root().join("config.example.toml")).unwrap();
    let lifeboat = Lifeboat::with_config(&example);
    // As `lifeboat config check | head -0`: the reading end is closed first.
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    unsafe { libc::close(fds[0]) };
    let stdout = unsafe { std::process::Stdio::from_raw_fd(fds[1]) };
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_lifeboat"))
        .arg("--config")
        .arg(lifeboat.config_path())
        .args(["config", "check"])
        .stdout(stdout)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked") && stderr.trim().is_empty(), "{stderr}");
    assert_ne!(output.status.code(), Some(101), "no panic exit");
}

#[tokio::test]
async fn an_unreachable_synapse_is_one_sentence_and_exit_1() {
    let registry = TestDatabase::sqlite();
    let lifeboat = Lifeboat::with_config(&MINIMAL.replace("sqlite://lifeboat.db", &registry.url()));
    for command in ["sync", "check"] {
        let run = lifeboat.run(&[command]).await;
        assert_eq!(run.code, 1, "{run:?}");
        let line = one_sentence(&run.stderr);
        assert!(line.contains("Synapse at http://127.0.0.1:9/ is unavailable"), "{line}");
        assert!(line.contains("check that it is running"), "{line}");
    }

    // Scripts still get one object on stdout; retries stay quiet without -v.
    let retrying = Lifeboat::with_config(
        &MINIMAL.replace("sqlite://lifeboat.db", &registry.url()).replace("retries = 0", "retries = 2"),
    );
    let run = retrying.run(&["check", "--json"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(one_sentence(&run.stderr).contains("is unavailable"), "{run:?}");
    let report = run.json();
    assert_eq!(report["verdict"], "unknown", "{report}");
    assert_eq!(report["listing_complete"], false, "{report}");
    assert!(report["reason"].as_str().unwrap().contains("is unavailable"), "{report}");
}

#[tokio::test]
async fn contacts_are_validated_normalized_and_idempotent() {
    let registry = TestDatabase::sqlite();
    let lifeboat = Lifeboat::with_config(&MINIMAL.replace("sqlite://lifeboat.db", &registry.url()));

    let bad = lifeboat.run(&["contacts", "add", "@alice:example.org", "alice-at-example.org"]).await;
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("`alice-at-example.org` is not an email address: it has no @"), "{bad:?}");
    let bad_id = lifeboat.run(&["contacts", "add", "alice", "alice@example.org"]).await;
    assert_eq!(bad_id.code, 2, "{bad_id:?}");
    assert!(bad_id.stderr.contains("is not a Matrix user ID"), "{bad_id:?}");

    let unknown = lifeboat.run(&["contacts", "add", "@alice:example.org", "alice@example.org"]).await;
    assert_eq!(unknown.code, 1, "{unknown:?}");
    assert!(one_sentence(&unknown.stderr).contains("@alice:example.org is not in the registry"), "{unknown:?}");

    let client = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    seed_account(&client, "@alice:example.org").await;
    let added = lifeboat.run(&["contacts", "add", "@alice:example.org", " Alice@Example.ORG "]).await;
    assert_eq!((added.code, added.stdout.trim()), (0, "Added alice@example.org to @alice:example.org."));
    let again = lifeboat.run(&["contacts", "add", "@alice:example.org", "alice@example.org"]).await;
    assert_eq!(again.code, 0);
    assert!(again.stdout.contains("nothing changed"), "{again:?}");
    let contacts = client.contacts_of(&id("@alice:example.org")).await.unwrap();
    assert_eq!(contacts.len(), 1);
    assert_eq!((contacts[0].address.as_str(), contacts[0].source.as_str()), ("alice@example.org", "admin"));

    assert!(
        lifeboat
            .run(&["contacts", "remove", "@alice:example.org", "ALICE@example.org"])
            .await
            .stdout
            .contains("Removed")
    );
    assert!(
        lifeboat
            .run(&["contacts", "remove", "@alice:example.org", "alice@example.org"])
            .await
            .stdout
            .contains("nothing changed")
    );
    let audit: Vec<String> = client.audit_log(10).await.unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(audit[..2], ["contact.remove", "contact.add"]);

    // A Matrix ID is a contact too, reached by DM: meant for another homeserver.
    let elsewhere = lifeboat.run(&["contacts", "add", "@alice:example.org", "@alice:example.net"]).await;
    assert_eq!((elsewhere.code, elsewhere.stdout.trim()), (0, "Added @alice:example.net to @alice:example.org."));
    let here = lifeboat.run(&["contacts", "add", "@alice:example.org", "@alice2:example.org"]).await;
    assert_eq!(here.code, 0, "{here:?}");
    assert!(here.stdout.contains("is on this homeserver too"), "a wipe would take it too: {here:?}");
    let itself = lifeboat.run(&["contacts", "add", "@alice:example.org", "@alice:example.org"]).await;
    assert_eq!(itself.code, 1, "{itself:?}");
    assert!(one_sentence(&itself.stderr).contains("is the account itself, not a contact"), "{itself:?}");
    let bad_matrix_id = lifeboat.run(&["contacts", "add", "@alice:example.org", "@alice"]).await;
    assert_eq!(bad_matrix_id.code, 2, "{bad_matrix_id:?}");
    assert!(
        bad_matrix_id.stderr.contains("`@alice` is not a Matrix user ID: it has no :server part"),
        "{bad_matrix_id:?}"
    );
    let mut kinds: Vec<(String, String)> = client
        .contacts_of(&id("@alice:example.org"))
        .await
        .unwrap()
        .into_iter()
        .map(|contact| (contact.kind.to_string(), contact.address))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("matrix".to_owned(), "@alice2:example.org".to_owned()),
            ("matrix".to_owned(), "@alice:example.net".to_owned())
        ]
    );
    let removed = lifeboat.run(&["contacts", "remove", "@alice:example.org", "@alice2:example.org"]).await;
    assert_eq!((removed.code, removed.stdout.trim()), (0, "Removed @alice2:example.org from @alice:example.org."));
}

/// Puts one account into a registry the way a sync would.
pub async fn seed_account(registry: &lifeboat::registry::Registry, user_id: &str) {
    let run = registry.begin_sync_run().await.unwrap();
    let user: lifeboat::synapse::ListedUser =
        serde_json::from_value(serde_json::json!({"name": user_id, "creation_ts": 1})).unwrap();
    registry.stage_listing_page(run, &[user]).await.unwrap();
    registry.apply_listing(run, 0.5, &lifeboat::registry::Actor::cli()).await.unwrap();
}

#[tokio::test]
async fn help_explains_the_exit_codes() {
    let run = Lifeboat::with_config(MINIMAL).run(&["--help"]).await;
    assert_eq!(run.code, 0);
    let help = run.stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains("3 `check` found a loss"), "{run:?}");
    let usage = Lifeboat::with_config(MINIMAL).run(&["frobnicate"]).await;
    assert_eq!(usage.code, 2, "{usage:?}");
}

#[tokio::test]
async fn a_secret_from_the_environment_overrides_the_files_secret_file() {
    let lifeboat =
        Lifeboat::with_config(&MINIMAL.replace("admin_token = \"tok\"", "admin_token_file = \"missing.txt\""))
            .env("LIFEBOAT__HOMESERVER__ADMIN_TOKEN", "from-env");
    let run = lifeboat.run(&["config", "check"]).await;
    assert_eq!(run.code, 0, "the env token wins; the file named in the config is not read: {run:?}");
    assert!(run.stdout.contains("admin_token = (set)"), "{run:?}");
}

#[tokio::test]
async fn urls_that_would_lose_data_or_leak_secrets_are_refused() {
    let memory = Lifeboat::with_config(&MINIMAL.replace("sqlite://lifeboat.db", "sqlite::memory:"));
    let run = memory.run(&["config", "check"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(one_sentence(&run.stderr).contains("an in-memory registry forgets everything"), "{run:?}");

    let userinfo = Lifeboat::with_config(&MINIMAL.replace("http://127.0.0.1:9", "http://admin:hunter2@127.0.0.1:9"));
    let run = userinfo.run(&["config", "check"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(one_sentence(&run.stderr).contains("must not hold a user name or password"), "{run:?}");
    assert!(!run.stderr.contains("hunter2"), "{run:?}");

    let postgres = Lifeboat::with_config(&MINIMAL.replace("sqlite://lifeboat.db", "postgres://lb:hunter2@db host/x"));
    let run = postgres.run(&["config", "check"]).await;
    assert_eq!(run.code, 2, "{run:?}");
    assert!(!run.stderr.contains("hunter2"), "the password never reaches stderr: {run:?}");
}

/// However a registry URL's password is written (a `/` in it, as base64
/// makes, digits first, which read as a port, or a `#` or `?`, which end
/// the address), or whatever parameter carries one, neither lifeboat's
/// messages nor its log repeat it, even with RUST_LOG asking for warnings.
#[tokio::test]
async fn a_registry_password_is_never_printed_however_it_is_written() {
    let urls = [
        "postgres://lb:Ab3/hunter2@db host/x",
        "postgres://127.0.0.1:1234/hunter2@db/x",
        "postgres://lb:#hunter2@127.0.0.1:1/x",
        // Read as host 127.0.0.1, port 1 and a query: no lookup of a name.
        "postgres://127.0.0.1:1?hunter2@db/x",
        "postgres://lb@127.0.0.1:1/x?passwd=hunter2",
        "postgres://lb@127.0.0.1:1/x?sslpassword=hunter2",
    ];
    for url in urls {
        for log in ["", "warn"] {
            let lifeboat = Lifeboat::with_config(&MINIMAL.replace("sqlite://lifeboat.db", url)).env("RUST_LOG", log);
            for command in [&["config", "check"][..], &["users", "list"]] {
                let run = lifeboat.run(command).await;
                assert!(!format!("{}{}", run.stdout, run.stderr).contains("hunter2"), "{url}: {run:?}");
            }
        }
    }
    // A `#` in the password is refused before anything connects, with how to write it.
    let lifeboat = Lifeboat::with_config(&MINIMAL.replace("sqlite://lifeboat.db", urls[2]));
    let run = lifeboat.run(&["config", "check"]).await;
    assert!(run.code == 2 && run.stderr.contains("write a `#` in the password as %23"), "{run:?}");
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap_or_else(|err| panic!("{}: {err}", path.display())).permissions().mode() & 0o777
}

#[tokio::test]
async fn the_sqlite_registry_and_its_journal_are_readable_by_their_owner_only() {
    let lifeboat = Lifeboat::with_config(MINIMAL);
    // The umask these machines and most servers have: files 0644 by default.
    let run = lifeboat.run(&["users", "list"]).await;
    assert_eq!(run.code, 0, "{run:?}");
    let registry = lifeboat.dir().join("lifeboat.db");
    assert_eq!(mode_of(&registry), 0o600);
    let client = lifeboat::registry::Registry::connect(&format!("sqlite://{}", registry.display())).await.unwrap();
    seed_account(&client, "@alice:example.org").await;
    for journal in ["lifeboat.db-wal", "lifeboat.db-shm"] {
        assert_eq!(mode_of(&lifeboat.dir().join(journal)), 0o600, "{journal}");
    }
}

/// registry.url pointed at Synapse's own database (a copy-paste from
/// homeserver.yaml): refused before anything is written there.
#[tokio::test]
async fn a_registry_url_naming_synapses_own_database_is_refused_and_left_untouched() {
    let lifeboat = Lifeboat::with_config(MINIMAL);
    let file = lifeboat.dir().join("lifeboat.db");
    let synapses = format!("sqlite://{}?mode=rwc", file.display());
    {
        use sqlx::Connection;
        let mut conn = sqlx::SqliteConnection::connect(&synapses).await.unwrap();
        sqlx::query("CREATE TABLE event_json (event_id TEXT, json TEXT)").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
    }
    let run = lifeboat.run(&["users", "list"]).await;
    assert_eq!(run.code, 2, "a setting to fix: {run:?}");
    assert!(one_sentence(&run.stderr).contains("names Synapse's own database"), "{}", run.stderr);
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(&synapses).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(tables, 1, "nothing of lifeboat's was written there");
}

#[tokio::test]
async fn a_registry_that_refuses_connections_is_named_at_once_not_after_a_timeout() {
    let refusing =
        Lifeboat::with_config(&MINIMAL.replace("sqlite://lifeboat.db", "postgres://postgres@127.0.0.1:1/test"));
    let run = refusing.run(&["users", "list"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let line = one_sentence(&run.stderr);
    assert!(line.contains("Connection refused") && !line.contains("timed out"), "{line}");

    let not_a_database = Lifeboat::with_config(MINIMAL);
    std::fs::write(not_a_database.dir().join("lifeboat.db"), "these are my notes, not a database\n".repeat(200))
        .unwrap();
    let run = not_a_database.run(&["users", "list"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let line = one_sentence(&run.stderr);
    assert!(line.contains("file is not a database") && !line.contains("timed out"), "{line}");
}

#[tokio::test]
async fn backup_and_restore_work_from_the_command_line_and_refuse_other_files() {
    let registry = TestDatabase::sqlite();
    let lifeboat = Lifeboat::with_config(&MINIMAL.replace("sqlite://lifeboat.db", &registry.url()));
    let client = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    seed_account(&client, "@alice:example.org").await;

    let backup = lifeboat.run(&["backup", "--out", "registry.backup"]).await;
    assert_eq!(backup.code, 0, "{backup:?}");
    assert_eq!(mode_of(&lifeboat.dir().join("registry.backup")), 0o600, "a backup holds secrets");
    assert!(client.setting("last_backup_at").await.unwrap().is_some(), "the backup time is recorded");

    let fresh = TestDatabase::sqlite();
    let elsewhere = Lifeboat::with_config(&MINIMAL.replace("sqlite://lifeboat.db", &fresh.url()));
    let path = lifeboat.dir().join("registry.backup");
    let restore = elsewhere.run(&["restore", path.to_str().unwrap()]).await;
    assert_eq!(restore.code, 0, "{restore:?}");
    let users = elsewhere.run(&["users", "list", "--json"]).await.json();
    assert_eq!(users[0]["user_id"], "@alice:example.org");

    std::fs::write(lifeboat.dir().join("notes.txt"), "hello").unwrap();
    let other =
        elsewhere.run(&["restore", lifeboat.dir().join("notes.txt").to_str().unwrap(), "--replace", "--yes"]).await;
    assert_eq!(other.code, 1, "{other:?}");
    assert!(one_sentence(&other.stderr).contains("is not a lifeboat backup"), "{other:?}");

    // A folder that is not there is named, and no temporary file that never was.
    let nowhere = lifeboat.run(&["backup", "--out", "no-such-folder/registry.backup"]).await;
    assert_eq!(nowhere.code, 1, "{nowhere:?}");
    let line = one_sentence(&nowhere.stderr);
    assert!(line.contains("cannot make a file in no-such-folder (there is no such folder)"), "{line}");
    assert!(!line.contains(".tmp"), "{line}");
    // Tokens of an incident that does not exist: said so, not "none".
    let tokens = lifeboat.run(&["tokens", "list", "--incident", "99"]).await;
    assert_eq!(tokens.code, 1, "{tokens:?}");
    assert!(one_sentence(&tokens.stderr).contains("there is no incident 99"), "{tokens:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_homeserver_url_that_cannot_work_is_named_with_its_fix_at_once() {
    let synapse = crate::harness::TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let port = url::Url::parse(&synapse.url).unwrap().port().unwrap();
    let cases = [
        (format!("https://127.0.0.1:{port}"), "answers plain HTTP on this port, not TLS: use http://"),
        (format!("http://127.0.0.1:{port}/matrix"), "must point at Synapse itself"),
    ];
    for (url, fix) in cases {
        let config = MINIMAL
            .replace("http://127.0.0.1:9", &url)
            .replace("retries = 0", "retries = 3")
            .replace("sqlite://lifeboat.db", &registry.url());
        let run = Lifeboat::with_config(&config).run(&["check"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        let line = one_sentence(&run.stderr);
        assert!(line.contains(fix), "{url}: {line}");
    }
}
