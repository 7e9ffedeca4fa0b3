//! Signed links in notices: unsubscribe and claim, signed by HMAC-SHA256
//! with a key generated once and kept in the registry, so they cannot be
//! forged or altered. Formats (fixed; the web page verifies them):
//! - `<web.public_url>/unsubscribe?contact=<contact id>&sig=<hex HMAC of "unsubscribe:<contact id>:<address>">`
//!   (the address too: a contact id can name another address later, after a restore, say)
//! - `<web.public_url>/claim?account=<user ID>&incident=<id>&hold=<held at>&until=<expiry>&contact=<contact id>&sig=<hex HMAC
//!   of "claim:<incident>:<held at>:<until>:<contact id>:<length of user ID>:<user ID>:<address>">` (times
//!   in UTC ms). `hold` names the hold the link is for: once the ID is claimed, or held again after
//!   another loss, the link is dead. `contact` names the contact it was sent to (and, signed, its
//!   address): once that is no longer the account's contact, the link is dead too.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use url::Url;

/// Name of the registry setting holding the signing key.
pub const LINK_KEY: &str = "link_signing_key";

/// Unsubscribe links for one web address and key: a notify run puts one in
/// every message, so the address and the keyed HMAC are prepared once.
#[derive(Clone)]
pub struct UnsubscribeLinks {
    /// `<web.public_url>/unsubscribe?contact=`
    prefix: String,
    /// Keyed, and fed `unsubscribe:` already.
    mac: Hmac<Sha256>,
}

impl UnsubscribeLinks {
    pub fn new(public_url: &Url, key: &SecretString) -> UnsubscribeLinks {
        let mut url = public_url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/unsubscribe"));
        url.set_fragment(None);
        // The contact id (digits) and the signature (hex) need no escaping.
        url.query_pairs_mut().append_pair("contact", "");
        UnsubscribeLinks { prefix: url.into(), mac: mac_of(key, "unsubscribe:") }
    }

    pub fn url(&self, contact_id: i64, address: &str) -> String {
        let id = contact_id.to_string();
        let mut mac = self.mac.clone();
        for signed in [id.as_str(), ":", address] {
            mac.update(signed.as_bytes());
        }
        let mut sig = [0u8; 64];
        hex::encode_to_slice(mac.finalize().into_bytes(), &mut sig).expect("32 bytes are 64 hex digits");
        let sig = std::str::from_utf8(&sig).expect("hex digits are ASCII");
        // Pieces pushed into one string sized once: this runs per message.
        let mut url = String::with_capacity(self.prefix.len() + id.len() + "&sig=".len() + sig.len());
        for piece in [&self.prefix, id.as_str(), "&sig=", sig] {
            url.push_str(piece);
        }
        url
    }
}

/// Does `sig` sign an unsubscribe link for `contact_id` at `address`? (Constant time.)
pub fn verify_unsubscribe(key: &SecretString, contact_id: i64, address: &str, sig: &str) -> bool {
    verify(key, &format!("unsubscribe:{contact_id}:{address}"), sig)
}

/// What a claim link is for: one hold of one account, in one incident, until a time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ClaimLink {
    pub account: String,
    pub incident: i64,
    /// The hold's `custody_at`.
    pub hold: i64,
    /// UTC ms after which the link is dead.
    pub until: i64,
}

impl ClaimLink {
    fn message(&self, contact_id: i64, address: &str) -> String {
        // Numbers first and the ID's length: the message names one link only.
        let ClaimLink { account, incident, hold, until } = self;
        format!("claim:{incident}:{hold}:{until}:{contact_id}:{}:{account}:{address}", account.len())
    }

    /// The link as sent to the contact `contact_id` at `address`: it works
    /// only while that is a contact of the account.
    pub fn url(&self, public_url: &Url, key: &SecretString, contact_id: i64, address: &str) -> String {
        let mut url = public_url.clone();
        let base = url.path().trim_end_matches('/').to_owned();
        url.set_path(&format!("{base}/claim"));
        url.set_fragment(None);
        url.query_pairs_mut()
            .clear()
            .append_pair("account", &self.account)
            .append_pair("incident", &self.incident.to_string())
            .append_pair("hold", &self.hold.to_string())
            .append_pair("until", &self.until.to_string())
            .append_pair("contact", &contact_id.to_string())
            .append_pair("sig", &sign(key, &self.message(contact_id, address)));
        url.into()
    }

    /// Does `sig` sign this link, as sent to `contact_id` at `address`?
    /// (Constant time.) Whether it is still usable (the time, the hold,
    /// the contact) is for the caller to check.
    pub fn verify(&self, key: &SecretString, contact_id: i64, address: &str, sig: &str) -> bool {
        verify(key, &self.message(contact_id, address), sig)
    }
}

fn mac_of(key: &SecretString, message: &str) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes()).expect("HMAC takes keys of any length");
    mac.update(message.as_bytes());
    mac
}

/// Hex HMAC-SHA256 of `message` (each use prefixes its own purpose, so a
/// signature made for one never verifies for another).
pub fn sign(key: &SecretString, message: &str) -> String {
    hex::encode(mac_of(key, message).finalize().into_bytes())
}

/// Constant-time check of a hex signature made by [`sign`].
pub fn verify(key: &SecretString, message: &str, signature: &str) -> bool {
    let Ok(signature) = hex::decode(signature) else { return false };
    mac_of(key, message).verify_slice(&signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signature made from scratch, as the link format describes it.
    fn signature(key: &SecretString, message: &str) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key.expose_secret().as_bytes()).expect("HMAC takes keys of any length");
        mac.update(message.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    #[test]
    fn prepared_links_are_the_same_as_one_made_alone() {
        let key = SecretString::from("k");
        for base in
            ["https://lifeboat.example.org/", "https://lifeboat.example.org/base", "http://127.0.0.1:8080/x/?a=b"]
        {
            let base = Url::parse(base).unwrap();
            let links = UnsubscribeLinks::new(&base, &key);
            for contact in [1, 42, 9_000_000_000] {
                let mut expected = base.clone();
                let path = expected.path().trim_end_matches('/').to_owned();
                expected.set_path(&format!("{path}/unsubscribe"));
                expected
                    .query_pairs_mut()
                    .append_pair("contact", &contact.to_string())
                    .append_pair("sig", &signature(&key, &format!("unsubscribe:{contact}:a@example.org")));
                assert_eq!(links.url(contact, "a@example.org"), expected.as_str());
            }
        }
    }

    #[test]
    fn unsubscribe_links_verify_only_for_their_contact_and_its_address() {
        let key = SecretString::from("k");
        let base = Url::parse("https://lifeboat.example.org/base/").unwrap();
        let url = UnsubscribeLinks::new(&base, &key).url(42, "a@example.org");
        assert!(url.starts_with("https://lifeboat.example.org/base/unsubscribe?contact=42&sig="));
        let sig = url.split("sig=").nth(1).unwrap();
        assert!(verify_unsubscribe(&key, 42, "a@example.org", sig));
        assert!(!verify_unsubscribe(&key, 43, "a@example.org", sig));
        assert!(!verify_unsubscribe(&key, 42, "b@example.org", sig), "the id now names another address");
        assert!(!verify_unsubscribe(&SecretString::from("other"), 42, "a@example.org", sig));
        assert!(!verify_unsubscribe(&key, 42, "a@example.org", "zz"));
    }

    fn claim() -> ClaimLink {
        ClaimLink {
            account: "@alice:example.org".into(),
            incident: 3,
            hold: 1_700_000_000_000,
            until: 1_800_000_000_000,
        }
    }

    #[test]
    fn a_claim_link_verifies_for_what_it_names_only() {
        let key = SecretString::from("k");
        let base = Url::parse("https://lifeboat.example.org/base/").unwrap();
        let url = Url::parse(&claim().url(&base, &key, 7, "a@example.org")).unwrap();
        assert_eq!(url.path(), "/base/claim");
        let query: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
        let sig = &query["sig"];
        assert_eq!(query["account"], "@alice:example.org");
        assert_eq!(query["contact"], "7");
        assert!(!url.as_str().contains("a%40example") && !url.as_str().contains("a@example"), "no address: {url}");
        assert!(claim().verify(&key, 7, "a@example.org", sig));
        assert!(!claim().verify(&key, 8, "a@example.org", sig), "another contact");
        assert!(!claim().verify(&key, 7, "b@example.org", sig), "the contact now has another address");
        for other in [
            ClaimLink { account: "@bob:example.org".into(), ..claim() },
            ClaimLink { incident: 4, ..claim() },
            ClaimLink { hold: 1, ..claim() },
            ClaimLink { until: 1_900_000_000_000, ..claim() },
        ] {
            assert!(!other.verify(&key, 7, "a@example.org", sig), "{other:?}");
        }
        assert!(!claim().verify(&SecretString::from("other"), 7, "a@example.org", sig));
        assert!(!claim().verify(&key, 7, "a@example.org", "not hex"));
    }
}
