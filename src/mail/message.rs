//! Writing an [`OutgoingEmail`] as the bytes of a MIME message
//! (RFC 5322, 2045, 2046): multipart/alternative, the text part first.
//!
//! lifeboat writes the message itself and leaves to lettre what needs care:
//! parsing the addresses, and encoding and folding the header values that
//! come from people (RFC 2047 for a subject or a name outside ASCII). Why
//! not lettre's message builder: per message it builds a header map, draws
//! a random boundary and copies each part twice; with the quoted-printable
//! HTML that was a fifth of the send path's CPU in `benches/notify_email.rs`.
//! Here what is the same for every message (From, the boundary, the fixed
//! headers) is prepared once per [`Composer`].

use std::borrow::Cow;
use std::io::Write;

use lettre::Address;
use lettre::message::header::{self, Headers};
use lettre::message::{Mailbox, Mailboxes};
use memchr::memmem;
use rand::distr::{Alphanumeric, SampleString};

use super::transfer_encoding::write_encoded_part;
use super::{MailError, OutgoingEmail};

/// Writes the messages of one sender.
#[derive(Clone)]
pub struct Composer {
    /// The `From:` line, encoded once.
    from_line: String,
    /// The envelope sender (`MAIL FROM`).
    envelope_from: String,
    /// The MIME boundary of every message: random per composer. `=_` cannot
    /// occur in quoted-printable or base64 text; a 7bit part is checked.
    boundary: String,
    /// Finds the boundary in a part.
    boundary_finder: memmem::Finder<'static>,
}

impl Composer {
    pub fn new(from: &Mailbox) -> Composer {
        let mut headers = Headers::new();
        headers.set(header::From::from(Mailboxes::from(from.clone())));
        let boundary = new_boundary();
        Composer {
            from_line: headers.to_string(),
            envelope_from: from.email.to_string(),
            boundary_finder: memmem::Finder::new(&boundary).into_owned(),
            boundary,
        }
    }

    /// The address `MAIL FROM` names.
    pub fn envelope_from(&self) -> &str {
        &self.envelope_from
    }

    /// The whole message, headers and body, with CRLF line breaks (not yet
    /// dot-stuffed for SMTP).
    pub fn compose(&self, email: &OutgoingEmail) -> Result<Vec<u8>, MailError> {
        let to: Address = email.to.as_str().parse().map_err(|err| {
            MailError::Permanent(format!(
                "`{}` cannot be used as a recipient ({err}); correct or remove this contact",
                email.to
            ))
        })?;
        let message_id = check_message_id(&email.message_id)?;
        let unsubscribe = email.list_unsubscribe.as_deref().map(check_unsubscribe_url).transpose()?;

        let mut out = Vec::with_capacity(email.text.len() + email.html.len() + 1024);
        out.extend_from_slice(self.from_line.as_bytes());
        // The values that come from people: as they are when that is safe,
        // else encoded and folded by lettre.
        let mut encoded = Headers::new();
        if !write_plain_header(&mut out, "To", to.as_ref()) {
            encoded.set(header::To::from(Mailboxes::from(Mailbox::new(None, to))));
        }
        let subject = one_line(&email.subject);
        if !write_plain_header(&mut out, "Subject", &subject) {
            encoded.set(header::Subject::from(subject));
        }
        write!(out, "{encoded}").expect("writing to memory cannot fail");
        // RFC 5322 prefers `+0000` to the `GMT` of HTTP dates.
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        for piece in [b"Date: ", date.strip_suffix("GMT").unwrap_or(&date).as_bytes(), b"+0000\r\n"] {
            out.extend_from_slice(piece);
        }
        for piece in [b"Message-ID: <", message_id.as_bytes(), b">\r\n"] {
            out.extend_from_slice(piece);
        }
        // RFC 3834: keeps vacation responders from answering a mass notice.
        out.extend_from_slice(b"Auto-Submitted: auto-generated\r\n");
        if let Some(url) = unsubscribe {
            for piece in [b"List-Unsubscribe: <", url.as_bytes(), b">\r\n"] {
                out.extend_from_slice(piece);
            }
            out.extend_from_slice(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
        }
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
        // A boundary must not occur inside the parts (RFC 2046 5.1.1). The
        // texts are checked as given: a 7bit part is the text itself, and
        // quoted-printable or base64 never has `=_`.
        let parts = [&email.text, &email.html];
        let mut boundary = Cow::Borrowed(self.boundary.as_str());
        if parts.iter().any(|part| self.boundary_finder.find(part.as_bytes()).is_some()) {
            while parts.iter().any(|part| part.contains(&*boundary)) {
                boundary = Cow::Owned(new_boundary());
            }
        }
        write_body(&mut out, &boundary, &email.text, &email.html);
        Ok(out)
    }
}

/// The multipart/alternative content header and its two parts.
fn write_body(out: &mut Vec<u8>, boundary: &str, text: &str, html: &str) {
    let boundary = boundary.as_bytes();
    for piece in [b"Content-Type: multipart/alternative;\r\n boundary=\"", boundary, b"\"\r\n\r\n"] {
        out.extend_from_slice(piece);
    }
    for (content_type, part) in [(&b"text/plain"[..], text), (b"text/html", html)] {
        for piece in [b"--", boundary, b"\r\nContent-Type: ", content_type, b"; charset=utf-8\r\n"] {
            out.extend_from_slice(piece);
        }
        write_encoded_part(part, out);
        out.extend_from_slice(b"\r\n");
    }
    for piece in [b"--", boundary, b"--\r\n"] {
        out.extend_from_slice(piece);
    }
}

/// Writes `Name: value` when the value needs no encoding or folding:
/// printable ASCII, on a line of at most 78 characters (RFC 5322 2.1.1).
/// Returns false, writing nothing, otherwise.
fn write_plain_header(out: &mut Vec<u8>, name: &str, value: &str) -> bool {
    let fits = name.len() + ": ".len() + value.len() <= 78;
    if !fits || !value.bytes().all(|byte| byte.is_ascii_graphic() || byte == b' ') {
        return false;
    }
    for piece in [name.as_bytes(), b": ", value.as_bytes(), b"\r\n"] {
        out.extend_from_slice(piece);
    }
    true
}

/// `=_lifeboat_` and 24 random letters and digits.
fn new_boundary() -> String {
    format!("=_lifeboat_{}", Alphanumeric.sample_string(&mut rand::rng(), 24))
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

    fn composed(email: &OutgoingEmail) -> Result<Vec<u8>, MailError> {
        Composer::new(&from()).compose(email)
    }

    fn formatted(email: &OutgoingEmail) -> String {
        String::from_utf8(composed(email).unwrap()).unwrap()
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

    /// The boundary named in the header, and the parts between its
    /// delimiters: (part headers, part body).
    fn parts(raw: &str) -> (String, Vec<(String, String)>) {
        let content_type = header(&headers(raw), "Content-Type")[0].to_owned();
        let boundary = content_type.split_once("boundary=\"").unwrap().1.trim_end_matches('"').to_owned();
        let body = raw.split_once("\r\n\r\n").unwrap().1;
        let closing = format!("\r\n--{boundary}--\r\n");
        assert!(body.ends_with(&closing), "the message must end with the closing delimiter");
        let inside = body.strip_suffix(&closing).unwrap();
        let parts = inside
            .split(&format!("--{boundary}\r\n"))
            .skip(1)
            .map(|part| {
                let part = part.strip_suffix("\r\n").unwrap_or(part);
                let (head, body) = part.split_once("\r\n\r\n").unwrap();
                (head.to_owned(), body.to_owned())
            })
            .collect();
        (boundary, parts)
    }

    #[test]
    fn the_parts_are_text_then_html_each_7bit_when_ascii() {
        let raw = formatted(&email());
        let (boundary, parts) = parts(&raw);
        assert!(boundary.starts_with("=_lifeboat_"), "{boundary}");
        assert_eq!(parts.len(), 2, "{raw}");
        assert_eq!(parts[0].0, "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit");
        assert_eq!(parts[0].1, "Hello Alice,\r\n\r\nyour token is abc~123.\r\n");
        assert_eq!(parts[1].0, "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit");
        assert_eq!(parts[1].1, "<p>Hello Alice,</p><p>your token is <code>abc~123</code>.</p>");
    }

    #[test]
    fn a_part_holding_the_boundary_gets_the_message_another_one() {
        let composer = Composer::new(&from());
        let mut email = email();
        email.html = format!("<p>--{}</p>", composer.boundary);
        let raw = String::from_utf8(composer.compose(&email).unwrap()).unwrap();
        let (boundary, parts) = parts(&raw);
        assert_ne!(boundary, composer.boundary);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1].1, email.html);
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
        assert_eq!(header(&lines, "Subject").len(), 1);
    }

    #[test]
    fn non_ascii_subject_and_body_are_encoded() {
        let mut email = email();
        email.subject = "[example.org] Datenbank verloren — wie es weitergeht".to_owned();
        email.text = "Grüße\n".to_owned();
        let raw = composed(&email).unwrap();
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
