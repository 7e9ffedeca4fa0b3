//! Contact email addresses: validated once, stored normalized.

/// An email address in the form lifeboat stores it: trimmed and lowercased
/// (Synapse stores threepid emails lowercased too, so the two compare equal).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EmailAddress(String);

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("`{input}` is not an email address: {reason}")]
pub struct InvalidEmail {
    input: String,
    reason: &'static str,
}

impl EmailAddress {
    pub fn parse(input: &str) -> Result<Self, InvalidEmail> {
        let fail = |reason| InvalidEmail { input: input.to_owned(), reason };
        let address = input.trim().to_lowercase();
        if address.len() > 254 {
            return Err(fail("it is longer than 254 characters"));
        }
        let Some((local, domain)) = address.rsplit_once('@') else {
            return Err(fail("it has no @"));
        };
        if local.is_empty() || local.len() > 64 {
            return Err(fail("the part before @ must be 1 to 64 characters"));
        }
        // The Hangul fillers are letters that show as nothing: an address
        // typed on the web page with them reads as words with spaces between
        // in the DM lifeboat sends about it. No mailbox has one.
        if address.chars().any(|c| matches!(c, '\u{115f}' | '\u{1160}' | '\u{3164}' | '\u{ffa0}')) {
            return Err(fail("it holds letters that show as blank space"));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(fail("the part before @ has a misplaced dot"));
        }
        let local_ok = local.chars().all(|c| c.is_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c));
        if !local_ok {
            return Err(fail("the part before @ has characters mail servers refuse"));
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return Err(fail("the domain after @ needs a dot, like example.org"));
        }
        let labels_ok = labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        });
        if !labels_ok {
            return Err(fail("the domain after @ is not a valid host name"));
        }
        Ok(EmailAddress(address))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The inbox this address reaches, as far as can be told from outside:
    /// its domain in ASCII (full-width and IDN forms of one domain are one
    /// domain), without a `+tag` (sub-addresses of one inbox), and, at
    /// Gmail, without dots. The caps on mail to one inbox count by it, so
    /// that variants of an address typed by someone else do not each get a
    /// day's mail; mail still goes to the address as it is.
    pub fn mailbox(&self) -> String {
        let (local, domain) = self.0.rsplit_once('@').unwrap_or(("", &self.0));
        let domain = ascii_domain(domain).unwrap_or_else(|_| domain.to_owned());
        let local = match local.split_once('+') {
            Some((base, _)) if !base.is_empty() => base,
            _ => local,
        };
        match domain.as_str() {
            "gmail.com" | "googlemail.com" => format!("{}@gmail.com", local.replace('.', "")),
            _ => format!("{local}@{domain}"),
        }
    }

    /// The domain of [`Self::mailbox`]: where a catch-all inbox takes any
    /// local part.
    pub fn mailbox_domain(&self) -> String {
        self.mailbox().rsplit_once('@').map(|(_, domain)| domain.to_owned()).unwrap_or_default()
    }
}

/// A domain as mail servers take it: IDNA's ASCII form (punycode), with
/// full-width and other compatibility forms mapped as browsers map them.
pub fn ascii_domain(domain: &str) -> Result<String, url::ParseError> {
    Ok(match url::Host::parse(domain)? {
        url::Host::Domain(ascii) => ascii,
        _ => domain.to_owned(),
    })
}

// Bound and read back as the text it is: the registry's API takes checked addresses.
crate::checked_text::checked_text!(EmailAddress);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_of_one_inbox_have_one_mailbox() {
        let mailbox = |address: &str| EmailAddress::parse(address).unwrap().mailbox();
        let victim = "victim@example.org";
        for variant in ["Victim@example.org", "victim+1@example.org", "victim+a+b@EXAMPLE.org", "victim@ｅxample.org"]
        {
            assert_eq!(mailbox(variant), victim, "{variant}");
        }
        assert_eq!(mailbox("v.ic.tim+x@googlemail.com"), "victim@gmail.com");
        assert_eq!(mailbox("+tag@example.org"), "+tag@example.org", "nothing before the tag: kept");
        assert_eq!(mailbox("a@bücher.de"), "a@xn--bcher-kva.de");
        assert_ne!(mailbox("v.ictim@example.org"), victim, "dots matter outside Gmail");
        assert_ne!(mailbox("victim@example.org.evil"), victim);
    }

    #[test]
    fn addresses_are_trimmed_and_lowercased() {
        let email = EmailAddress::parse("  Alice.Smith+lb@Example.ORG ").unwrap();
        assert_eq!(email.as_str(), "alice.smith+lb@example.org");
    }

    #[test]
    fn malformed_addresses_are_refused_with_a_reason() {
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.org",
            "alice@localhost",
            "a..b@example.org",
            "alice@exa mple.org",
            "alice smith@example.org",
            "alice@-example.org",
            "<alice@example.org>",
            "x@your\u{3164}account\u{3164}closes.example.org",
            "your\u{ffa0}account@example.org",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad} should be refused");
        }
        let err = EmailAddress::parse("alice").unwrap_err().to_string();
        assert_eq!(err, "`alice` is not an email address: it has no @");
    }
}
