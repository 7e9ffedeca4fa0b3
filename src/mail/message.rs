//! Turning an [`OutgoingEmail`] into a lettre [`Message`].

use lettre::address::Envelope;
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};

use super::transfer_encoding::encode_text;
use super::{MailError, OutgoingEmail};

/// Builds the multipart/alternative message with every header lifeboat sets.
pub fn build(from: &Mailbox, email: &OutgoingEmail) -> Result<Message, MailError> {
    let to_address: Address = email.to.as_str().parse().map_err(|err| {
        MailError::Permanent(format!(
            "`{}` cannot be used as a recipient ({err}); correct or remove this contact",
            email.to
        ))
    })?;
    let message_id = check_message_id(&email.message_id)?;

    // Given, so that lettre need not parse it back out of the headers.
    let envelope = Envelope::new(Some(from.email.clone()), vec![to_address.clone()]).map_err(|err| {
        MailError::Permanent(format!("no envelope for the message to {} ({err}); this is a bug in lifeboat", email.to))
    })?;
    let mut builder = Message::builder()
        .envelope(envelope)
        .from(from.clone())
        .to(Mailbox::new(None, to_address))
        .subject(one_line(&email.subject))
        .message_id(Some(format!("<{message_id}>")))
        .date_now()
        // RFC 3834: keeps vacation responders from answering a mass notice.
        .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("Auto-Submitted"), "auto-generated".to_owned()));

    if let Some(unsubscribe) = &email.list_unsubscribe {
        let url = check_unsubscribe_url(unsubscribe)?;
        builder = builder
            .raw_header(HeaderValue::new(HeaderName::new_from_ascii_str("List-Unsubscribe"), format!("<{url}>")))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                "List-Unsubscribe=One-Click".to_owned(),
            ));
    }

    let parts = MultiPart::alternative()
        .singlepart(SinglePart::builder().header(ContentType::TEXT_PLAIN).body(encode_text(&email.text)))
        .singlepart(SinglePart::builder().header(ContentType::TEXT_HTML).body(encode_text(&email.html)));
    builder.multipart(parts).map_err(|err| {
        MailError::Permanent(format!(
            "the message to {} could not be assembled ({err}); this is a bug in lifeboat",
            email.to
        ))
    })
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

/// Header text on one line: control characters (CR, LF, tab…) become spaces.
fn one_line(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect::<String>().trim().to_owned()
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

    fn from() -> Mailbox {
        "Lifeboat <lifeboat@example.org>".parse().unwrap()
    }

    fn formatted(email: &OutgoingEmail) -> String {
        String::from_utf8(build(&from(), email).unwrap().formatted()).unwrap()
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
        let date = header(&lines, "Date");
        assert_eq!(date.len(), 1, "{raw}");
        assert!(date[0].ends_with("+0000"), "{}", date[0]);
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
    fn the_same_outgoing_email_keeps_its_message_id() {
        let first = headers(&formatted(&email()));
        let second = headers(&formatted(&email()));
        assert_eq!(header(&first, "Message-ID"), header(&second, "Message-ID"));
    }

    #[test]
    fn no_unsubscribe_link_means_no_list_headers() {
        let mut email = email();
        email.list_unsubscribe = None;
        let lines = headers(&formatted(&email));
        assert!(header(&lines, "List-Unsubscribe").is_empty());
        assert!(header(&lines, "List-Unsubscribe-Post").is_empty());
    }

    #[test]
    fn header_injection_through_the_subject_is_impossible() {
        let mut email = email();
        email.subject = "Hi\r\nBcc: mallory@example.com\r\n\r\nbody".to_owned();
        let lines = headers(&formatted(&email));
        assert!(header(&lines, "Bcc").is_empty(), "{lines:?}");
        assert_eq!(header(&lines, "Subject").len(), 1);
    }

    #[test]
    fn non_ascii_subject_and_body_are_encoded() {
        let mut email = email();
        email.subject = "[example.org] Datenbank verloren — wie es weitergeht".to_owned();
        email.text = "Grüße\n".to_owned();
        let raw = build(&from(), &email).unwrap().formatted();
        assert!(raw.is_ascii(), "the message must be 7-bit clean");
        let raw = String::from_utf8(raw).unwrap();
        assert!(header(&headers(&raw), "Subject")[0].contains("=?utf-8?"), "{raw}");
    }

    #[test]
    fn bad_message_ids_and_unsubscribe_links_are_refused() {
        for id in ["", "no-at-sign", "<x@y>", "a b@c", "a@b@c", "@c", "a@", "x\r\n@y"] {
            let mut email = email();
            email.message_id = id.to_owned();
            assert!(matches!(build(&from(), &email), Err(MailError::Permanent(_))), "{id:?}");
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
            assert!(matches!(build(&from(), &email), Err(MailError::Permanent(_))), "{link:?}");
        }
    }
}
