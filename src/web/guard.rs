//! What stands between a visitor and the registry: security headers, CSRF
//! tokens, the client's IP (proxies believed only when configured), and
//! rate limits.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use ipnet::IpNet;
use rand::RngCore;

use crate::limit::FixedWindows;
use crate::links::{sign, verify};

/// No inline script or style anywhere: the pages use one same-origin
/// stylesheet and no JavaScript at all.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   base-uri 'none'; frame-ancestors 'none'";

pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // A page's address goes nowhere, not even to this site's own
    // stylesheet, where a proxy's access log would keep a claim link's
    // query string; form posts keep a real `Origin` (under no-referrer
    // browsers send `Origin: null`).
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("strict-origin"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    response
}

/// The cookie holding a per-browser value the server made: a random part
/// and its HMAC, so a value someone else chose (and planted) is never
/// taken. Forms carry an HMAC of the whole value, which another site can
/// neither read nor compute.
pub const CSRF_COOKIE: &str = "lifeboat_csrf";

/// The browser's CSRF value, and whether it is new (then it must be set).
pub struct CsrfCookie {
    pub value: String,
    pub is_new: bool,
}

/// The browser's cookie if this server issued it, else a new one.
pub fn csrf_cookie(key: &secrecy::SecretString, headers: &HeaderMap) -> CsrfCookie {
    match issued_cookie(key, headers) {
        Some(value) => CsrfCookie { value, is_new: false },
        None => {
            let mut bytes = [0u8; 16];
            rand::rng().fill_bytes(&mut bytes);
            let random = hex::encode(bytes);
            let value = format!("{random}.{}", sign(key, &format!("csrf-cookie:{random}")));
            CsrfCookie { value, is_new: true }
        }
    }
}

/// The CSRF cookie, only when its signature shows this server made it.
fn issued_cookie(key: &secrecy::SecretString, headers: &HeaderMap) -> Option<String> {
    let value = cookie(headers, CSRF_COOKIE)?;
    let (random, signature) = value.split_once('.')?;
    let well_formed = random.len() == 32 && random.bytes().all(|b| b.is_ascii_hexdigit());
    (well_formed && verify(key, &format!("csrf-cookie:{random}"), signature)).then_some(value)
}

/// `Set-Cookie` for a new CSRF value; `Secure` when the page is served over https.
pub fn set_csrf_cookie(value: &str, https: bool) -> HeaderValue {
    let secure = if https { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{CSRF_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict{secure}"))
        .expect("hex, base64url and fixed text make a valid header")
}

pub fn csrf_token(key: &secrecy::SecretString, cookie_value: &str) -> String {
    sign(key, &format!("csrf:{cookie_value}"))
}

/// Does the form's token match this browser's server-issued cookie?
pub fn csrf_ok(key: &secrecy::SecretString, headers: &HeaderMap, token: Option<&str>) -> bool {
    match (issued_cookie(key, headers), token) {
        (Some(value), Some(token)) => verify(key, &format!("csrf:{value}"), token),
        _ => false,
    }
}

/// A form post must not come from another site: when the browser says
/// where it comes from (`Origin`, else `Referer`), that must be `public`'s
/// origin. Neither header (privacy tools strip them) leaves the CSRF token
/// to decide.
pub fn same_origin(headers: &HeaderMap, public: &url::Url) -> bool {
    let named = |name| headers.get(name).map(|value: &HeaderValue| value.to_str().unwrap_or("null").trim().to_owned());
    let Some(claimed) = named(header::ORIGIN).or_else(|| named(header::REFERER)) else { return true };
    url::Url::parse(&claimed).is_ok_and(|url| url.origin() == public.origin())
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// The visitor's IP: the peer, unless the peer is a configured proxy; then
/// the nearest address in `X-Forwarded-For` that is not one of our proxies,
/// read from the right (addresses further left are whatever the client
/// claimed, so whatever it wrote there cannot spoil the proxy's entry).
/// Past an entry that is not an address, it is the peer's.
pub fn client_ip(peer: Option<ConnectInfo<SocketAddr>>, headers: &HeaderMap, trusted: &[IpAddr]) -> Option<IpAddr> {
    // A listener on `[::]` sees an IPv4 proxy as `::ffff:a.b.c.d`.
    let peer = peer?.0.ip().to_canonical();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect();
    let nearest = forwarded
        .into_iter()
        .rev()
        .map(|part| part.trim().parse::<IpAddr>().map(|ip| ip.to_canonical()))
        .take_while(Result::is_ok)
        .flatten()
        .find(|ip| !trusted.contains(ip));
    Some(nearest.unwrap_or(peer))
}

/// The web page's limits: per client IP and per target (the account or
/// address a form names); a client counts by its network once a flood has
/// filled the counters ([`crate::limit`]).
pub struct RateLimiter {
    per_ip: u32,
    per_target: u32,
    windows: FixedWindows,
}

/// The network a client address is in, as newcomers to a full limiter are
/// counted (and a network's share of a mail budget): an IPv4 /24, an IPv6
/// /48 (what one site is given).
pub(crate) fn network_key(ip: IpAddr) -> String {
    format!("net:{}", prefix_of(ip, 24, 48))
}

/// Who a client address counts as: an IPv6 host may use any address of
/// its /64, so the /64 is one client (an IPv4-mapped address is IPv4).
pub(crate) fn client_key(ip: IpAddr) -> String {
    format!("ip:{}", prefix_of(ip, 32, 64))
}

/// The prefix that is all one host's, whose clients also count as one
/// together (with a larger share): an IPv6 /48, since a home line gets a
/// /56 and a free tunnel a /48. `None` for IPv4: a /24 is many people's (a
/// campus, a carrier's NAT).
pub(crate) fn site_key(ip: IpAddr) -> Option<String> {
    ip.to_canonical().is_ipv6().then(|| format!("site:{}", prefix_of(ip, 24, 48)))
}

/// `ip` (an IPv4-mapped one as IPv4) cut to its first `v4` or `v6` bits,
/// shown like `203.0.113.0/24` or `2001:db8:1::/48`.
fn prefix_of(ip: IpAddr, v4: u8, v6: u8) -> IpNet {
    let ip = ip.to_canonical();
    IpNet::new_assert(ip, if ip.is_ipv4() { v4 } else { v6 }).trunc()
}

/// How many clients' limit the /64s of one IPv6 /48 share.
const IPV6_SITE_SHARE: u32 = 4;

impl RateLimiter {
    pub fn new(per_ip: u32, per_target: u32, window: Duration) -> RateLimiter {
        RateLimiter { per_ip, per_target, windows: FixedWindows::new("web", window) }
    }

    /// Counts one form submission from `ip`; `false` once over the limit.
    /// The clients of one host's [`site_key`] share [`IPV6_SITE_SHARE`]
    /// clients' limit.
    pub fn allow_ip(&self, ip: Option<IpAddr>) -> bool {
        match ip {
            Some(ip) => {
                self.windows.hit(client_key(ip), Some(network_key(ip)), self.per_ip)
                    && site_key(ip).is_none_or(|site| self.windows.hit(site, None, IPV6_SITE_SHARE * self.per_ip))
            }
            None => self.windows.hit("ip:unknown".to_owned(), None, self.per_ip),
        }
    }

    /// Counts one submission naming `target` (already normalized) in `form`.
    pub fn allow_target(&self, form: &str, target: &str) -> bool {
        self.windows.hit(format!("{form}:{target}"), None, self.per_target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::MAX_KEYS;

    fn peer(ip: &str) -> Option<ConnectInfo<SocketAddr>> {
        Some(ConnectInfo(SocketAddr::new(ip.parse().unwrap(), 1234)))
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    #[test]
    fn forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let headers = forwarded("203.0.113.7");
        assert_eq!(client_ip(peer("198.51.100.1"), &headers, &[]), Some("198.51.100.1".parse().unwrap()));
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(client_ip(peer("198.51.100.1"), &headers, &[proxy]), Some("198.51.100.1".parse().unwrap()));
        assert_eq!(client_ip(peer("10.0.0.1"), &headers, &[proxy]), Some("203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn a_client_cannot_choose_its_ip_by_prepending_to_forwarded_for() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let headers = forwarded("1.2.3.4, 203.0.113.7");
        assert_eq!(client_ip(peer("10.0.0.1"), &headers, &[proxy]), Some("203.0.113.7".parse().unwrap()));
        let garbage = forwarded("not an ip");
        assert_eq!(client_ip(peer("10.0.0.1"), &garbage, &[proxy]), Some(proxy));
        // What the client wrote left of the proxy's entry cannot spoil it.
        let prefixed = forwarded("unknown, 203.0.113.9");
        assert_eq!(client_ip(peer("10.0.0.1"), &prefixed, &[proxy]), Some("203.0.113.9".parse().unwrap()));
        // An IPv4 proxy as a listener on [::] sees it.
        let headers = forwarded("203.0.113.7");
        assert_eq!(client_ip(peer("::ffff:10.0.0.1"), &headers, &[proxy]), Some("203.0.113.7".parse().unwrap()));
    }

    #[test]
    fn a_flood_of_new_clients_fills_the_limiter_only_so_far_and_shuts_no_newcomer_out() {
        let limiter = RateLimiter::new(2, 2, Duration::from_secs(60));
        let flood = |from: u32, to: u32| {
            for n in from..to {
                for _ in 0..3 {
                    limiter.allow_ip(Some(IpAddr::V4(n.into())));
                }
            }
        };
        flood(0, MAX_KEYS as u32 + 5_000);
        let kept = limiter.windows.keys();
        assert!(kept <= MAX_KEYS, "{kept} keys kept");
        let newcomer = Some("198.51.100.77".parse().unwrap());
        assert!(limiter.allow_ip(newcomer), "a new client past the cap still gets its own budget");
        assert!(limiter.allow_ip(newcomer) && !limiter.allow_ip(newcomer), "and it is still limited");

        // Filled again within the window: counts do not start over again
        // (the flood would have no limit); newcomers count by network.
        let end = 2 * MAX_KEYS as u32 + 5_000;
        flood(MAX_KEYS as u32 + 5_000, end);
        let kept = limiter.windows.keys();
        assert!(kept <= 2 * MAX_KEYS, "{kept} keys kept");
        assert!(!limiter.allow_ip(Some(IpAddr::V4(end.into()))), "the flood's next address, in a spent /24");
        let elsewhere = Some("203.0.113.9".parse().unwrap());
        assert!(limiter.allow_ip(elsewhere), "someone on another network still gets in");
    }

    #[test]
    fn limits_count_per_key_within_a_window() {
        let limiter = RateLimiter::new(2, 1, Duration::from_secs(60));
        let ip = Some("192.0.2.1".parse().unwrap());
        assert!(limiter.allow_ip(ip) && limiter.allow_ip(ip));
        assert!(!limiter.allow_ip(ip));
        assert!(limiter.allow_ip(Some("192.0.2.2".parse().unwrap())));
        assert!(limiter.allow_target("token", "a@example.org"));
        assert!(!limiter.allow_target("token", "a@example.org"));
    }

    #[test]
    fn an_ipv6_host_counts_once_for_its_whole_64_and_a_mapped_ipv4_as_itself() {
        let limiter = RateLimiter::new(2, 1, Duration::from_secs(60));
        let ip = |text: &str| Some(text.parse().unwrap());
        assert!(limiter.allow_ip(ip("2001:db8:1:2::1")) && limiter.allow_ip(ip("2001:db8:1:2:ffff::9")));
        assert!(!limiter.allow_ip(ip("2001:db8:1:2:abcd::1")), "another address of the same /64");
        assert!(limiter.allow_ip(ip("2001:db8:1:3::1")), "the next /64 is another client");
        assert!(limiter.allow_ip(ip("192.0.2.7")) && limiter.allow_ip(ip("::ffff:192.0.2.7")));
        assert!(!limiter.allow_ip(ip("192.0.2.7")), "IPv4-mapped is the same IPv4 client");
    }

    #[test]
    fn the_64s_of_one_ipv6_48_share_four_clients_limit_and_an_ipv4_24_does_not() {
        let limiter = RateLimiter::new(2, 1, Duration::from_secs(60));
        let ip = |text: String| Some(text.parse().unwrap());
        for n in 1..=4 {
            assert!(
                limiter.allow_ip(ip(format!("2001:db8:1:{n}::1")))
                    && limiter.allow_ip(ip(format!("2001:db8:1:{n}::2")))
            );
        }
        assert!(!limiter.allow_ip(ip("2001:db8:1:5::1".into())), "a fifth /64 of the same /48");
        assert!(limiter.allow_ip(ip("2001:db8:2:1::1".into())), "another /48 is another host");
        for n in 1..=10 {
            assert!(limiter.allow_ip(ip(format!("192.0.2.{n}"))), "ten hosts of one /24");
        }
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, format!("other=1; {CSRF_COOKIE}={value}").parse().unwrap());
        headers
    }

    #[test]
    fn csrf_tokens_match_only_a_cookie_this_server_issued() {
        let key = secrecy::SecretString::from("k");
        let issued = csrf_cookie(&key, &HeaderMap::new());
        assert!(issued.is_new);
        let headers = with_cookie(&issued.value);
        assert!(!csrf_cookie(&key, &headers).is_new, "an issued cookie is kept");
        assert!(csrf_ok(&key, &headers, Some(&csrf_token(&key, &issued.value))));
        assert!(!csrf_ok(&key, &headers, Some(&csrf_token(&key, "abd"))));
        assert!(!csrf_ok(&key, &headers, None));
        assert!(!csrf_ok(&key, &HeaderMap::new(), Some(&csrf_token(&key, &issued.value))));

        let chosen = "0123456789abcdef0123456789abcdef";
        assert!(csrf_cookie(&key, &with_cookie(chosen)).is_new, "a value the client chose is replaced");
        assert!(!csrf_ok(&key, &with_cookie(chosen), Some(&csrf_token(&key, chosen))));
        let other_key = secrecy::SecretString::from("other");
        let foreign = csrf_cookie(&other_key, &HeaderMap::new()).value;
        assert!(!csrf_ok(&key, &with_cookie(&foreign), Some(&csrf_token(&key, &foreign))));
    }

    #[test]
    fn a_post_from_another_origin_is_refused_and_one_without_origin_is_left_to_the_token() {
        let public: url::Url = "https://lifeboat.example.org/recover/".parse().unwrap();
        let with = |name: &'static str, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, value.parse().unwrap());
            headers
        };
        assert!(same_origin(&with("origin", "https://lifeboat.example.org"), &public));
        assert!(!same_origin(&with("origin", "https://evil.example"), &public));
        assert!(!same_origin(&with("origin", "http://lifeboat.example.org"), &public));
        assert!(!same_origin(&with("origin", "null"), &public));
        assert!(same_origin(&with("referer", "https://lifeboat.example.org/recover/token"), &public));
        assert!(!same_origin(&with("referer", "https://evil.example/lifeboat.example.org"), &public));
        assert!(same_origin(&HeaderMap::new(), &public));
        // A page elsewhere that also sends a Referer of ours is still refused:
        // Origin, when sent, decides.
        let mut both = with("origin", "https://evil.example");
        both.insert("referer", "https://lifeboat.example.org/recover/token".parse().unwrap());
        assert!(!same_origin(&both, &public));
    }
}
