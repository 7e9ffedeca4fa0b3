//! HMAC-SHA256 with the registry-kept key, for the web page's own links and
//! CSRF tokens. Each use signs a message with its own prefix, so a
//! signature made for one purpose never verifies for another.

use rand::distr::{Alphanumeric, SampleString};
use secrecy::SecretString;

pub use crate::links::{sign, verify};

/// A link id: 32 letters and digits (~190 bits), nothing to URL-encode.
pub fn new_link_id() -> String {
    Alphanumeric.sample_string(&mut rand::rng(), 32)
}

/// What a mailed link signs: its purpose and id.
pub fn link_message(purpose: &str, id: &str) -> String {
    format!("web-link:{purpose}:{id}")
}

/// `<public_url>/<path>?link=<id>&sig=<hmac>`.
pub fn link_url(public_url: &url::Url, key: &SecretString, path: &str, purpose: &str, id: &str) -> String {
    let mut url = public_url.clone();
    let base = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{base}{path}"));
    url.query_pairs_mut().append_pair("link", id).append_pair("sig", &sign(key, &link_message(purpose, id)));
    url.to_string()
}
