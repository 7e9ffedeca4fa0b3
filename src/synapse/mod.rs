//! Client for Synapse's admin API. Requests are retried with capped,
//! jittered backoff on 429/5xx and network failures. The admin token lives
//! only in a `SecretString` and a sensitive header: never in a log or error.

mod accounts;
mod admin;
mod error;
mod rooms;
mod types;

use std::collections::HashSet;
use std::time::Duration;

use rand::Rng;
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};
use url::Url;

pub use accounts::{Creation, Device};
pub use admin::{Registered, RegistrationToken, SharedSecretError, Whoami};
pub use error::Error;
pub use rooms::{JoinOutcome, ListedRoom, RoomsPage, StateEvent, maker_in};
pub use types::{ListedUser, MADE_BEFORE_CREATION_TIMES, ThreePid, UserDetails, UsersPage};

/// Longest single wait between tries, whatever Synapse asks for.
const MAX_WAIT: Duration = Duration::from_secs(60);
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_CAP: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct SynapseClient {
    base: Url,
    token: Option<SecretString>,
    http: reqwest::Client,
    retries: u32,
    /// Only a 429 is tried again: for a request that must not be sent
    /// twice, since Synapse refuses one it rate limits before doing anything.
    only_rate_limits_retried: bool,
}

impl std::fmt::Debug for SynapseClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SynapseClient").field("base", &self.base.as_str()).finish_non_exhaustive()
    }
}

impl SynapseClient {
    pub fn new(base: Url, token: Option<SecretString>, timeout: Duration, retries: u32) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            // Never route the admin token through a proxy picked up from the
            // environment: lifeboat talks to its own homeserver directly.
            .no_proxy()
            .user_agent(concat!("lifeboat/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a reqwest client with static settings always builds");
        SynapseClient { base, token, http, retries, only_rate_limits_retried: false }
    }

    pub fn from_config(homeserver: &crate::config::HomeserverConfig) -> Self {
        Self::new(
            homeserver.url.clone(),
            homeserver.admin_token.as_ref().map(|secret| secret.value.clone()),
            homeserver.timeout,
            homeserver.retries,
        )
    }

    /// The same client acting with another access token.
    pub fn with_token(&self, token: SecretString) -> Self {
        SynapseClient { token: Some(token), ..self.clone() }
    }

    /// A one-way fingerprint of the admin token (hex SHA-256), to recognise
    /// later whether a rejected token is one that used to work.
    pub fn token_fingerprint(&self) -> Option<String> {
        self.token.as_ref().map(|token| hex::encode(Sha256::digest(token.expose_secret().as_bytes())))
    }

    /// `GET /_synapse/admin/v1/server_version`: needs no token and answers
    /// even after a database wipe, so it tells "down" from "reset".
    pub async fn server_version(&self) -> Result<String, Error> {
        const PATH: &str = "/_synapse/admin/v1/server_version";
        let version: types::ServerVersion =
            self.get_json(PATH, &[], false).await.map_err(|err| self.not_synapse_if_missing(err, PATH))?;
        Ok(version.server_version)
    }

    /// A 404 for `path`, which every Synapse serves, means whatever answered
    /// is not Synapse: say so, with the fix.
    fn not_synapse_if_missing(&self, err: Error, path: &str) -> Error {
        match err {
            Error::NotFound => self.wrong_url(format!(
                "it answered 404 for {path}, which every Synapse serves: homeserver.url must point at Synapse itself (its client port, e.g. http://127.0.0.1:8008), not at another server or a path a proxy does not forward"
            )),
            other => other,
        }
    }

    /// One page of the listing, locked and deactivated accounts included
    /// (Synapse hides both by default, which would look like loss), and
    /// guests too where there are any.
    pub async fn users_page(&self, from: Option<&str>, limit: u32) -> Result<UsersPage, Error> {
        match self.users_page_with(from, limit, "true").await {
            // A Synapse delegating accounts to Matrix Authentication Service
            // has no guests, and refuses to be asked for them (400).
            Err(Error::Rejected { status: 400, message, .. }) if message.contains("guests") => {
                self.users_page_with(from, limit, "false").await
            }
            other => other,
        }
    }

    async fn users_page_with(&self, from: Option<&str>, limit: u32, guests: &str) -> Result<UsersPage, Error> {
        let limit = limit.max(1).to_string();
        let mut query = vec![
            ("limit", limit.as_str()),
            ("deactivated", "true"),
            ("locked", "true"),
            ("guests", guests),
            ("order_by", "name"),
            ("dir", "f"),
        ];
        query.extend(from.map(|from| ("from", from)));
        const PATH: &str = "/_synapse/admin/v2/users";
        self.get_json(PATH, &query, true).await.map_err(|err| self.not_synapse_if_missing(err, PATH))
    }

    /// How many accounts Synapse has, as a listing counts them (one short page).
    pub async fn account_count(&self) -> Result<i64, Error> {
        let page = self.users_page(None, 1).await?;
        page.total.ok_or_else(|| self.bad_response("the account listing came without its total count"))
    }

    /// A user's details (emails); `None` when Synapse no longer knows them.
    pub async fn user_details(&self, user_id: &str) -> Result<Option<UserDetails>, Error> {
        found(self.get_json(&user_path(user_id), &[], true).await)
    }

    /// Does `user_id` have an account, as anyone may ask (the profile API,
    /// no token)? An error where Synapse answers profiles to its users only.
    pub async fn has_public_profile(&self, user_id: &str) -> Result<bool, Error> {
        let path = format!("/_matrix/client/v3/profile/{}", urlencode(user_id));
        Ok(found(self.get_json::<serde_json::Value>(&path, &[], false).await)?.is_some())
    }

    /// An answer lifeboat cannot use (a listing page that cannot belong to
    /// a complete listing, JSON that does not parse).
    pub fn bad_response(&self, detail: impl Into<String>) -> Error {
        Error::BadResponse { url: self.base.to_string(), detail: detail.into() }
    }

    /// homeserver.url cannot work as written: `detail` says why, with the fix.
    fn wrong_url(&self, detail: String) -> Error {
        Error::WrongUrl { url: self.base.to_string(), detail }
    }

    /// Walks the whole listing, page after page.
    pub fn pages(&self, page_size: u32) -> UserPages<'_> {
        UserPages {
            client: self,
            page_size,
            next: None,
            given: HashSet::new(),
            done: false,
            total: None,
            first_total: None,
            shrank: false,
            server_name: None,
        }
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        authenticated: bool,
    ) -> Result<T, Error> {
        self.request_json(Method::GET, path, query, None, authenticated).await
    }

    /// An authenticated request whose answer only matters as success.
    async fn call(&self, method: Method, path: &str, body: Option<&serde_json::Value>) -> Result<(), Error> {
        self.request_json::<serde_json::Value>(method, path, &[], body, true).await.map(|_| ())
    }

    /// One JSON request, retried on transient failures. Only idempotent
    /// requests may go through here.
    async fn request_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
        authenticated: bool,
    ) -> Result<T, Error> {
        self.request_json_status(method, path, query, body, authenticated).await.map(|(_, parsed)| parsed)
    }

    /// [`Self::request_json`], with the success status (201 Created tells
    /// a new account from an existing one).
    async fn request_json_status<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&serde_json::Value>,
        authenticated: bool,
    ) -> Result<(StatusCode, T), Error> {
        let url = self.url(path);
        let (status, body) = self
            .send(|| {
                let mut request = self.http.request(method.clone(), url.clone()).query(query);
                if let Some(body) = body {
                    request = request.json(body);
                }
                if authenticated { self.authorize(request) } else { request }
            })
            .await?;
        let body: &[u8] = if body.is_empty() { b"{}" } else { &body };
        let parsed = serde_json::from_slice(body)
            .map_err(|err| self.bad_response(format!("the JSON from {path} did not parse ({err})")))?;
        Ok((status, parsed))
    }

    fn authorize(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(token) => {
                let mut value = header::HeaderValue::from_str(&format!("Bearer {}", token.expose_secret()))
                    .unwrap_or_else(|_| header::HeaderValue::from_static("Bearer invalid"));
                value.set_sensitive(true);
                request.header(header::AUTHORIZATION, value)
            }
            None => request,
        }
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.base.clone();
        let prefix = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{prefix}{path}"));
        url
    }

    /// Sends, retrying transient failures (also while reading the body)
    /// with backoff; returns the status and body of a 2xx.
    async fn send(&self, build: impl Fn() -> RequestBuilder) -> Result<(StatusCode, bytes::Bytes), Error> {
        let mut attempt = 0;
        loop {
            let err = match build().send().await {
                Ok(response) if response.status().is_success() => {
                    let status = response.status();
                    match response.bytes().await {
                        Ok(body) => return Ok((status, body)),
                        Err(err) => self.unavailable(err),
                    }
                }
                Ok(response) => self.error_from(response).await,
                Err(err) => self.connection_failed(err).await,
            };
            let rate_limited = matches!(err, Error::RateLimited { .. });
            if !err.is_transient() || attempt >= self.retries || (self.only_rate_limits_retried && !rate_limited) {
                return Err(err);
            }
            let wait = match &err {
                Error::RateLimited { retry_after: Some(after) } => (*after).min(MAX_WAIT),
                _ => backoff(attempt),
            };
            if rate_limited && wait >= Duration::from_secs(5) {
                // A long pause (such as room creation's minute) is shown, so a run does not seem stuck.
                tracing::warn!(
                    wait_s = wait.as_secs(),
                    "Synapse is rate limiting lifeboat; waiting before trying again"
                );
            }
            // A retry is routine (the final failure is what gets reported): shown with -v.
            tracing::info!(error = %err, attempt = attempt + 1, wait_ms = wait.as_millis() as u64, "retrying Synapse request");
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }

    async fn error_from(&self, response: Response) -> Error {
        let status = response.status();
        let retry_header = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response.json::<types::MatrixError>().await.unwrap_or_default().clipped();
        match status {
            // Synapse's refusals always carry a Matrix error: one without
            // is a proxy's page (basic auth, an admin API kept private).
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if body.errcode.is_empty() => self.wrong_url(format!(
                "it answered {status} with no Matrix error, so a proxy in front of Synapse refused the request, not Synapse: let the proxy pass /_synapse/admin and /_matrix through, or point homeserver.url at Synapse itself"
            )),
            StatusCode::UNAUTHORIZED if body.soft_logout => Error::Expired { errcode: body.errcode },
            StatusCode::UNAUTHORIZED => Error::Unauthorized { errcode: body.errcode },
            StatusCode::FORBIDDEN => Error::Forbidden { errcode: body.errcode, message: body.error },
            StatusCode::NOT_FOUND => Error::NotFound,
            StatusCode::TOO_MANY_REQUESTS => {
                Error::RateLimited { retry_after: body.retry_after_ms.map(Duration::from_millis).or(retry_header) }
            }
            status if status.is_server_error() => Error::Unavailable {
                url: self.base.to_string(),
                detail: format!("it answered {status}"),
                // Synapse's own words for a request it made elsewhere that
                // failed (its 500s are its own trouble, and stay plain).
                matrix_error: (matches!(status, StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT)
                    && !body.errcode.is_empty())
                .then(|| format!("{}: {}", body.errcode, body.error)),
                timed_out: false,
            },
            status if status.is_client_error() => {
                Error::Rejected { status: status.as_u16(), errcode: body.errcode, message: body.error }
            }
            status => self.bad_response(format!("it answered {status} {} {}", body.errcode, body.error).trim_end()),
        }
    }

    /// A request that got no response: [`Self::unavailable`], unless an
    /// https:// URL's port answers plain HTTP (a TLS handshake there just
    /// waits until it times out, request after request).
    async fn connection_failed(&self, err: reqwest::Error) -> Error {
        let waited = err.is_timeout() || err.is_connect();
        let error = self.unavailable(err);
        if waited
            && self.base.scheme() == "https"
            && matches!(error, Error::Unavailable { .. })
            && speaks_plain_http(&self.base).await
        {
            let host = self.base.host_str().unwrap_or("the host");
            return self.wrong_url(format!(
                "{host} answers plain HTTP on this port, not TLS: use http:// in homeserver.url, or the port that serves TLS"
            ));
        }
        error
    }

    /// Without the URL: paths can hold registration tokens.
    fn unavailable(&self, err: reqwest::Error) -> Error {
        let err = err.without_url();
        if let Some(detail) = url_that_cannot_work(&err, &self.base) {
            return self.wrong_url(detail);
        }
        let detail = if err.is_timeout() {
            "the request timed out (homeserver.timeout)".to_owned()
        } else if err.is_connect() {
            "the connection failed".to_owned()
        } else {
            err.to_string()
        };
        Error::Unavailable { url: self.base.to_string(), detail, matrix_error: None, timed_out: err.is_timeout() }
    }
}

/// Connection failures that mean homeserver.url cannot work as written,
/// told from the error's causes (reqwest wraps hyper, rustls and the
/// resolver): worth a sentence that names the fix, not retries.
fn url_that_cannot_work(err: &reqwest::Error, base: &Url) -> Option<String> {
    let causes: String = std::iter::successors(Some(err as &dyn std::error::Error), |cause| cause.source())
        .map(|cause| format!("{cause:?} {cause} "))
        .collect();
    let host = base.host_str().unwrap_or("the host");
    if causes.contains("dns error") || causes.contains("failed to lookup address") {
        return Some(format!("the name {host} does not resolve; check the host in homeserver.url"));
    }
    if causes.contains("InvalidContentType") || causes.contains("CorruptMessage") || causes.contains("corrupt message")
    {
        return Some(format!(
            "the TLS handshake failed: {host} does not speak TLS on this port; use http:// in homeserver.url for a plain-HTTP port, or the port that serves TLS"
        ));
    }
    if causes.contains("InvalidCertificate") || causes.contains("invalid peer certificate") {
        return Some(format!(
            "the certificate of {host} is not trusted ({}); use the name the certificate is for, or trust its CA",
            std::error::Error::source(err).map(|cause| cause.to_string()).unwrap_or_default()
        ));
    }
    None
}

/// Whether `base`'s port answers a plain HTTP request within a few
/// seconds (only asked after a TLS connection to it failed).
async fn speaks_plain_http(base: &Url) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (Some(host), Some(port)) = (base.host_str(), base.port_or_known_default()) else { return false };
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port)).await.ok()?;
        stream.write_all(b"GET / HTTP/1.0\r\nHost: lifeboat\r\n\r\n").await.ok()?;
        let mut start = [0u8; 5];
        stream.read_exact(&mut start).await.ok()?;
        Some(&start == b"HTTP/")
    };
    tokio::time::timeout(Duration::from_secs(3), probe).await.ok().flatten().unwrap_or(false)
}

/// Full jitter over an exponential ceiling.
fn backoff(attempt: u32) -> Duration {
    let ceiling = BACKOFF_BASE.saturating_mul(2u32.saturating_pow(attempt)).min(BACKOFF_CAP);
    let millis = rand::rng().random_range(ceiling.as_millis() as u64 / 2..=ceiling.as_millis() as u64);
    Duration::from_millis(millis)
}

/// The errors `absent` picks out as `None`.
fn or_none<T>(result: Result<T, Error>, absent: impl Fn(&Error) -> bool) -> Result<Option<T>, Error> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(err) if absent(&err) => Ok(None),
        Err(err) => Err(err),
    }
}

/// A 404 as `None`: something Synapse does not know (any more).
fn found<T>(result: Result<T, Error>) -> Result<Option<T>, Error> {
    or_none(result, |err| matches!(err, Error::NotFound))
}

/// One account's admin API path (details, create, modify).
fn user_path(user_id: &str) -> String {
    format!("/_synapse/admin/v2/users/{}", urlencode(user_id))
}

fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>().replace('+', "%20")
}

/// Times a whole listing (accounts, rooms) is read when it changed while it
/// was being read (offset paging then repeats some and may skip others).
pub const LISTING_ATTEMPTS: u32 = 3;

/// Does a listing's next page token move forward? Synapse's are offsets:
/// one that goes back (2, 4, 2, …) would page forever.
fn moves_forward(last: Option<&str>, next: &str) -> bool {
    match (last.map(str::parse::<u64>), next.parse::<u64>()) {
        (None, _) => true,
        (Some(Ok(last)), Ok(next)) => next > last,
        _ => last != Some(next),
    }
}

/// Cursor over the listing. A listing is complete only when Synapse says
/// there is no next page; anything short of that is an error to the caller.
pub struct UserPages<'a> {
    client: &'a SynapseClient,
    page_size: u32,
    next: Option<String>,
    /// Every next page token so far: one given again (tokens that are not
    /// offsets, from a proxy or a later Synapse) would page forever too.
    given: HashSet<String>,
    done: bool,
    /// Synapse's count of accounts: the largest any page gave.
    pub total: Option<i64>,
    /// The count when the listing began.
    first_total: Option<i64>,
    /// A later page counted fewer accounts than an earlier one.
    shrank: bool,
    server_name: Option<String>,
}

impl UserPages<'_> {
    /// The count when the listing began, when it exceeds the `distinct`
    /// accounts read: some were skipped. Synapse deletes no account, so with
    /// offset paging an account registered while the listing is read can
    /// only shift later ones forward (one read twice, the newcomer left to
    /// the next sync): every account there at the start is still read. On a
    /// busy homeserver, asking more would refuse every listing.
    pub fn missed_some(&self, distinct: u64) -> Option<i64> {
        if self.shrank {
            return self.total;
        }
        self.first_total.filter(|total| (distinct as i64) < *total)
    }

    /// Refuse listings with accounts of another server: a `homeserver.url`
    /// pointing at the wrong Synapse must not look like everyone vanished.
    pub fn local_to(mut self, server_name: &str) -> Self {
        self.server_name = Some(server_name.to_owned());
        self
    }

    /// The next page, or `None` once the listing is complete.
    pub async fn next_page(&mut self) -> Result<Option<Vec<ListedUser>>, Error> {
        if self.done {
            return Ok(None);
        }
        let page = self.client.users_page(self.next.as_deref(), self.page_size).await?;
        let Some(total) = page.total else {
            return Err(self.client.bad_response("a page of the account listing came without its total count"));
        };
        // A count that goes down means accounts went (a wipe while the
        // listing was read, a replica that lags): pages may have been skipped.
        self.shrank |= self.total.is_some_and(|seen| total < seen);
        self.first_total.get_or_insert(total);
        self.total = Some(self.total.map_or(total, |seen| seen.max(total)));
        match page.next_token {
            Some(token) if !moves_forward(self.next.as_deref(), &token) || !self.given.insert(token.clone()) => {
                let detail = format!("the account listing's next_token {token} does not move past the last one");
                return Err(self.client.bad_response(detail));
            }
            Some(token) => self.next = Some(token),
            None => self.done = true,
        }
        if let Some(server_name) = &self.server_name {
            let suffix = format!(":{server_name}");
            if let Some(stranger) = page.users.iter().find(|user| !user.user_id.ends_with(&suffix)) {
                return Err(self.client.bad_response(format!(
                    "it lists {}, which is not an account of homeserver.server_name = {server_name}; check homeserver.server_name (the part after ':' in this server's user IDs) and that homeserver.url points at that server",
                    stranger.user_id
                )));
            }
        }
        Ok(Some(page.users))
    }
}
