//! HMAC-SHA256 with the registry-kept key, for the web page's own links and
//! CSRF tokens. Each use signs a message with its own prefix, so a
//! signature made for one purpose never verifies for another.

use hmac::{Hmac, Mac};
use rand::distr::{Alphanumeric, SampleString};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

fn mac(key: &SecretString, message: &str) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes()).expect("HMAC takes keys of any length");
    mac.update(message.as_bytes());
    mac
}

pub fn sign(key: &SecretString, message: &str) -> String {
    hex::encode(mac(key, message).finalize().into_bytes())
}

/// Constant-time check of a hex signature.
pub fn verify(key: &SecretString, message: &str, signature: &str) -> bool {
    let Ok(signature) = hex::decode(signature) else { return false };
    mac(key, message).verify_slice(&signature).is_ok()
}

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
