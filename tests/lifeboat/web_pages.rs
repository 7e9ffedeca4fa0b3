//! The self-service web page, served by the real `lifeboat serve`: in
//! headless Chromium for the story of a person coming back after a wipe,
//! over plain HTTP for the guards (CSRF, headers, limits, proxies).

use std::time::{Duration, Instant};

use lifeboat::registry::Registry;

use crate::harness::browser::Browser;
use crate::harness::{Lifeboat, TestDatabase, TestSmtp, TestSynapse, eventually, free_port, unique};

const POSTMORTEM: &str =
    "# What happened\n\nOur database was **lost** during maintenance.\n\n<script>alert(1)</script>\n";

/// A running `lifeboat serve`, stopped when dropped.
struct Served {
    url: String,
    child: tokio::process::Child,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Adds a `[web]` section on a free port to `base` and starts serve (its
/// log in `serve.log`); its public URL is where it listens unless `web_extra` names another.
async fn serve(lifeboat: &Lifeboat, base: &str, web_extra: &str) -> Served {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let public_url = if web_extra.contains("public_url") { String::new() } else { format!("public_url = \"{url}\"\n") };
    lifeboat.write_config(&format!(
        "{base}\n[watch]\ninterval = \"1h\"\n\n[web]\nbind = \"127.0.0.1:{port}\"\n{public_url}\
         admin_contact = \"admin@example.org\"\n{web_extra}\n"
    ));
    let child = lifeboat.spawn_serve();
    let served = Served { url, child };
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(response) = http.get(format!("{}/healthz", served.url)).send().await
            && response.status().is_success()
        {
            return served;
        }
        assert!(Instant::now() < deadline, "lifeboat serve did not answer /healthz within 30s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_mail(smtp: &TestSmtp, to: &str, count: usize) -> Vec<crate::harness::smtp::ReceivedMail> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mails = smtp.messages_to(to);
        if mails.len() >= count {
            return mails;
        }
        assert!(Instant::now() < deadline, "no mail to {to} within 20s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn link_in(mail: &crate::harness::smtp::ReceivedMail, path: &str) -> String {
    let text = mail.text.as_deref().unwrap_or("");
    text.split_whitespace().find(|word| word.contains(path)).unwrap_or_else(|| panic!("a link in:\n{text}")).to_owned()
}

fn mail_base(synapse: &TestSynapse, registry: &TestDatabase, smtp: &TestSmtp) -> String {
    format!(
        "[homeserver]\nurl = \"{}\"\nserver_name = \"{}\"\nadmin_token = \"{}\"\nregistration_shared_secret = \"{}\"\n\
         retries = 1\ntimeout = \"10s\"\n\n[registry]\nurl = \"{}\"\n\n[email]\nsmtp_url = \"{}\"\n\
         from = \"Lifeboat <lifeboat@lifeboat.test>\"\n\n\
         [recovery]\n# The token page's own path (claims: tests/lifeboat/holds.rs).\nmode = \"token\"\nhold = \"off\"\n",
        synapse.url,
        synapse.server_name,
        synapse.admin_token(),
        synapse.shared_secret,
        registry.url(),
        smtp.smtp_url()
    )
}

/// One person with an email, synced, then the seed incident and recovery:
/// everything a token request needs but the incident.
struct Wiped {
    synapse: TestSynapse,
    registry: TestDatabase,
    smtp: TestSmtp,
    base: String,
    lifeboat: Lifeboat,
    name: String,
    email: String,
}

async fn wiped(prefix: &str) -> Wiped {
    let synapse = TestSynapse::start();
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let base = mail_base(&synapse, &registry, &smtp);
    let lifeboat = Lifeboat::with_config(&base);
    std::fs::write(lifeboat.dir().join("postmortem.md"), POSTMORTEM).unwrap();
    let name = unique(prefix);
    let email = format!("{name}@example.org");
    synapse.create_user(&name, &[&email]).await;
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    synapse.wipe();
    assert_eq!(lifeboat.run(&["recover"]).await.code, 0);
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    Wiped { synapse, registry, smtp, base, lifeboat, name, email }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_person_affected_by_a_wipe_gets_a_token_from_the_page_and_registers_with_it() {
    let Wiped { synapse, registry, smtp, base, lifeboat, name, email } = wiped("web").await;
    let open = lifeboat
        .run(&["incident", "open", "--title", "Database lost", "--postmortem", "postmortem.md", "--json"])
        .await;
    assert_eq!(open.code, 0, "{open:?}");

    let served = serve(&lifeboat, &base, "rate_limit_per_target = 3\nrate_limit_per_ip = 50\n").await;
    let browser = Browser::start().await;

    browser.goto(&served.url).await;
    let status = browser.body().await;
    assert!(status.contains("Database lost") && status.contains("during maintenance"), "{status}");
    assert_eq!(browser.text(".postmortem strong").await, "lost", "the postmortem is rendered from Markdown");
    assert!(!browser.client.source().await.unwrap().contains("<script>alert"), "and sanitized");
    assert!(status.contains("admin@example.org"), "the admin contact is shown: {status}");
    browser.screenshot("status").await;

    // Someone who is not in the registry: the same answer, no mail.
    browser.goto(&format!("{}/token", served.url)).await;
    browser.screenshot("token-form").await;
    browser.fill("#who", "nobody-here@example.org").await;
    browser.click("button[type=submit]").await;
    let unknown_answer = browser.text("main").await;

    browser.goto(&format!("{}/token", served.url)).await;
    browser.fill("#who", &email.to_uppercase()).await;
    browser.click("button[type=submit]").await;
    let known_answer = browser.text("main").await;
    assert!(known_answer.contains("Check your email"), "{known_answer}");
    assert_eq!(unknown_answer, known_answer, "known and unknown addresses get the same page");
    browser.screenshot("token-requested").await;

    let mails = wait_for_mail(&smtp, &email, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(smtp.messages_to("nobody-here@example.org").is_empty(), "nothing is mailed to an unknown address");
    assert_eq!(smtp.messages().len(), 1, "one mail, to the registry's address");
    let link = link_in(&mails[0], "/token/open?");
    let links = Registry::connect(&registry.url()).await.unwrap();
    let (created, expires): (i64, i64) =
        sqlx::query_as("SELECT created_at, expires_at FROM web_links").fetch_one(links.pool()).await.unwrap();
    assert!((expires - created - 30 * 60 * 1000).abs() < 5_000, "the link works for 30 minutes: {created} {expires}");

    // The link's ID alone proves nothing: with its signature altered it is
    // refused (and still works below with the right one).
    let last = link.chars().last().unwrap();
    browser.goto(&format!("{}{}", &link[..link.len() - 1], if last == '0' { '1' } else { '0' })).await;
    assert!(browser.body().await.contains("This link does not work"), "an altered signature is refused");

    browser.goto(&link).await;
    browser.screenshot("token-confirm").await;
    browser.click("#show-token").await;
    let token = browser.text("#token").await;
    assert!(browser.body().await.contains(&format!("Your old username, {name}")), "plain steps to register");
    browser.screenshot("token").await;

    let (code, body) = synapse.register_with_token(&name, &token).await;
    assert_eq!(code, 200, "registration with the token from the page succeeds: {body}");
    let tokens = lifeboat.run(&["tokens", "list", "--json", "--reveal"]).await.json();
    let row = tokens.as_array().unwrap().iter().find(|row| row["token"] == token.as_str()).cloned();
    assert_eq!(row.unwrap_or_default()["state"], "used", "the state is Synapse's: {tokens}");

    browser.goto(&link).await;
    assert!(browser.body().await.contains("This link does not work"), "the link works a single time");
    browser.screenshot("link-used").await;

    // Asking again, however often (the person, or someone naming them by
    // Matrix ID or email), is never refused, and mails one new link while
    // it works.
    let matrix_id = synapse.user_id(&name);
    for (attempt, who) in [&matrix_id, &email, &email, &matrix_id].into_iter().enumerate() {
        browser.goto(&format!("{}/token", served.url)).await;
        browser.fill("#who", who).await;
        browser.click("button[type=submit]").await;
        let answer = browser.text("main").await;
        assert!(answer.contains("Check your email") && answer.contains("still works"), "attempt {attempt}: {answer}");
        if attempt == 0 {
            wait_for_mail(&smtp, &email, 2).await;
        }
    }
    browser.screenshot("asked-again").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.messages_to(&email).len(), 2, "one new link for four requests");

    browser.client.set_window_size(390, 844).await.unwrap();
    browser.goto(&served.url).await;
    let status = browser.text("main").await;
    let since = status.lines().find(|line| line.starts_with("Since ")).unwrap_or_default().to_owned();
    assert!(
        since.ends_with(" UTC") && !since.trim_end_matches(" UTC").contains('T'),
        "times as in the emails: {status}"
    );
    browser.screenshot("status-phone").await;
    browser.close().await;
}

/// Asks `/token` for a way back in for `who`, as the form does; the status.
async fn ask_for_a_way_back(http: &reqwest::Client, served: &Served, who: &str) -> u16 {
    let token_url = format!("{}/token", served.url);
    let (cookie, csrf) = form_csrf(http, &token_url).await;
    let request = format!("who={}&csrf={csrf}", who.replace('@', "%40"));
    post_form(http, &token_url, Some(&cookie), &request).await.0
}

/// A registry with one affected account and its email contact, made
/// directly (no Synapse needed for the guards). Returns the contact id.
async fn affected_person(registry: &TestDatabase, user_id: &str, email: &str) -> i64 {
    let registry = Registry::connect(&registry.url()).await.unwrap();
    let pool = registry.pool();
    sqlx::query("INSERT INTO accounts (user_id, first_seen_at, state) VALUES ($1, 1, 'missing')")
        .bind(user_id)
        .execute(pool)
        .await
        .unwrap();
    let (contact,): (i64,) = sqlx::query_as(
        "INSERT INTO contacts (user_id, kind, address, source, verified_at, added_at) \
         VALUES ($1, 'email', $2, 'synapse', 1, 1) RETURNING id",
    )
    .bind(user_id)
    .bind(email)
    .fetch_one(pool)
    .await
    .unwrap();
    let (incident,): (i64,) = sqlx::query_as(
        "INSERT INTO incidents (title, postmortem, scope, opened_at) VALUES ('Lost', 'Lost.', 'missing', 1) RETURNING id",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO incident_accounts (incident_id, user_id, state_at_opening) VALUES ($1, $2, 'missing')")
        .bind(incident)
        .bind(user_id)
        .execute(pool)
        .await
        .unwrap();
    registry.close().await;
    contact
}

/// A config with a registry and nothing else that works.
fn base_without_synapse_or_mail(registry: &TestDatabase) -> String {
    format!(
        "[homeserver]\nurl = \"http://127.0.0.1:9\"\nserver_name = \"example.org\"\nadmin_token = \"tok\"\n\
         retries = 0\n\n[registry]\nurl = \"{}\"\n",
        registry.url()
    )
}

fn base_without_synapse(registry: &TestDatabase, smtp: &TestSmtp) -> String {
    format!(
        "[homeserver]\nurl = \"http://127.0.0.1:9\"\nserver_name = \"example.org\"\nretries = 0\ntimeout = \"1s\"\n\n\
         [registry]\nurl = \"{}\"\n\n[email]\nsmtp_url = \"{}\"\nfrom = \"Lifeboat <lifeboat@lifeboat.test>\"\n",
        registry.url(),
        smtp.smtp_url()
    )
}

/// A form page's CSRF cookie and token, as a browser would get them.
pub(crate) async fn form_csrf(http: &reqwest::Client, url: &str) -> (String, String) {
    let response = http.get(url).send().await.unwrap();
    let cookie = response
        .headers()
        .get("set-cookie")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .expect("a form page sets the CSRF cookie")
        .to_owned();
    let html = response.text().await.unwrap();
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the form carries a CSRF token")
        .to_owned();
    (cookie, token)
}

pub(crate) async fn post_form(http: &reqwest::Client, url: &str, cookie: Option<&str>, body: &str) -> (u16, String) {
    post_form_request(http.post(url), cookie, body).await
}

/// [`post_form`] from a client at `ip`, as a trusted proxy in front of
/// lifeboat tells it.
pub(crate) async fn post_form_from(
    ip: &str,
    http: &reqwest::Client,
    url: &str,
    cookie: Option<&str>,
    body: &str,
) -> (u16, String) {
    post_form_request(http.post(url).header("x-forwarded-for", ip), cookie, body).await
}

async fn post_form_request(request: reqwest::RequestBuilder, cookie: Option<&str>, body: &str) -> (u16, String) {
    let mut request = request.header("content-type", "application/x-www-form-urlencoded").body(body.to_owned());
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

/// The subscription page is for this homeserver's accounts: for another
/// server's ID it says so and mails nothing (which would let anyone send
/// text of their choosing to any address from here).
#[tokio::test(flavor = "multi_thread")]
async fn the_subscription_page_mails_nothing_for_another_servers_id_nor_for_one_no_homeserver_makes() {
    let (registry, smtp) = (TestDatabase::sqlite(), TestSmtp::start(None));
    let (lifeboat, http) = (Lifeboat::with_config(""), reqwest::Client::new());
    let served = serve(&lifeboat, &base_without_synapse(&registry, &smtp), "").await;
    let url = format!("{}/subscribe", served.url);
    let (cookie, csrf) = form_csrf(&http, &url).await;
    let form = format!("csrf={csrf}&matrix_id=%40see-evil.example%3Aelsewhere.example&email=someone%40example.net");
    let (code, page) = post_form(&http, &url, Some(&cookie), &form).await;
    assert_eq!(code, 400, "{page}");
    assert!(page.contains("your account on example.org"), "{page}");
    // Blank-looking characters (U+2800) make the ID a sentence in our mail.
    let sentence = ["%40Your", "mailbox", "closes.", "Confirm", "at", "evil.example%3Aexample.org"].join("%E2%A0%80");
    let form = format!("csrf={csrf}&matrix_id={sentence}&email=someone%40example.net");
    let (code, page) = post_form(&http, &url, Some(&cookie), &form).await;
    assert!(code == 400 && page.contains("Please check what you entered"), "{code} {page}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(smtp.messages().is_empty(), "nothing mailed");
    // An ID a homeserver makes is mailed its link as ever, without the ID:
    // a visitor's text, even in Matrix's own characters, reads as ours.
    let lure = "%40Your_mailbox_closes_today.Keep_it_at_www.evil.example%2Fkeep%3Aexample.org";
    let form = format!("csrf={csrf}&matrix_id={lure}&email=someone.else%40example.net");
    assert_eq!(post_form(&http, &url, Some(&cookie), &form).await.0, 200);
    eventually("the link is mailed", Duration::from_secs(30), || async { smtp.messages().len() == 1 }).await;
    let mail = smtp.messages().pop().unwrap();
    let text = format!("{:?} {:?}", mail.text, mail.html);
    assert!(!text.contains("evil.example"), "{text}");
}

/// The CSRF cookie a form page sets.
async fn csrf_cookie_of(http: &reqwest::Client, url: &str) -> String {
    let response = http.get(url).send().await.unwrap();
    let cookie = response.headers().get("set-cookie").expect("a new browser gets the cookie");
    cookie.to_str().unwrap().to_owned()
}

/// Served over https (behind a TLS proxy), the CSRF cookie is `Secure`, so
/// a browser never sends it over plain http; over plain http it cannot be.
#[tokio::test(flavor = "multi_thread")]
async fn the_csrf_cookie_is_secure_when_the_page_is_public_over_https() {
    let (registry, smtp) = (TestDatabase::sqlite(), TestSmtp::start(None));
    let (lifeboat, http) = (Lifeboat::with_config(""), reqwest::Client::new());
    let plain = serve(&lifeboat, &base_without_synapse(&registry, &smtp), "").await;
    let cookie = csrf_cookie_of(&http, &format!("{}/token", plain.url)).await;
    assert!(cookie.contains("HttpOnly") && !cookie.contains("Secure"), "{cookie}");
    drop(plain);

    let behind_tls = "public_url = \"https://lifeboat.example.org/\"\n";
    let proxied = serve(&lifeboat, &base_without_synapse(&registry, &smtp), behind_tls).await;
    let cookie = csrf_cookie_of(&http, &format!("{}/token", proxied.url)).await;
    assert!(cookie.contains("HttpOnly") && cookie.contains("; Secure"), "{cookie}");
}

#[tokio::test(flavor = "multi_thread")]
async fn forms_refuse_posts_without_their_csrf_token_and_pages_carry_security_headers() {
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lifeboat = Lifeboat::with_config("");
    let served = serve(&lifeboat, &base_without_synapse(&registry, &smtp), "").await;
    let http = reqwest::Client::new();

    for path in ["/", "/token", "/subscribe", "/nowhere"] {
        let response = http.get(format!("{}{path}", served.url)).send().await.unwrap();
        let headers = response.headers();
        let csp = headers.get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(csp.contains("default-src 'none'") && !csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(headers.get("x-frame-options").unwrap(), "DENY", "{path}");
        assert_eq!(headers.get("referrer-policy").unwrap(), "strict-origin", "{path}");
        assert_eq!(headers.get("x-content-type-options").unwrap(), "nosniff", "{path}");
        let html = response.text().await.unwrap();
        assert!(!html.contains("<script"), "{path} works without JavaScript");
        assert!(!html.contains("style=\""), "{path} has no inline style (the CSP would block it)");
    }

    let token_url = format!("{}/token", served.url);
    let (cookie, csrf) = form_csrf(&http, &token_url).await;
    let (code, page) = post_form(&http, &token_url, Some(&cookie), "who=a%40example.org").await;
    assert_eq!(code, 403, "no CSRF token: {page}");
    assert!(page.contains("Please send the form again"), "{page}");
    let (code, _) = post_form(&http, &token_url, None, &format!("who=a%40example.org&csrf={csrf}")).await;
    assert_eq!(code, 403, "a token without its cookie is refused");
    let (code, _) = post_form(
        &http,
        &token_url,
        Some("lifeboat_csrf=00000000000000000000000000000000"),
        &format!("who=a%40example.org&csrf={csrf}"),
    )
    .await;
    assert_eq!(code, 403, "a token for another browser's cookie is refused");

    // A cookie value the client chose (say, planted by a sibling site) is
    // not taken: the page sets a new one, and a token for the chosen value
    // does not work.
    let chosen = "lifeboat_csrf=0123456789abcdef0123456789abcdef";
    let page = http.get(&token_url).header("cookie", chosen).send().await.unwrap();
    assert!(page.headers().get("set-cookie").is_some(), "a client-chosen cookie is replaced");
    let html = page.text().await.unwrap();
    let token_for_chosen = html.split("name=\"csrf\" value=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap();
    let (code, _) =
        post_form(&http, &token_url, Some(chosen), &format!("who=a%40example.org&csrf={token_for_chosen}")).await;
    assert_eq!(code, 403, "a token issued for a client-chosen cookie is refused");

    // A post another site makes the browser send is refused, even with
    // the right cookie and token.
    let body = format!("who=a%40example.org&csrf={csrf}");
    for (header, value) in [("origin", "http://evil.example"), ("referer", "http://evil.example/form")] {
        let response = http
            .post(&token_url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", &cookie)
            .header(header, value)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 403, "{header}: {value}");
    }
    let same_site = http
        .post(&token_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &cookie)
        .header("origin", &served.url)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(same_site.status().as_u16(), 200, "this site's own origin is fine");
    let (code, _) = post_form(
        &http,
        &format!("{}/subscribe", served.url),
        Some(&cookie),
        "matrix_id=%40a%3Aexample.org&email=a%40example.org",
    )
    .await;
    assert_eq!(code, 403, "the subscription form is protected too");
    let (code, page) = post_form(&http, &token_url, Some(&cookie), &format!("who=a%40example.org&csrf={csrf}")).await;
    assert_eq!(code, 200, "with both it is accepted: {page}");

    let hostile = format!("who=%3Cscript%3Ealert(1)%3C%2Fscript%3E%00&csrf={csrf}");
    let (code, page) = post_form(&http, &token_url, Some(&cookie), &hostile).await;
    assert_eq!(code, 400, "{page}");
    assert!(page.contains("That is not a Matrix ID or an email address") && !page.contains("<script>alert"), "{page}");

    let huge = format!("who={}&csrf={csrf}", "a".repeat(64 * 1024));
    let (code, _) = post_form(&http, &token_url, Some(&cookie), &huge).await;
    assert_eq!(code, 413, "bodies over the limit are refused before parsing");

    // A mailed link whose address cannot be read (a key given twice, a
    // number that is not one) gets a page that says so, not a bare 400.
    for path in [
        "/token/open?link=a&link=b",
        "/subscribe/confirm?sig=a&sig=b",
        "/claim?incident=one",
        "/unsubscribe?contact=1&contact=2",
    ] {
        let response = http.get(format!("{}{path}", served.url)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 400, "{path}");
        let html = response.text().await.unwrap();
        assert!(html.contains("This link does not work") && html.contains("exactly as it came"), "{path}: {html}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_click_unsubscribe_by_its_signed_link_stops_all_further_mail() {
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let email = format!("{}@example.org", unique("unsub"));
    let contact = affected_person(&registry, "@gone:example.org", &email).await;
    let lifeboat = Lifeboat::with_config("");
    let served = serve(&lifeboat, &base_without_synapse(&registry, &smtp), "").await;
    let http = reqwest::Client::new();
    let token_url = format!("{}/token", served.url);

    let (cookie, csrf) = form_csrf(&http, &token_url).await;
    let request = format!("who={}&csrf={csrf}", email.replace('@', "%40"));
    assert_eq!(post_form(&http, &token_url, Some(&cookie), &request).await.0, 200);
    wait_for_mail(&smtp, &email, 1).await;

    let key = {
        let registry = Registry::connect(&registry.url()).await.unwrap();
        let key = registry.generated_secret(lifeboat::links::LINK_KEY).await.unwrap();
        registry.close().await;
        key
    };
    let base = url::Url::parse(&served.url).unwrap();
    let links = lifeboat::links::UnsubscribeLinks::new(&base, &key);
    let link = links.url(contact, &email);
    let forged =
        links.url(contact + 1, &email).replace(&format!("contact={}", contact + 1), &format!("contact={contact}"));
    // Signed for this contact id when it named another address (before a
    // restore gave the id to this one, say).
    let readdressed = links.url(contact, "someone-else@example.org");

    let page = http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.text().await.unwrap().contains("id=\"unsubscribe\""),
        "GET shows a confirm button and changes nothing"
    );
    let (code, _) = post_form(&http, &link, None, "").await;
    assert_eq!(code, 403, "the page's form needs its CSRF token");
    // That form sent from another site is refused even with a token.
    let (cookie_here, csrf_here) = form_csrf(&http, &link).await;
    let cross_site = http
        .post(&link)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", &cookie_here)
        .header("origin", "https://evil.example")
        .body(format!("csrf={csrf_here}"))
        .send()
        .await
        .unwrap();
    assert_eq!(cross_site.status(), 403, "another site's form");
    let (code, forged_page) = post_form(&http, &forged, None, "List-Unsubscribe=One-Click").await;
    assert_eq!(code, 400, "a signature for another contact does not work");
    // An id nobody has answers as a wrong signature does: which ids exist
    // cannot be counted.
    let nobody = forged.replace(&format!("contact={contact}"), &format!("contact={}", contact + 1000));
    assert_eq!(post_form(&http, &nobody, None, "List-Unsubscribe=One-Click").await, (400, forged_page));
    let (shown, known) = (http.get(&nobody).send().await.unwrap(), http.get(&forged).send().await.unwrap());
    assert_eq!((shown.status(), shown.text().await.unwrap()), (known.status(), known.text().await.unwrap()));
    let (code, _) = post_form(&http, &readdressed, None, "List-Unsubscribe=One-Click").await;
    assert_eq!(code, 400, "nor one for another address under the same id");

    let (code, page) = post_form(&http, &link, None, "List-Unsubscribe=One-Click").await;
    assert_eq!(code, 200, "RFC 8058 one-click needs no CSRF token: {page}");
    assert!(page.contains("You are unsubscribed"), "{page}");
    // The page's own form, with its token, says so too.
    let (code, page) = post_form(&http, &link, Some(&cookie_here), &format!("csrf={csrf_here}")).await;
    assert!(code == 200 && page.contains("You are unsubscribed"), "{code}: {page}");

    // The first link used up, so only the opt-out can hold back a new one.
    let links = Registry::connect(&registry.url()).await.unwrap();
    sqlx::query("UPDATE web_links SET used_at = 1").execute(links.pool()).await.unwrap();
    assert_eq!(post_form(&http, &token_url, Some(&cookie), &request).await.0, 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(smtp.messages_to(&email).len(), 1, "nothing more is mailed after the unsubscribe");
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_is_believed_only_from_configured_proxies() {
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let base = base_without_synapse(&registry, &smtp);
    let http = reqwest::Client::new();

    for (trusted, third_allowed) in [("", false), ("trusted_proxies = [\"127.0.0.1\"]\n", true)] {
        let lifeboat = Lifeboat::with_config("");
        let served = serve(&lifeboat, &base, &format!("rate_limit_per_ip = 2\n{trusted}")).await;
        let token_url = format!("{}/token", served.url);
        let (cookie, csrf) = form_csrf(&http, &token_url).await;
        let mut codes = Vec::new();
        for n in 0..3 {
            let response = http
                .post(&token_url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", &cookie)
                .header("x-forwarded-for", format!("203.0.113.{n}"))
                .body(format!("who=p{n}%40example.org&csrf={csrf}"))
                .send()
                .await
                .unwrap();
            codes.push(response.status().as_u16());
        }
        let expected = if third_allowed { vec![200, 200, 200] } else { vec![200, 200, 429] };
        assert_eq!(codes, expected, "trusted proxies: {trusted:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_a_persons_unused_token_again_and_issues_new_ones_only_up_to_the_limit() {
    let Wiped { synapse, registry: _registry, smtp, base, lifeboat, name, email } = wiped("limit").await;
    let open = lifeboat.run(&["incident", "open", "--title", "Lost", "--postmortem", "postmortem.md"]).await;
    assert_eq!(open.code, 0, "{open:?}");
    let served = serve(&lifeboat, &base, "rate_limit_per_target = 10\ntoken_requests_per_person = 1\n").await;
    let browser = Browser::start().await;

    // Each visit: ask on /token, open the mailed link, press the button.
    let visit = |n: usize| {
        let (browser, served, smtp, email) = (&browser, &served, &smtp, &email);
        async move {
            browser.goto(&format!("{}/token", served.url)).await;
            browser.fill("#who", email).await;
            browser.click("button[type=submit]").await;
            let mails = wait_for_mail(smtp, email, n).await;
            browser.goto(&link_in(&mails[n - 1], "/token/open?")).await;
            browser.click("#show-token").await;
            browser.text("main").await
        }
    };
    let first = visit(1).await;
    let token = browser.text("#token").await;
    assert!(first.contains(&token));
    let second = visit(2).await;
    assert_eq!(browser.text("#token").await, token, "an unused token is shown again, not replaced");
    assert!(second.contains(&token));

    let (code, body) = synapse.register_with_token(&name, &token).await;
    assert_eq!(code, 200, "{body}");
    let third = visit(3).await;
    assert!(third.contains("No new token this time"), "the limit of one issued token per person holds: {third}");
    browser.close().await;
}

/// serve on a PostgreSQL registry reached through a proxy a test can cut
/// or silence, with its metrics on `metrics` if given.
async fn served_on_a_registry_behind_a_proxy(
    metrics: Option<&str>,
) -> (TestDatabase, crate::harness::proxy::TcpProxy, Lifeboat, Served) {
    let registry = TestDatabase::postgres().await;
    let database: url::Url = registry.url().parse().unwrap();
    let target = format!("127.0.0.1:{}", database.port().unwrap_or(5432)).parse().unwrap();
    let proxy = crate::harness::proxy::TcpProxy::start(target).await;
    let mut through_proxy = database.clone();
    through_proxy.set_port(Some(proxy.port)).unwrap();
    let metrics = metrics.map(|bind| format!("\n[metrics]\nbind = \"{bind}\"\n")).unwrap_or_default();
    let base = format!(
        "[homeserver]\nurl = \"http://127.0.0.1:9\"\nserver_name = \"example.org\"\nadmin_token = \"tok\"\n\
         retries = 0\n\n[registry]\nurl = \"{through_proxy}\"\n{metrics}"
    );
    let lifeboat = Lifeboat::with_config(&base);
    let served = serve(&lifeboat, &base, "").await;
    (registry, proxy, lifeboat, served)
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_names_a_registry_gone_down_within_seconds() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let (_registry, proxy, _lifeboat, served) = served_on_a_registry_behind_a_proxy(Some(&metrics)).await;

    proxy.cut();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let health = |url: String| {
        let http = http.clone();
        async move {
            let response = http.get(url).send().await.expect("an answer, not a hang");
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // The operator's address names the cause; the public one only says so
    // (the database's errors name hosts and users).
    let (status, body) = health(format!("http://{metrics}/healthz")).await;
    assert_eq!(status, 503);
    assert!(body.contains("registry unreachable") && body.contains("refused"), "{body}");
    assert_eq!(health(format!("{}/healthz", served.url)).await, (503, "registry unreachable\n".to_owned()));
}

/// A database that hangs: however many ask the public `/healthz` at once,
/// they share one check, which takes one of the pool's connections and
/// opens one beside it to find out why (a flood must not use up the
/// database's connections).
#[tokio::test(flavor = "multi_thread")]
async fn many_health_probes_at_once_open_one_database_connection_beside_the_pool() {
    let (_registry, proxy, _lifeboat, served) = served_on_a_registry_behind_a_proxy(None).await;

    proxy.go_silent();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    let probes = (0..24).map(|_| http.get(format!("{}/healthz", served.url)).send());
    for answer in futures::future::join_all(probes).await {
        assert_eq!(answer.expect("an answer, not a hang").status().as_u16(), 503);
    }
    // The check's two, and what the watcher and the delivery worker were
    // asking: not the pool's eight, nor one a probe.
    let most = proxy.most_open_while_silent();
    assert!(most < 8, "{most} connections open at once for 24 probes");
}

/// Whether the server closes `stream` (or answers and then closes it)
/// within `limit`, reading whatever it sends.
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_and_idle_connections_are_closed_and_their_number_is_capped() {
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpStream;
    /// A connection from `source`, one of loopback's many addresses.
    async fn connect_from(source: &str, address: &str) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        socket.connect(address.parse().unwrap()).await.unwrap()
    }
    let registry = TestDatabase::sqlite();
    let base = base_without_synapse_or_mail(&registry);
    let lifeboat = Lifeboat::with_config(&base);
    let served = serve(&lifeboat, &base, "max_connections = 3").await;
    let address = served.url.trim_start_matches("http://").to_owned();

    // One host holds at most two of them (a third is closed at once)...
    let mut greedy = Vec::new();
    for _ in 0..3 {
        let mut stream = connect_from("127.0.0.5", &address).await;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: lifeboat\r\nX-Slow: ").await.unwrap();
        greedy.push(stream);
    }
    assert!(closed_within(&mut greedy[2], Duration::from_secs(2)).await, "a third connection from one host");
    drop(greedy);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // ...but slowloris from three hosts, headers begun and never finished,
    // hold all three slots...
    let mut slow = Vec::new();
    for host in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let mut stream = connect_from(host, &address).await;
        stream.write_all(b"GET / HTTP/1.1\r\nHost: lifeboat\r\nX-Slow: ").await.unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    assert!(http.get(format!("{}/healthz", served.url)).send().await.is_err(), "a fourth connection waits");

    // ...until their time for headers is up; then the page answers again.
    for stream in &mut slow {
        assert!(closed_within(stream, Duration::from_secs(20)).await, "a half-sent request is cut off");
    }
    let patient = reqwest::Client::builder().timeout(Duration::from_secs(15)).build().unwrap();
    assert!(patient.get(format!("{}/healthz", served.url)).send().await.unwrap().status().is_success());

    // A kept-alive connection left idle is closed.
    let mut idle = connect_from("127.0.0.6", &address).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: lifeboat\r\n\r\n").await.unwrap();
    // A body trickled a byte a second is not waited on for long.
    let mut trickle = connect_from("127.0.0.7", &address).await;
    trickle
        .write_all(b"POST /token HTTP/1.1\r\nHost: lifeboat\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    let trickling = tokio::spawn(async move {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(40) {
            if trickle.write_all(b"a").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let mut probe = [0u8; 1];
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(1), trickle.peek(&mut probe)).await {
                // An answer (408) or the close: the server gave up on it.
                return true;
            }
        }
        false
    });
    assert!(closed_within(&mut idle, Duration::from_secs(20)).await, "an idle keep-alive connection is closed");
    assert!(trickling.await.unwrap(), "a trickled body is cut off");
}

/// A client that asks for many pages at once and never reads the answers
/// cannot keep its connection for good: once it has sat idle (nothing
/// moves) it is closed, and if the answer under way is still not read, it
/// is dropped after as long again.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_reads_its_answers_gives_its_connection_back() {
    use tokio::io::AsyncWriteExt;
    let registry = TestDatabase::sqlite();
    let base = base_without_synapse_or_mail(&registry);
    let lifeboat = Lifeboat::with_config(&base);
    let served = serve(&lifeboat, &base, "max_connections = 3").await;
    let address: std::net::SocketAddr = served.url.trim_start_matches("http://").parse().unwrap();
    let mut deaf = Vec::new();
    for host in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind(format!("{host}:0").parse().unwrap()).unwrap();
        let mut stream = socket.connect(address).await.unwrap();
        deaf.push(tokio::spawn(async move {
            // Megabytes of answers: more than every buffer on the way holds.
            let requests = b"GET /style.css HTTP/1.1\r\nHost: lifeboat\r\n\r\n".repeat(20_000);
            let _ = stream.write_all(&requests).await;
            std::future::pending::<()>().await;
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let healthz = format!("{}/healthz", served.url);
    let quick = reqwest::Client::builder().timeout(Duration::from_secs(3)).build().unwrap();
    assert!(quick.get(&healthz).send().await.is_err(), "a fourth connection waits while three answers go unread");

    let patient = reqwest::Client::builder().timeout(Duration::from_secs(50)).build().unwrap();
    let answered = patient.get(&healthz).send().await;
    assert!(answered.is_ok_and(|answer| answer.status().is_success()), "the unread connections were given back");
    for client in deaf {
        client.abort();
    }
}

/// Without a way to DM (no `[bot]`, no recovered account of lifeboat's own)
/// no code can go out, yet a known account's address is mailed a link as
/// an unknown one's is: whether a mail comes must not tell which accounts
/// exist.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_that_cannot_dm_its_code_mails_the_link_all_the_same() {
    let (synapse, registry, smtp) = (TestSynapse::start(), TestDatabase::sqlite(), TestSmtp::start(None));
    let base = mail_base(&synapse, &registry, &smtp);
    let lifeboat = Lifeboat::with_config(&base);
    let known = unique("known");
    synapse.create_user(&known, &[]).await;
    assert_eq!(lifeboat.run(&["sync"]).await.code, 0);
    let served = serve(&lifeboat, &base, "").await;
    let (http, url) = (reqwest::Client::new(), format!("{}/subscribe", served.url));
    let (cookie, csrf) = form_csrf(&http, &url).await;
    let (to_known, to_unknown) = (format!("{known}@example.org"), format!("{known}-other@example.org"));
    // Each asked twice: a second mail must not tell the known account either.
    for _ in 0..2 {
        for (id, address) in [(synapse.user_id(&known), &to_known), (synapse.user_id("nobody-here"), &to_unknown)] {
            let form =
                format!("csrf={csrf}&matrix_id={}&email={}", id.replace('@', "%40"), address.replace('@', "%40"));
            assert_eq!(post_form(&http, &url, Some(&cookie), &form).await.0, 200);
        }
    }
    let unknown_mail = wait_for_mail(&smtp, &to_unknown, 1).await.pop().unwrap();
    let known_mail = wait_for_mail(&smtp, &to_known, 1).await.pop().unwrap();
    assert_eq!(known_mail.subject, unknown_mail.subject);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!((smtp.messages_to(&to_known).len(), smtp.messages_to(&to_unknown).len()), (1, 1));
}

/// A flood of subscription requests while Synapse hangs: each would ask
/// Synapse before any budget stops it, so no more than 32 are handled at
/// once, 256 more wait their turn, and the rest are dropped, said in the
/// log; every request still gets its answer at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_subscriptions_while_synapse_hangs_makes_no_more_than_32_calls_to_it() {
    let (registry, smtp) = (TestDatabase::sqlite(), TestSmtp::start(None));
    let synapse = crate::harness::proxy::TcpProxy::start("127.0.0.1:9".parse().unwrap()).await;
    synapse.go_silent();
    let base = base_without_synapse(&registry, &smtp)
        .replace(
            "url = \"http://127.0.0.1:9\"",
            &format!("url = \"http://127.0.0.1:{}\"\nadmin_token = \"tok\"", synapse.port),
        )
        .replace("timeout = \"1s\"", "timeout = \"60s\"");
    let lifeboat = Lifeboat::with_config(&base);
    let served = serve(&lifeboat, &base, "rate_limit_per_ip = 1000\n").await;
    let (http, url) = (reqwest::Client::new(), format!("{}/subscribe", served.url));
    let (cookie, csrf) = form_csrf(&http, &url).await;
    for n in 0..300 {
        let form = format!("csrf={csrf}&matrix_id=%40flood{n}%3Aexample.org&email=flood{n}%40example.net");
        let started = Instant::now();
        assert_eq!(post_form(&http, &url, Some(&cookie), &form).await.0, 200);
        assert!(started.elapsed() < Duration::from_secs(10), "answered without waiting for Synapse");
    }
    eventually("the flood is told", Duration::from_secs(20), || async {
        lifeboat.serve_log().contains("more are dropped for now")
    })
    .await;
    let most = synapse.most_open_while_silent();
    // The watcher's first round may be waiting on Synapse too.
    assert!((1..=34).contains(&most), "{most} calls to Synapse at once for 300 requests");
}

/// Once a network has had its share of the subscription links (and half
/// the hour's budget is spent), its requests would mail nothing: they cost
/// Synapse nothing either.
#[tokio::test(flavor = "multi_thread")]
async fn requests_of_a_network_past_its_share_of_subscriptions_cost_synapse_nothing() {
    let (synapse, registry, smtp) = (TestSynapse::start(), TestDatabase::sqlite(), TestSmtp::start(None));
    let target = synapse.url.trim_start_matches("http://").parse().unwrap();
    let counted = crate::harness::proxy::TcpProxy::start(target).await;
    let base =
        mail_base(&synapse, &registry, &smtp).replace(&synapse.url, &format!("http://127.0.0.1:{}", counted.port));
    let lifeboat = Lifeboat::with_config(&base);
    let served = serve(&lifeboat, &base, "subscription_mails_per_hour = 20\n").await;
    let (http, url) = (reqwest::Client::new(), format!("{}/subscribe", served.url));
    let (cookie, csrf) = form_csrf(&http, &url).await;
    let prefix = unique("share");
    let ask = |n: usize| {
        let someone = synapse.user_id(&format!("{prefix}-{n}")).replace('@', "%40").replace(':', "%3A");
        let form = format!("csrf={csrf}&matrix_id={someone}&email={prefix}-{n}%40example.net");
        let (http, url, cookie) = (&http, &url, &cookie);
        async move { assert_eq!(post_form(http, url, Some(cookie), &form).await.0, 200) }
    };
    // Its share is 10, half the budget 10.
    for n in 0..10 {
        ask(n).await;
        wait_for_mail(&smtp, &format!("{prefix}-{n}@example.net"), 1).await;
    }
    let asked = counted.connections();
    for n in 10..14 {
        ask(n).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(smtp.messages().len(), 10, "nothing more is mailed");
    assert_eq!(counted.connections(), asked, "nor is Synapse asked");
    assert!(lifeboat.serve_log().contains("one network had its share"));
}

/// The page answers before the mail goes out, so a link whose email the
/// mail server refused for good is only known as such later, in the
/// outbox: from then on it must not count as one on its way.
#[tokio::test(flavor = "multi_thread")]
async fn a_link_the_mail_server_refused_for_good_does_not_hold_back_the_next_request() {
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    smtp.refuse();
    let email = format!("{}@example.org", unique("refused"));
    affected_person(&registry, "@gone:example.org", &email).await;
    let lifeboat = Lifeboat::with_config("");
    let served = serve(&lifeboat, &base_without_synapse(&registry, &smtp), "").await;
    let http = reqwest::Client::new();
    let token_url = format!("{}/token", served.url);
    let request = |csrf: &str| format!("who={}&csrf={csrf}", email.replace('@', "%40"));

    let (cookie, csrf) = form_csrf(&http, &token_url).await;
    assert_eq!(post_form(&http, &token_url, Some(&cookie), &request(&csrf)).await.0, 200);
    let outbox = Registry::connect(&registry.url()).await.unwrap();
    eventually("the link's email is given up", Duration::from_secs(30), || async {
        let given_up: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM deliveries WHERE kind = 'link' AND state = 'failed'")
                .fetch_one(outbox.pool())
                .await
                .unwrap();
        given_up == 1
    })
    .await;
    assert!(smtp.messages_to(&email).is_empty(), "the sink refused it (550)");
    // A way back in names its person and incident, so it is withdrawn if
    // the address stops being theirs before it leaves.
    let (person, incident): (Option<String>, Option<i64>) =
        sqlx::query_as("SELECT user_id, incident_id FROM deliveries WHERE kind = 'link'")
            .fetch_one(outbox.pool())
            .await
            .unwrap();
    assert_eq!((person.as_deref(), incident.is_some()), (Some("@gone:example.org"), true));

    smtp.heal();
    assert_eq!(post_form(&http, &token_url, Some(&cookie), &request(&csrf)).await.0, 200);
    wait_for_mail(&smtp, &email, 1).await;
}

/// An incident may name every account (`--affected all`), but a token is
/// only for a person who lost the use of their ID: one whose account still
/// works gets none from the page (their notice brings none either), so a
/// working account is no source of tokens that could register a lost ID.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_whose_account_still_works_gets_no_token_from_the_page() {
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let lost = format!("{}@example.org", unique("lost"));
    let fine = format!("{}@example.org", unique("fine"));
    affected_person(&registry, "@gone:example.org", &lost).await;
    let store = Registry::connect(&registry.url()).await.unwrap();
    for sql in [
        "INSERT INTO accounts (user_id, first_seen_at, state) VALUES ('@fine:example.org', 1, 'present')",
        "INSERT INTO incident_accounts (incident_id, user_id, state_at_opening) VALUES (1, '@fine:example.org', 'present')",
    ] {
        sqlx::query(sql).execute(store.pool()).await.unwrap();
    }
    sqlx::query(
        "INSERT INTO contacts (user_id, kind, address, source, verified_at, added_at) \
         VALUES ('@fine:example.org', 'email', $1, 'synapse', 1, 1)",
    )
    .bind(&fine)
    .execute(store.pool())
    .await
    .unwrap();
    store.close().await;
    let lifeboat = Lifeboat::with_config("");
    let served = serve(&lifeboat, &base_without_synapse(&registry, &smtp), "").await;
    let http = reqwest::Client::new();

    for email in [&fine, &lost] {
        assert_eq!(ask_for_a_way_back(&http, &served, email).await, 200);
    }
    wait_for_mail(&smtp, &lost, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(smtp.messages_to(&fine).is_empty(), "asked first, mailed nothing");
}

/// While a lost ID is not held yet, the page shows no registration token
/// (Synapse binds none to a name: any token could take that ID), and the
/// link is not used up: it gives the token once the IDs are held.
#[tokio::test(flavor = "multi_thread")]
async fn the_page_shows_no_token_while_a_lost_id_is_not_held_and_the_link_keeps_working() {
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let email = format!("{}@example.org", unique("taken"));
    affected_person(&registry, "@taken:example.org", &email).await;
    let store = Registry::connect(&registry.url()).await.unwrap();
    // A stranger took this person's ID (their way back is a token for a new
    // name); another lost ID is still free.
    for sql in [
        "UPDATE accounts SET state = 'present', recreated_at = 2 WHERE user_id = '@taken:example.org'",
        "INSERT INTO accounts (user_id, first_seen_at, state, missing_since) VALUES ('@free:example.org', 1, 'missing', 2)",
    ] {
        sqlx::query(sql).execute(store.pool()).await.unwrap();
    }
    let lifeboat = Lifeboat::with_config("");
    let served = serve(&lifeboat, &base_without_synapse(&registry, &smtp), "").await;
    let http = reqwest::Client::new();
    assert_eq!(ask_for_a_way_back(&http, &served, &email).await, 200);
    let link = link_in(&wait_for_mail(&smtp, &email, 1).await[0], "/token/open?");
    let (cookie, csrf) = form_csrf(&http, &link).await;
    let open = format!("csrf={csrf}&{}", link.split_once('?').unwrap().1);
    let open_url = format!("{}/token/open", served.url);

    let (status, page) = post_form(&http, &open_url, Some(&cookie), &open).await;
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("Your link still works"), "{page}");
    sqlx::query(
        "UPDATE accounts SET custody = 'held', custody_at = 3, state = 'present' WHERE user_id = '@free:example.org'",
    )
    .execute(store.pool())
    .await
    .unwrap();
    // On to the token: with no Synapse behind this registry, it fails there,
    // before the link is used up (Synapse is asked whether it lost accounts).
    let (status, page) = post_form(&http, &open_url, Some(&cookie), &open).await;
    assert_eq!(status, 500, "{page}");
    assert!(page.contains("Something went wrong"), "{page}");
    sqlx::query("UPDATE accounts SET custody = NULL, state = 'missing' WHERE user_id = '@free:example.org'")
        .execute(store.pool())
        .await
        .unwrap();
    let (_, page) = post_form(&http, &open_url, Some(&cookie), &open).await;
    assert!(page.contains("Your link still works"), "not used up by a Synapse that did not answer: {page}");

    // The address stops being theirs (an unsubscribe link, say; it may
    // have lapsed): whoever reads it now gets nothing from the link.
    let opted_out = sqlx::query("UPDATE contacts SET opted_out_at = 4 WHERE address = $1").bind(&email);
    assert_eq!(opted_out.execute(store.pool()).await.unwrap().rows_affected(), 1);
    let (status, page) = post_form(&http, &open_url, Some(&cookie), &open).await;
    assert_eq!(status, 400, "{page}");
    assert!(page.contains("This link does not work"), "{page}");
}

/// Whoever knows many affected people's addresses could have a link
/// mailed to each every 30 minutes: past `web.token_mails_per_hour` in the
/// last hour, a request mails nothing (and answers as always).
#[tokio::test(flavor = "multi_thread")]
async fn way_back_links_stop_at_the_hours_budget_whoever_asks() {
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let people: Vec<String> = (0..3).map(|n| format!("{}@example.org", unique(&format!("many{n}")))).collect();
    for (n, email) in people.iter().enumerate() {
        affected_person(&registry, &format!("@many{n}:example.org"), email).await;
    }
    let lifeboat = Lifeboat::with_config("");
    let served = serve(
        &lifeboat,
        &base_without_synapse(&registry, &smtp),
        "token_mails_per_hour = 2
",
    )
    .await;
    let http = reqwest::Client::new();

    for email in &people {
        assert_eq!(ask_for_a_way_back(&http, &served, email).await, 200);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for_mail(&smtp, &people[1], 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(smtp.messages_to(&people[0]).len(), 1);
    assert!(smtp.messages_to(&people[2]).is_empty(), "past the hour's two, nothing");
}

/// Queued messages (links, codes, alerts) have one sender at a time across
/// every serve on a registry: while another process holds their lease,
/// this serve mails nothing, and once it is free the message goes.
#[tokio::test(flavor = "multi_thread")]
async fn queued_messages_wait_while_another_process_sends_them() {
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let store = Registry::connect(&registry.url()).await.unwrap();
    let elsewhere =
        lifeboat::lease::Lease::take(&store, lifeboat::worker::QUEUED_MESSAGES_LEASE).await.unwrap().unwrap();
    let to = "queued@example.org";
    let message = lifeboat::messages::contact_code("example.org", &crate::harness::id("@a:example.org"), "123456", 30);
    let until = lifeboat::registry::now_ms() + 3_600_000;
    let kind = lifeboat::registry::MessageKind::Code;
    lifeboat::outbox::queue_email(&store, kind, &crate::harness::email(to), &message, None, until).await.unwrap();
    let lifeboat = Lifeboat::with_config("");
    let _served = serve(&lifeboat, &base_without_synapse(&registry, &smtp), "").await;

    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(smtp.messages_to(to).is_empty(), "another process sends them: {}", lifeboat.serve_log());
    elsewhere.release().await;
    eventually("the message goes once the lease is free", Duration::from_secs(60), || async {
        smtp.messages_to(to).len() == 1
    })
    .await;
}

/// Whoever keeps asking for someone's way back in gets them a few mails a
/// day, not one each time the last link stops working (every 30 minutes).
/// One network gets half of those: its owner asking from elsewhere still
/// gets theirs. Asked for by Matrix ID (which anyone may know) and by
/// address, the links count apart: strangers typing someone's ID cannot
/// use up the day of its owner, who types their address.
#[tokio::test(flavor = "multi_thread")]
async fn one_address_is_mailed_a_few_way_back_links_a_day_however_often_asked() {
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let email = format!("{}@example.org", unique("daily"));
    affected_person(&registry, "@daily:example.org", &email).await;
    let lifeboat = Lifeboat::with_config("");
    let web = "rate_limit_per_target = 100\nrate_limit_per_ip = 100\ntrusted_proxies = [\"127.0.0.1\"]\n";
    let served = serve(&lifeboat, &base_without_synapse(&registry, &smtp), web).await;
    let http = reqwest::Client::new();
    let links = Registry::connect(&registry.url()).await.unwrap();
    let token_url = format!("{}/token", served.url);
    let ask_from = |ip: String, who: &str| {
        let (http, token_url, who) = (&http, &token_url, who.replace('@', "%40").replace(':', "%3A"));
        async move {
            let (cookie, csrf) = form_csrf(http, token_url).await;
            post_form_from(&ip, http, token_url, Some(&cookie), &format!("who={who}&csrf={csrf}")).await.0
        }
    };

    let mut mailed = 0;
    let (by_address, by_id) = (email.as_str(), "@daily:example.org");
    let asks = [
        ("203.0.113", by_address, 3),
        ("198.51.100", by_address, 3),
        ("192.0.2", by_address, 0),
        ("192.0.2", by_id, 3),
    ];
    for (network, who, mails) in asks {
        for asked in 1..=5 {
            assert_eq!(ask_from(format!("{network}.{asked}"), who).await, 200);
            if asked <= mails {
                mailed += 1;
                wait_for_mail(&smtp, &email, mailed).await;
            } else {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // The link stops working, as it does after 30 minutes (it is
            // kept a day past that, and counted).
            let a_minute_ago = lifeboat::registry::now_ms() - 60_000;
            let expire = "UPDATE web_links SET expires_at = $1";
            sqlx::query(expire).bind(a_minute_ago).execute(links.pool()).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(smtp.messages_to(&email).len(), mailed, "three a network, and past six a day nothing more");
    }
}

/// One network cannot spend the hour's budget alone: once half of it is
/// spent, links asked for from a network that had a tenth of it (ten at
/// least) stop, and people asking from elsewhere still get theirs. Before
/// that, a busy network is not held back.
#[tokio::test(flavor = "multi_thread")]
async fn one_network_cannot_spend_the_hours_way_back_links_alone() {
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let people: Vec<String> = (0..23).map(|n| format!("{}@example.org", unique(&format!("net{n}")))).collect();
    for (n, email) in people.iter().enumerate() {
        affected_person(&registry, &format!("@net{n}:example.org"), email).await;
    }
    let lifeboat = Lifeboat::with_config("");
    let web = "token_mails_per_hour = 40\ntrusted_proxies = [\"127.0.0.1\"]\n";
    let served = serve(&lifeboat, &base_without_synapse(&registry, &smtp), web).await;
    let http = reqwest::Client::new();
    let token_url = format!("{}/token", served.url);
    let ask_from = |ip: String, email: &String| {
        let (http, token_url, email) = (&http, &token_url, email.replace('@', "%40"));
        async move {
            let (cookie, csrf) = form_csrf(http, token_url).await;
            post_form_from(&ip, http, token_url, Some(&cookie), &format!("who={email}&csrf={csrf}")).await.0
        }
    };

    // Twenty-two clients of one /24, each asking for someone else, one
    // after another: its share is 10, half the budget 20.
    let mailed = || people[..22].iter().filter(|email| !smtp.messages_to(email).is_empty()).count();
    for (n, email) in people[..22].iter().enumerate() {
        assert_eq!(ask_from(format!("203.0.113.{n}"), email).await, 200);
        let deadline = Instant::now() + Duration::from_secs(20);
        while mailed() < (n + 1).min(20) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(ask_from("198.51.100.7".to_owned(), &people[22]).await, 200);
    wait_for_mail(&smtp, &people[22], 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(mailed(), 20, "past its share while less than half was spent, not after");
    assert!(lifeboat.serve_log().contains("half of web.token_mails_per_hour is spent, and one network had its share"));
}

/// Requests that arrive together are no different from requests one
/// after another: a contact gets one working link, whoever asks.
#[tokio::test(flavor = "multi_thread")]
async fn token_requests_sent_at_once_mail_one_link() {
    let registry = TestDatabase::sqlite();
    let smtp = TestSmtp::start(None);
    let email = format!("{}@example.org", unique("burst"));
    affected_person(&registry, "@burst:example.org", &email).await;
    let lifeboat = Lifeboat::with_config("");
    let served = serve(&lifeboat, &base_without_synapse(&registry, &smtp), "rate_limit_per_ip = 100\n").await;
    let http = reqwest::Client::new();
    let token_url = format!("{}/token", served.url);
    let (cookie, csrf) = form_csrf(&http, &token_url).await;
    let request = format!("who={}&csrf={csrf}", email.replace('@', "%40"));

    let burst = (0..20).map(|_| post_form(&http, &token_url, Some(&cookie), &request));
    assert!(futures::future::join_all(burst).await.iter().all(|(code, _)| *code == 200));
    wait_for_mail(&smtp, &email, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(smtp.messages_to(&email).len(), 1, "one link for twenty requests at once");
}
