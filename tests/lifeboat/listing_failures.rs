//! Failures a real Synapse cannot be made to produce on demand, served by a
//! mock HTTP server: whatever goes wrong mid-listing, nobody is marked missing.

use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{method, path, path_regex, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::harness::{Lifeboat, TestDatabase};

const TOKEN: &str = "syt_secret_admin_token_do_not_print";
const USERS: &str = "/_synapse/admin/v2/users";

fn user(n: usize) -> Value {
    json!({"name": format!("@user{n}:mock.test"), "admin": 0, "deactivated": false, "locked": false,
           "creation_ts": 1_700_000_000_000i64 + n as i64, "displayname": format!("User {n}")})
}

/// Page `index` (0-based) of a listing of six accounts, two per page.
fn page(index: usize, total: usize) -> ResponseTemplate {
    let users: Vec<Value> = (index * 2..(index * 2 + 2).min(6)).map(user).collect();
    let mut body = json!({"users": users, "total": total});
    if index < 2 {
        body["next_token"] = json!(((index + 1) * 2).to_string());
    }
    ResponseTemplate::new(200).set_body_json(body)
}

async fn mock_synapse() -> MockServer {
    let server = MockServer::start().await;
    answer_server_version(&server).await;
    Mock::given(method("GET"))
        .and(path("/_synapse/admin/v2/users/.*"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"threepids": []})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/_matrix/client/v3/account/whoami"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"user_id": "@admin:mock.test"})))
        .mount(&server)
        .await;
    server
}

/// What Synapse answers with or without a token, even after a wipe.
async fn answer_server_version(server: &MockServer) {
    Mock::given(method("GET"))
        .and(path("/_synapse/admin/v1/server_version"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"server_version": "mock"})))
        .mount(server)
        .await;
}

/// A 401 for a token Synapse knows and that expired (`soft_logout`).
fn expired_token() -> serde_json::Value {
    json!({"errcode": "M_UNKNOWN_TOKEN", "error": "Access token has expired", "soft_logout": true})
}

async fn serve_pages(server: &MockServer, third_page: ResponseTemplate) {
    Mock::given(method("GET"))
        .and(path(USERS))
        .and(query_param_is_missing("from"))
        .respond_with(page(0, 6))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(USERS))
        .and(query_param("from", "2"))
        .respond_with(page(1, 6))
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(USERS))
        .and(query_param("from", "4"))
        .respond_with(third_page)
        .mount(server)
        .await;
}

/// Six accounts synced from a healthy mock into a fresh registry; returns
/// a lifeboat configured for `server`.
async fn registry_with_six_accounts(registry: &TestDatabase, server: &MockServer) -> Lifeboat {
    let healthy = mock_synapse().await;
    serve_pages(&healthy, page(2, 6)).await;
    let config = |url: &str| {
        format!(
            "[homeserver]\nurl = \"{url}\"\nserver_name = \"mock.test\"\nadmin_token = \"{TOKEN}\"\n\
             retries = 1\ntimeout = \"1s\"\n[registry]\nurl = \"{}\"\n[sync]\npage_size = 2\n",
            registry.url()
        )
    };
    let lifeboat = Lifeboat::with_config(&config(&healthy.uri()));
    let sync = lifeboat.run(&["sync"]).await;
    assert_eq!(sync.code, 0, "{sync:?}");
    lifeboat.write_config(&config(&server.uri()));
    lifeboat
}

async fn assert_nobody_missing(lifeboat: &Lifeboat) {
    let missing = lifeboat.run(&["users", "list", "--state", "missing", "--json"]).await.json();
    assert_eq!(missing, json!([]), "no account may be marked missing");
    let all = lifeboat.run(&["users", "list", "--json"]).await.json();
    assert_eq!(all.as_array().unwrap().len(), 6);
}

/// Synapse under Matrix Authentication Service refuses to be asked for
/// guests (it has none): the listing is read without them, not failed on
/// every round (which would leave a wipe unseen).
#[tokio::test]
async fn a_synapse_that_refuses_the_guests_parameter_is_listed_without_it() {
    let registry = TestDatabase::sqlite();
    let server = mock_synapse().await;
    let refusal = json!({"errcode": "M_INVALID_PARAM",
                         "error": "The guests parameter is not supported when delegating to MAS."});
    Mock::given(method("GET"))
        .and(path(USERS))
        .and(query_param("guests", "true"))
        .respond_with(ResponseTemplate::new(400).set_body_json(refusal))
        .with_priority(1)
        .mount(&server)
        .await;
    serve_pages(&server, page(2, 6)).await;
    let lifeboat = registry_with_six_accounts(&registry, &server).await;

    let sync = lifeboat.run(&["sync"]).await;
    assert_eq!(sync.code, 0, "{sync:?}");
    assert_eq!(lifeboat.run(&["check"]).await.code, 0);
    assert_nobody_missing(&lifeboat).await;
}

/// A proxy that forwards the client API but not the listing: one sentence
/// that says where homeserver.url must point, not a bare 404.
#[tokio::test]
async fn a_listing_a_proxy_does_not_forward_is_named_with_its_fix() {
    let registry = TestDatabase::sqlite();
    let server = mock_synapse().await;
    Mock::given(method("GET")).and(path(USERS)).respond_with(ResponseTemplate::new(404)).mount(&server).await;
    let lifeboat = registry_with_six_accounts(&registry, &server).await;

    let sync = lifeboat.run(&["sync"]).await;
    assert_eq!(sync.code, 1, "{sync:?}");
    assert!(sync.stderr.contains("must point at Synapse itself"), "{sync:?}");
    assert_nobody_missing(&lifeboat).await;
}

#[tokio::test]
async fn a_500_on_page_3_marks_no_account_missing() {
    let registry = TestDatabase::sqlite();
    let server = mock_synapse().await;
    serve_pages(&server, ResponseTemplate::new(500)).await;
    let lifeboat = registry_with_six_accounts(&registry, &server).await;

    let sync = lifeboat.run(&["sync"]).await;
    assert_eq!(sync.code, 1, "{sync:?}");
    assert!(sync.stderr.contains("the listing failed, so the registry was left unchanged"), "{sync:?}");
    assert!(sync.stderr.contains("500"), "{sync:?}");
    let check = lifeboat.run(&["check"]).await;
    assert_eq!(check.code, 1, "a failed listing is 'could not tell', never loss: {check:?}");
    assert_nobody_missing(&lifeboat).await;
}

/// An account registered again between the listing and the reading of its
/// details (after a rollback of Synapse's database, say) is not its
/// person's: its email is never taken for one of the person's contacts.
#[tokio::test]
async fn details_of_an_account_registered_again_since_the_listing_are_not_its_persons() {
    let registry = TestDatabase::sqlite();
    let server = mock_synapse().await;
    serve_pages(&server, page(2, 6)).await;
    let an_hour_later = user(1)["creation_ts"].as_i64().unwrap() + 3_600_000;
    let threepid = json!({"medium": "email", "address": "squatter@evil.example", "validated_at": 1, "added_at": 1});
    let details = json!({"name": "@user1:mock.test", "creation_ts": an_hour_later, "threepids": [threepid]});
    Mock::given(method("GET"))
        .and(path_regex("user1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(details))
        .with_priority(1)
        .mount(&server)
        .await;
    let lifeboat = Lifeboat::with_config(&format!(
        "[homeserver]\nurl = \"{}\"\nserver_name = \"mock.test\"\nadmin_token = \"{TOKEN}\"\n\
         retries = 1\ntimeout = \"1s\"\n[registry]\nurl = \"{}\"\n[sync]\npage_size = 2\n",
        server.uri(),
        registry.url()
    ));
    let sync = lifeboat.run(&["sync"]).await;
    assert_eq!(sync.code, 0, "{sync:?}");
    let shown = lifeboat.run(&["users", "show", "@user1:mock.test", "--json"]).await.json();
    assert_eq!(shown["contacts"], json!([]), "{shown}");
}

#[tokio::test]
async fn a_timeout_mid_listing_marks_no_account_missing() {
    let registry = TestDatabase::sqlite();
    let server = mock_synapse().await;
    serve_pages(&server, page(2, 6).set_delay(Duration::from_secs(3))).await;
    let lifeboat = registry_with_six_accounts(&registry, &server).await;

    let sync = lifeboat.run(&["sync"]).await;
    assert_eq!(sync.code, 1, "{sync:?}");
    assert!(sync.stderr.contains("timed out"), "{sync:?}");
    assert_eq!(lifeboat.run(&["check"]).await.code, 1);
    assert_nobody_missing(&lifeboat).await;
}

#[tokio::test]
async fn a_listing_that_changes_while_read_marks_no_account_missing() {
    let registry = TestDatabase::sqlite();
    let server = mock_synapse().await;
    // Synapse counts more accounts than the pages hold: someone was skipped.
    Mock::given(method("GET"))
        .and(path(USERS))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"users": [user(0)], "total": 7})))
        .mount(&server)
        .await;
    let lifeboat = registry_with_six_accounts(&registry, &server).await;

    let sync = lifeboat.run(&["sync"]).await;
    assert_eq!(sync.code, 1, "{sync:?}");
    assert!(sync.stderr.contains("kept changing"), "{sync:?}");
    assert_eq!(lifeboat.run(&["check"]).await.code, 1);
    assert_nobody_missing(&lifeboat).await;
}

#[tokio::test]
async fn a_rate_limited_page_is_retried_after_the_time_synapse_asks() {
    let registry = TestDatabase::sqlite();
    let server = mock_synapse().await;
    Mock::given(method("GET"))
        .and(path(USERS))
        .and(query_param("from", "2"))
        .respond_with(
            ResponseTemplate::new(429).set_body_json(json!({"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 3000})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    serve_pages(&server, page(2, 6)).await;
    let lifeboat = registry_with_six_accounts(&registry, &server).await;

    let started = std::time::Instant::now();
    let sync = lifeboat.run(&["sync", "--json"]).await;
    assert_eq!(sync.code, 0, "{sync:?}");
    // Far above the backoff it would use otherwise (at most 250 ms) and
    // the rest of the run.
    assert!(started.elapsed() >= Duration::from_secs(3), "the retry waited as asked");
    assert_eq!(sync.json()["report"]["present"], 6);
}

#[tokio::test]
async fn garbage_from_synapse_is_a_clear_error_not_a_loss() {
    let registry = TestDatabase::sqlite();
    let server = mock_synapse().await;
    serve_pages(&server, ResponseTemplate::new(200).set_body_string("<html>proxy error</html>")).await;
    let lifeboat = registry_with_six_accounts(&registry, &server).await;

    let check = lifeboat.run(&["check"]).await;
    assert_eq!(check.code, 1, "{check:?}");
    assert!(check.stderr.contains("sent a response lifeboat cannot use"), "{check:?}");
    assert_nobody_missing(&lifeboat).await;
}

#[tokio::test]
async fn the_admin_token_never_appears_in_output_or_logs() {
    let registry = TestDatabase::sqlite();
    let server = wiped_mock_synapse().await;
    let lifeboat = registry_with_six_accounts(&registry, &server).await;

    let check = lifeboat.run(&["-vv", "check", "--json"]).await;
    assert_eq!(
        check.code, 3,
        "the token that worked, now unknown while Synapse answers, is a suspected reset: {check:?}"
    );
    let report = check.json();
    assert_eq!(report["verdict"], "suspected_reset");
    assert_eq!(report["listing_complete"], false);
    assert_eq!(report["missing"].as_array().unwrap().len(), 6, "a wipe loses everyone: {report}");
    let sync = lifeboat.run(&["-vv", "sync"]).await;
    assert_eq!(sync.code, 1, "{sync:?}");
    assert!(sync.stderr.contains("M_UNKNOWN_TOKEN"), "{sync:?}");
    let config = lifeboat.run(&["config", "check"]).await;
    for run in [&check, &sync, &config] {
        assert!(!run.stdout.contains(TOKEN) && !run.stderr.contains(TOKEN), "token leaked: {run:?}");
    }
}

/// After a first wipe lifeboat works with the token it recovered; a second
/// wipe kills that one too, and is still read as a reset (with the old
/// configured token there or removed), not as "could not tell".
#[tokio::test]
async fn a_second_wipe_after_a_recovery_is_still_a_suspected_reset() {
    use sha2::Digest;
    let registry = TestDatabase::sqlite();
    let server = wiped_mock_synapse().await;
    let lifeboat = registry_with_six_accounts(&registry, &server).await;
    let recovered = "syt_recovered_after_the_first_wipe";
    let client = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let own = lifeboat::user_id::UserId::parse("@lifeboat:mock.test").unwrap();
    let actor = lifeboat::registry::Actor::cli();
    client
        .store_service_credential(&own, recovered, None, lifeboat::registry::CredentialFrom::Recovery, &actor)
        .await
        .unwrap();
    let fingerprint = hex::encode(sha2::Sha256::digest(recovered.as_bytes()));
    client.set_setting(lifeboat::check::WORKING_TOKEN_SETTING, &fingerprint).await.unwrap();
    client.close().await;

    let check = lifeboat.run(&["check", "--json"]).await;
    assert_eq!(check.code, 3, "the recovered token, now unknown: {check:?}");
    assert_eq!(check.json()["verdict"], "suspected_reset");
    let without_configured = format!(
        "[homeserver]\nurl = \"{}\"\nserver_name = \"mock.test\"\nretries = 1\ntimeout = \"1s\"\n\
         [registry]\nurl = \"{}\"\n[sync]\npage_size = 2\n",
        server.uri(),
        registry.url()
    );
    lifeboat.write_config(&without_configured);
    let check = lifeboat.run(&["check", "--json"]).await;
    assert_eq!(check.code, 3, "with admin_token removed after the recovery, as the README allows: {check:?}");
}

/// A token that expired (401 with `soft_logout`, as under refresh tokens or
/// a login provider) is one Synapse still knows: no wipe, nobody missing.
#[tokio::test]
async fn an_expired_admin_token_is_not_read_as_a_reset() {
    let registry = TestDatabase::sqlite();
    let server = MockServer::start().await;
    answer_server_version(&server).await;
    let expired = expired_token();
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(401).set_body_json(expired)).mount(&server).await;
    let lifeboat = registry_with_six_accounts(&registry, &server).await;

    let check = lifeboat.run(&["check"]).await;
    assert_eq!(check.code, 1, "{check:?}");
    assert!(check.stderr.contains("expired") && check.stderr.contains("homeserver.admin_token"), "{check:?}");
    assert_eq!(lifeboat.run(&["sync"]).await.code, 1);
    assert_nobody_missing(&lifeboat).await;
}

/// lifeboat's own token, expired (a homeserver with session lifetimes),
/// is renewed by logging in again, not reported as an error for good.
#[tokio::test]
async fn lifeboats_own_expired_token_is_renewed_by_logging_in_again() {
    let registry = TestDatabase::sqlite();
    let server = MockServer::start().await;
    let expired = expired_token();
    Mock::given(method("GET"))
        .and(path("/_matrix/client/v3/account/whoami"))
        .respond_with(ResponseTemplate::new(401).set_body_json(expired))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/_synapse/admin/v1/register"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"nonce": "n"})))
        .mount(&server)
        .await;
    let taken = json!({"errcode": "M_USER_IN_USE", "error": "User ID already taken."});
    Mock::given(method("POST"))
        .and(path("/_synapse/admin/v1/register"))
        .respond_with(ResponseTemplate::new(400).set_body_json(taken))
        .mount(&server)
        .await;
    let renewed = json!({"user_id": "@lifeboat:mock.test", "access_token": "syt_renewed", "device_id": "D"});
    Mock::given(method("POST"))
        .and(path("/_matrix/client/v3/login"))
        .respond_with(ResponseTemplate::new(200).set_body_json(renewed))
        .mount(&server)
        .await;
    let own = lifeboat::user_id::UserId::parse("@lifeboat:mock.test").unwrap();
    let client = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let actor = lifeboat::registry::Actor::cli();
    client
        .store_service_credential(&own, "syt_expired", None, lifeboat::registry::CredentialFrom::Recovery, &actor)
        .await
        .unwrap();
    let lifeboat = Lifeboat::with_config(&format!(
        "[homeserver]\nurl = \"{}\"\nserver_name = \"mock.test\"\nregistration_shared_secret = \"s\"\n\
         retries = 0\ntimeout = \"2s\"\n[registry]\nurl = \"{}\"\n",
        server.uri(),
        registry.url()
    ));

    let recovered = lifeboat.run(&["recover"]).await;
    assert_eq!(recovered.code, 0, "{recovered:?}");
    let stored = client.service_credential(&own).await.unwrap().unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&stored.access_token), "syt_renewed");
}

/// lifeboat's own token expired and the configured one logged out: a
/// Synapse that still knows a token was not wiped. "Could not tell", never
/// "everyone is missing" because the logged-out token once worked.
#[tokio::test]
async fn an_expired_own_token_beside_a_logged_out_one_is_no_reset() {
    let registry = TestDatabase::sqlite();
    let server = MockServer::start().await;
    let expired = expired_token();
    Mock::given(wiremock::matchers::header("authorization", "Bearer syt_own_expired"))
        .respond_with(ResponseTemplate::new(401).set_body_json(expired))
        .mount(&server)
        .await;
    answer_server_version(&server).await;
    let unknown = json!({"errcode": "M_UNKNOWN_TOKEN", "error": "Unknown token"});
    Mock::given(method("GET")).respond_with(ResponseTemplate::new(401).set_body_json(unknown)).mount(&server).await;
    let lifeboat = registry_with_six_accounts(&registry, &server).await;
    let own = lifeboat::user_id::UserId::parse("@lifeboat:mock.test").unwrap();
    let client = lifeboat::registry::Registry::connect(&registry.url()).await.unwrap();
    let actor = lifeboat::registry::Actor::cli();
    client
        .store_service_credential(&own, "syt_own_expired", None, lifeboat::registry::CredentialFrom::Recovery, &actor)
        .await
        .unwrap();

    let check = lifeboat.run(&["check"]).await;
    assert_eq!(check.code, 1, "{check:?}");
    assert!(check.stderr.contains("expired"), "{check:?}");
    assert_nobody_missing(&lifeboat).await;
}

/// A proxy in front of Synapse that refuses the admin API with a page of
/// its own (a 401 or 403 with no Matrix error) is named as the cause, not
/// the admin token, and says nothing about the accounts.
#[tokio::test]
async fn a_proxy_refusing_the_admin_api_is_named_rather_than_the_token() {
    for status in [401, 403] {
        let registry = TestDatabase::sqlite();
        let server = mock_synapse().await;
        let lifeboat = registry_with_six_accounts(&registry, &server).await;
        let refused = ResponseTemplate::new(status).set_body_raw("<html><body>Forbidden</body></html>", "text/html");
        Mock::given(method("GET")).and(path(USERS)).respond_with(refused).with_priority(1).mount(&server).await;

        let check = lifeboat.run(&["check"]).await;
        assert_eq!(check.code, 1, "{status}: {check:?}");
        assert!(check.stderr.contains("a proxy in front of Synapse refused"), "{status}: {check:?}");
        assert!(!check.stderr.contains("admin token"), "{status}: {check:?}");
        assert_nobody_missing(&lifeboat).await;
    }
}

/// A Synapse that answers but knows no token: what a wipe looks like.
async fn wiped_mock_synapse() -> MockServer {
    let server = MockServer::start().await;
    let unknown =
        ResponseTemplate::new(401).set_body_json(json!({"errcode": "M_UNKNOWN_TOKEN", "error": "Unknown token"}));
    answer_server_version(&server).await;
    Mock::given(method("GET")).respond_with(unknown).mount(&server).await;
    server
}

#[tokio::test]
async fn a_token_that_never_worked_is_not_read_as_a_reset() {
    let registry = TestDatabase::sqlite();
    let server = wiped_mock_synapse().await;
    let lifeboat =
        registry_with_six_accounts(&registry, &server).await.env("LIFEBOAT__HOMESERVER__ADMIN_TOKEN", "syt_mistyped");
    let check = lifeboat.run(&["check"]).await;
    assert_eq!(check.code, 1, "a mistyped token says nothing about the accounts: {check:?}");
    assert!(check.stderr.contains("could not tell") && check.stderr.contains("M_UNKNOWN_TOKEN"), "{check:?}");
}

#[tokio::test]
async fn check_before_any_sync_cannot_tell() {
    let registry = TestDatabase::sqlite();
    let server = mock_synapse().await;
    serve_pages(&server, page(2, 6)).await;
    let lifeboat = Lifeboat::with_config(&format!(
        "[homeserver]\nurl = \"{}\"\nserver_name = \"mock.test\"\nadmin_token = \"{TOKEN}\"\n[registry]\nurl = \"{}\"\n",
        server.uri(),
        registry.url()
    ));
    let check = lifeboat.run(&["check"]).await;
    assert_eq!(check.code, 1, "{check:?}");
    assert!(check.stderr.contains("never completed a sync"), "{check:?}");
}

#[tokio::test]
async fn a_url_pointing_at_another_server_is_not_read_as_loss() {
    let registry = TestDatabase::sqlite();
    let server = mock_synapse().await;
    Mock::given(method("GET"))
        .and(path(USERS))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"users": [{"name": "@x:staging.test"}], "total": 1})),
        )
        .mount(&server)
        .await;
    let lifeboat = registry_with_six_accounts(&registry, &server).await;
    for command in ["check", "sync"] {
        let run = lifeboat.run(&[command]).await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(
            run.stderr.contains("@x:staging.test, which is not an account of homeserver.server_name = mock.test"),
            "{run:?}"
        );
    }
    assert_nobody_missing(&lifeboat).await;
}

#[tokio::test]
async fn a_synapse_that_refuses_to_create_accounts_is_asked_for_a_few_holds_not_one_per_lost_id() {
    let registry = TestDatabase::sqlite();
    let config = |url: &str| {
        format!(
            "[homeserver]\nurl = \"{url}\"\nserver_name = \"mock.test\"\nadmin_token = \"{TOKEN}\"\n\
             retries = 1\ntimeout = \"1s\"\n[registry]\nurl = \"{}\"\n",
            registry.url()
        )
    };
    let listing = |users: Vec<Value>| {
        let total = users.len();
        ResponseTemplate::new(200).set_body_json(json!({"users": users, "total": total}))
    };
    let before = mock_synapse().await;
    Mock::given(method("GET")).and(path(USERS)).respond_with(listing((0..40).map(user).collect())).mount(&before).await;
    let lifeboat = Lifeboat::with_config(&config(&before.uri()));
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);

    // Wiped, on a server whose accounts Matrix Authentication Service makes:
    // every creation through the admin API is refused.
    let wiped = mock_synapse().await;
    Mock::given(method("GET")).and(path(USERS)).respond_with(listing(Vec::new())).mount(&wiped).await;
    Mock::given(method("PUT"))
        .and(wiremock::matchers::path_regex("^/_synapse/admin/v2/users/"))
        .respond_with(
            ResponseTemplate::new(403).set_body_json(json!({"errcode": "M_FORBIDDEN", "error": "delegated to MAS"})),
        )
        .mount(&wiped)
        .await;
    lifeboat.write_config(&config(&wiped.uri()));
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let made = lifeboat.run(&["holds", "make"]).await;
    assert_ne!(made.code, 0, "{made:?}");
    assert!(made.stderr.contains("Matrix Authentication Service"), "{made:?}");
    let asked = wiped.received_requests().await.unwrap().iter().filter(|r| r.method.as_str() == "PUT").count();
    assert!(asked <= lifeboat::holds::HOLD_CONCURRENCY, "{asked} creations asked of 40 lost IDs");
}

/// Pages no complete listing can be made of: a count that shrinks (a
/// database failed over to a replica that lags, say), a page without its
/// count, a next page that goes back or comes again (a loop that would
/// never end). Each is
/// "could not tell", and nobody is marked missing.
#[tokio::test]
async fn pages_that_cannot_make_a_complete_listing_mark_no_account_missing() {
    let last_of_two = json!({"users": [user(2), user(3)], "total": 4});
    let first_without_count = json!({"users": [user(0), user(1)], "next_token": "2"});
    let last_without_count = json!({"users": [user(2), user(3)]});
    let going_back = json!({"users": [user(4), user(5)], "total": 6, "next_token": "2"});
    let first_to_a = json!({"users": [user(0), user(1)], "total": 6, "next_token": "a"});
    let a_to_b = json!({"users": [user(2), user(3)], "total": 6, "next_token": "b"});
    let b_to_a = json!({"users": [user(4), user(5)], "total": 6, "next_token": "a"});
    for (pages, said) in [
        (vec![(Some("2"), last_of_two)], "kept changing"),
        (vec![(None, first_without_count), (Some("2"), last_without_count)], "without its total count"),
        (vec![(Some("4"), going_back)], "does not move past"),
        (vec![(None, first_to_a), (Some("a"), a_to_b), (Some("b"), b_to_a)], "does not move past"),
    ] {
        let registry = TestDatabase::sqlite();
        let server = mock_synapse().await;
        serve_pages(&server, page(2, 6)).await;
        for (from, body) in pages {
            let asked = Mock::given(method("GET")).and(path(USERS));
            let asked = match from {
                Some(from) => asked.and(query_param("from", from)),
                None => asked.and(query_param_is_missing("from")),
            };
            asked.respond_with(ResponseTemplate::new(200).set_body_json(body)).with_priority(1).mount(&server).await;
        }
        let lifeboat = registry_with_six_accounts(&registry, &server).await;

        let sync = tokio::time::timeout(Duration::from_secs(60), lifeboat.run(&["sync"])).await.expect("sync ends");
        assert_eq!(sync.code, 1, "{said}: {sync:?}");
        assert!(sync.stderr.contains(said), "{sync:?}");
        let check = tokio::time::timeout(Duration::from_secs(60), lifeboat.run(&["check"])).await.expect("check ends");
        assert_eq!(check.code, 1, "{said}: {check:?}");
        assert_nobody_missing(&lifeboat).await;
    }
}
