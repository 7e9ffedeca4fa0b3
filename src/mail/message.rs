//! An [`OutgoingEmail`] as a lettre [`Message`]: multipart/alternative with
//! the text part first, lettre choosing each part's transfer encoding and
//! encoding the header values that come from people (RFC 2047).
//!
//! The envelope names the recipient's domain in punycode, as does the `To`
//! header: a server without SMTPUTF8 takes an IDN domain that way (only a
//! local part outside ASCII still needs SMTPUTF8).

use lettre::message::header::{HeaderName, HeaderValue, MessageId};
use lettre::message::{Mailbox, MultiPart};
use lettre::{Address, Message};

use super::{MailError, OutgoingEmail};
use crate::plain_text::one_line;

const AUTO_SUBMITTED: HeaderName = HeaderName::new_from_ascii_str("Auto-Submitted");
const LIST_UNSUBSCRIBE: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe");
const LIST_UNSUBSCRIBE_POST: HeaderName = HeaderName::new_from_ascii_str("List-Unsubscribe-Post");

/// The message from `from`, with its envelope (`message.envelope()`) and
/// its bytes (`message.formatted()`).
pub(super) fn compose(from: &Mailbox, email: &OutgoingEmail) -> Result<Message, MailError> {
    let to = recipient(email.to.as_str())?;
    let message_id = check_message_id(&email.message_id)?;
    let unsubscribe = email.list_unsubscribe.as_deref().map(check_unsubscribe_url).transpose()?;

    let mut builder = Message::builder()
        .from(from.clone())
        .to(Mailbox::new(None, to))
        .subject(one_line(&email.subject))
        .header(MessageId::from(format!("<{message_id}>")))
        // RFC 3834: keeps vacation responders from answering a mass notice.
        .raw_header(HeaderValue::new(AUTO_SUBMITTED, "auto-generated".to_owned()));
    if let Some(url) = unsubscribe {
        builder = builder.raw_header(HeaderValue::new(LIST_UNSUBSCRIBE, format!("<{url}>")));
        // RFC 8058 one-click needs an https link.
        if url.starts_with("https://") {
            builder =
                builder.raw_header(HeaderValue::new(LIST_UNSUBSCRIBE_POST, "List-Unsubscribe=One-Click".to_owned()));
        }
    }
    builder
        .multipart(MultiPart::alternative_plain_html(email.text.clone(), email.html.clone()))
        .map_err(|err| MailError::Permanent(format!("the message to {} cannot be built ({err})", email.to)))
}

/// The recipient with its domain in punycode.
fn recipient(to: &str) -> Result<Address, MailError> {
    let refuse = |reason: String| {
        MailError::Permanent(format!("`{to}` cannot be used as a recipient ({reason}); correct or remove this contact"))
    };
    let (user, domain) = to.rsplit_once('@').ok_or_else(|| refuse("it has no @".to_owned()))?;
    let ascii_domain = crate::email::ascii_domain(domain).map_err(|err| refuse(format!("the domain: {err}")))?;
    Address::new(user, ascii_domain).map_err(|err| refuse(err.to_string()))
}

/// A Message-ID is `left@right` without the angle brackets: printable ASCII,
/// no spaces, no `<>`, exactly one `@` between two non-empty halves.
fn check_message_id(id: &str) -> Result<&str, MailError> {
    let printable = id.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"' | b'\\'));
    let halves_ok = matches!(
        id.split_once('@'),
        Some((left, right)) if !left.is_empty() && !right.is_empty() && !right.contains('@')
    );
    if printable && halves_ok {
        Ok(id)
    } else {
        Err(MailError::Permanent(format!(
            "the message id {id:?} is not of the form left@right in printable ASCII; \
             this is a bug in lifeboat"
        )))
    }
}

/// Only absolute http(s) URLs make sense for one-click unsubscribe (RFC 8058),
/// and inside `<…>` in a header only printable ASCII without `<`, `>`, `"`
/// or spaces. (The links are lifeboat's own, built from a parsed URL: this
/// checks what the header needs without parsing each one again.)
fn check_unsubscribe_url(raw: &str) -> Result<&str, MailError> {
    let rest = raw.strip_prefix("https://").or_else(|| raw.strip_prefix("http://"));
    let host_present = rest.is_some_and(|rest| !rest.is_empty() && !rest.starts_with(['/', '?', '#', ':', '@']));
    let header_safe = raw.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"' | b'\\'));
    if host_present && header_safe {
        Ok(raw)
    } else {
        Err(MailError::Permanent(format!(
            "the unsubscribe link {raw:?} is not an absolute http(s) URL; check web.public_url"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::email::EmailAddress;

    fn email() -> OutgoingEmail {
        OutgoingEmail {
            to: EmailAddress::parse("Alice@Example.net").unwrap(),
            subject: "[example.org] Database lost: your account and how to come back".to_owned(),
            text: "Hello Alice,\n\nyour token is abc~123.\n".to_owned(),
            html: "<p>Hello Alice,</p><p>your token is <code>abc~123</code>.</p>".to_owned(),
            message_id: "incident-3.delivery-17@example.org".to_owned(),
            list_unsubscribe: Some("https://lifeboat.example.org/unsubscribe?c=17&sig=0a1b".to_owned()),
        }
    }

    fn composed(email: &OutgoingEmail) -> Result<Message, MailError> {
        compose(&"Lifeboat <lifeboat@example.org>".parse().unwrap(), email)
    }

    fn formatted(email: &OutgoingEmail) -> String {
        String::from_utf8(composed(email).unwrap().formatted()).unwrap()
    }

    /// The header block only (before the first empty line), unfolded.
    fn headers(raw: &str) -> Vec<String> {
        let head = raw.split("\r\n\r\n").next().unwrap();
        let mut lines: Vec<String> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                lines.last_mut().unwrap().push_str(line);
            } else {
                lines.push(line.to_owned());
            }
        }
        lines
    }

    fn header<'a>(lines: &'a [String], name: &str) -> Vec<&'a str> {
        let prefix = format!("{name}: ");
        lines.iter().filter_map(|line| line.strip_prefix(&prefix)).collect()
    }

    #[test]
    fn every_header_is_set() {
        let raw = formatted(&email());
        let lines = headers(&raw);
        assert_eq!(header(&lines, "From"), ["Lifeboat <lifeboat@example.org>"]);
        assert_eq!(header(&lines, "To"), ["alice@example.net"]);
        assert_eq!(header(&lines, "Subject"), ["[example.org] Database lost: your account and how to come back"]);
        assert_eq!(header(&lines, "Message-ID"), ["<incident-3.delivery-17@example.org>"]);
        assert_eq!(header(&lines, "List-Unsubscribe"), ["<https://lifeboat.example.org/unsubscribe?c=17&sig=0a1b>"]);
        assert_eq!(header(&lines, "List-Unsubscribe-Post"), ["List-Unsubscribe=One-Click"]);
        assert_eq!(header(&lines, "Auto-Submitted"), ["auto-generated"]);
        assert_eq!(header(&lines, "MIME-Version"), ["1.0"]);
        assert_eq!(header(&lines, "Date").len(), 1, "{raw}");
        let content_type = header(&lines, "Content-Type");
        assert!(content_type[0].starts_with("multipart/alternative"), "{content_type:?}");
    }

    #[test]
    fn both_parts_are_present_text_first() {
        let raw = formatted(&email());
        let plain = raw.find("Content-Type: text/plain; charset=utf-8").unwrap();
        let html = raw.find("Content-Type: text/html; charset=utf-8").unwrap();
        assert!(plain < html, "text/plain must come before text/html");
        assert!(raw.contains("your token is abc~123."));
        assert!(raw.contains("<code>abc~123</code>"));
    }

    #[test]
    fn an_idn_domain_goes_out_in_punycode() {
        let mut email = email();
        email.to = EmailAddress::parse("anna@bücher.example").unwrap();
        let message = composed(&email).unwrap();
        let to: Vec<String> = message.envelope().to().iter().map(ToString::to_string).collect();
        assert_eq!(to, ["anna@xn--bcher-kva.example"]);
        let raw = String::from_utf8(message.formatted()).unwrap();
        assert_eq!(header(&headers(&raw), "To"), ["anna@xn--bcher-kva.example"]);
    }

    #[test]
    fn no_unsubscribe_link_means_no_list_headers_and_http_gets_no_one_click() {
        let mut email = email();
        email.list_unsubscribe = None;
        let lines = headers(&formatted(&email));
        assert!(header(&lines, "List-Unsubscribe").is_empty());
        assert!(header(&lines, "List-Unsubscribe-Post").is_empty());

        email.list_unsubscribe = Some("http://127.0.0.1:8080/unsubscribe?c=17&sig=0a1b".to_owned());
        let lines = headers(&formatted(&email));
        assert_eq!(header(&lines, "List-Unsubscribe"), ["<http://127.0.0.1:8080/unsubscribe?c=17&sig=0a1b>"]);
        assert!(header(&lines, "List-Unsubscribe-Post").is_empty(), "RFC 8058 wants https");
    }

    #[test]
    fn a_long_subject_is_folded_and_comes_back_whole() {
        let mut email = email();
        email.subject = format!("[example.org] {}", "a rather long incident title ".repeat(4).trim_end());
        let raw = formatted(&email);
        let head = raw.split("\r\n\r\n").next().unwrap();
        assert!(head.split("\r\n").all(|line| line.len() <= 78), "{head}");
        assert_eq!(header(&headers(&raw), "Subject"), [email.subject.as_str()]);
    }

    #[test]
    fn header_injection_through_the_subject_is_impossible() {
        let mut email = email();
        email.subject = "Hi\r\nBcc: mallory@example.com\r\n\r\nbody".to_owned();
        let lines = headers(&formatted(&email));
        assert!(header(&lines, "Bcc").is_empty(), "{lines:?}");
        // One plain line (lettre alone would refuse the line breaks by
        // encoding the whole subject, which no reader could then scan).
        assert_eq!(header(&lines, "Subject"), ["Hi  Bcc: mallory@example.com    body"]);
    }

    #[test]
    fn non_ascii_subject_and_body_are_encoded() {
        let mut email = email();
        email.subject = "[example.org] Datenbank verloren — wie es weitergeht".to_owned();
        email.text = "Grüße\n".to_owned();
        let raw = composed(&email).unwrap().formatted();
        assert!(raw.is_ascii(), "the message must be 7-bit clean");
        let raw = String::from_utf8(raw).unwrap();
        assert!(header(&headers(&raw), "Subject")[0].contains("=?utf-8?"), "{raw}");
    }

    #[test]
    fn bad_message_ids_and_unsubscribe_links_are_refused() {
        for id in ["", "no-at-sign", "<x@y>", "a b@c", "a@b@c", "@c", "a@", "x\r\n@y"] {
            let mut email = email();
            email.message_id = id.to_owned();
            assert!(matches!(composed(&email), Err(MailError::Permanent(_))), "{id:?}");
        }
        for link in [
            "javascript:alert(1)",
            "/unsubscribe",
            "mailto:x@example.org",
            "https://",
            "https:///path",
            "https://host/a b",
            "https://host/a>\r\nBcc: x@example.org",
        ] {
            let mut email = email();
            email.list_unsubscribe = Some(link.to_owned());
            assert!(matches!(composed(&email), Err(MailError::Permanent(_))), "{link:?}");
        }
    }
}
