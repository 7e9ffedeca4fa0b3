//! `email.smtp_url` in the URL form lettre made common: `smtp://` plain,
//! `smtp://…?tls=required` STARTTLS, `?tls=opportunistic`, `smtps://`
//! implicit TLS, optional `user:password@`, and an optional path naming the
//! EHLO host (`smtp://host/client.example.org`).

use url::Url;

const HINT: &str = "write it like smtp://host:25, smtp://user@host:587?tls=required or smtps://user@host:465";

/// How the connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `smtp://`: no TLS at all.
    Plain,
    /// `smtp://…?tls=required`: STARTTLS, refusing to go on without it.
    StartTls,
    /// `smtp://…?tls=opportunistic`: STARTTLS when the server offers it.
    Opportunistic,
    /// `smtps://`: TLS from the first byte.
    Implicit,
}

/// A checked `email.smtp_url`.
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    pub host: String,
    /// The port given, or the default for the TLS mode (25, 587, 465).
    pub port: u16,
    /// The name to send in EHLO, from the URL's path.
    pub hello_name: Option<String>,
    /// For messages and logs: scheme, user, host, effective port, TLS mode;
    /// never the password.
    pub redacted: String,
    pub mode: TlsMode,
    /// Percent-decoded user name from the URL, if any.
    pub username: Option<String>,
    /// Percent-decoded password from the URL, if any.
    pub password: Option<String>,
}

/// Shown as [`SmtpUrl::redacted`] says it: never the password.
impl std::fmt::Debug for SmtpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpUrl").field("redacted", &self.redacted).finish_non_exhaustive()
    }
}

/// The error is one sentence that never repeats the password.
pub fn parse(smtp_url: &str) -> Result<SmtpUrl, String> {
    // The url crate's parse errors never repeat the input: no password leaks through them.
    let url =
        Url::parse(smtp_url.trim()).map_err(|err| format!("email.smtp_url is not a valid URL ({err}); {HINT}"))?;

    // A password's `#` or `?` ends the address part for a parser, which then
    // reads the password as a fragment or a query: never quote those.
    if url.fragment().is_some() {
        return Err("email.smtp_url has a `#` in it, which ends a URL's address: write a `#` in the \
                    password as %23, or use email.smtp_password instead"
            .to_owned());
    }
    if url.query().is_some_and(|query| query.contains('@')) {
        return Err("email.smtp_url has an `@` after its `?`: write a `?` in the password as %3F, \
                    or use email.smtp_password instead"
            .to_owned());
    }
    // `user:25/pw@host` reads as host `user`, port 25 and an EHLO name
    // `pw@host`, which would go to that host in the greeting.
    if url.path().contains('@') {
        return Err("email.smtp_url has an `@` after a `/`: write a `/` in the password as %2F, \
                    or use email.smtp_password instead"
            .to_owned());
    }

    let mut tls: Option<String> = None;
    for (key, value) in url.query_pairs() {
        if key == "tls" {
            tls = Some(value.into_owned());
        } else {
            return Err(format!(
                "email.smtp_url has an unknown parameter `{key}`: the only one is ?tls=required \
                 (STARTTLS) or ?tls=opportunistic"
            ));
        }
    }

    let mode = match (url.scheme(), tls.as_deref()) {
        ("smtp", None) => TlsMode::Plain,
        ("smtp", Some("required")) => TlsMode::StartTls,
        ("smtp", Some("opportunistic")) => TlsMode::Opportunistic,
        ("smtps", None | Some("required")) => TlsMode::Implicit,
        ("smtp" | "smtps", Some(other)) => {
            return Err(format!(
                "email.smtp_url has ?tls={other}, which lifeboat does not know: use ?tls=required \
                 for STARTTLS on smtp://, or smtps:// for TLS from the start"
            ));
        }
        (scheme, _) => {
            return Err(format!(
                "email.smtp_url starts with `{scheme}://`, but only smtp:// and smtps:// are \
                 supported; {HINT}"
            ));
        }
    };

    let host = match url.host_str() {
        Some(host) if !host.is_empty() => host.to_owned(),
        _ => return Err(format!("email.smtp_url has no host name; {HINT}")),
    };

    let username = match url.username() {
        "" => None,
        user => Some(percent_decode(user).ok_or_else(|| {
            "the user name in email.smtp_url is not valid percent-encoded UTF-8; \
             encode special characters as %XX"
                .to_owned()
        })?),
    };
    let password = match url.password() {
        None | Some("") => None,
        Some(password) => Some(percent_decode(password).ok_or_else(|| {
            "the password in email.smtp_url is not valid percent-encoded UTF-8; encode \
             special characters as %XX or use email.smtp_password instead"
                .to_owned()
        })?),
    };

    // The usual ports: SMTP, submission (STARTTLS), submissions (TLS).
    let port = url.port().unwrap_or(match mode {
        TlsMode::Plain => 25,
        TlsMode::StartTls | TlsMode::Opportunistic => 587,
        TlsMode::Implicit => 465,
    });

    let hello_name = Some(url.path().trim_matches('/')).filter(|path| !path.is_empty()).map(str::to_owned);

    let user_part =
        username.as_ref().map(|user| format!("{}@", user.replace(char::is_control, "?"))).unwrap_or_default();
    let tls_part = match mode {
        TlsMode::StartTls => "?tls=required",
        TlsMode::Opportunistic => "?tls=opportunistic",
        TlsMode::Plain | TlsMode::Implicit => "",
    };
    let redacted = format!("{}://{user_part}{host}:{port}{tls_part}", url.scheme());

    Ok(SmtpUrl {
        host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
        port,
        hello_name,
        redacted,
        mode,
        username,
        password,
    })
}

/// Why the login settings do not fit together, if they do not: a user
/// without a password, a password without a user, or a login over
/// opportunistic TLS (lettre would send it in the clear to a server that
/// offers no STARTTLS). `password_setting`: email.smtp_password is set.
/// One rule for the config check and the mailer.
pub fn login_problem(url: &SmtpUrl, password_setting: bool) -> Option<String> {
    let has_password = password_setting || url.password.is_some();
    match (&url.username, has_password) {
        (Some(user), false) => Some(format!(
            "email.smtp_url names the user `{user}` but no password; set \
             email.smtp_password (or email.smtp_password_file), or drop the user to \
             send without logging in"
        )),
        (None, true) => {
            let source = if password_setting { "email.smtp_password is set" } else { "email.smtp_url has a password" };
            Some(format!(
                "{source} but email.smtp_url has no user name; write it like smtp://USER@{}",
                url.redacted.split("://").nth(1).unwrap_or("host:port")
            ))
        }
        (Some(_), true) if url.mode == TlsMode::Opportunistic => Some(
            "email.smtp_url has ?tls=opportunistic and a login: lifeboat does not risk sending the password \
             unencrypted to a server that offers no STARTTLS; use ?tls=required (or smtps://)"
                .to_owned(),
        ),
        _ => None,
    }
}

/// Decodes `%XX` escapes; `None` for a broken escape or invalid UTF-8.
fn percent_decode(input: &str) -> Option<String> {
    let mut bytes = input.bytes();
    let mut out = Vec::with_capacity(input.len());
    while let Some(byte) = bytes.next() {
        out.push(if byte == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
        } else {
            byte
        });
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_error(url: &str) -> String {
        match parse(url) {
            Err(message) => message,
            other => panic!("expected a config error for {url}, got {other:?}"),
        }
    }

    #[test]
    fn each_tls_mode_with_its_default_port() {
        for (url, mode, redacted) in [
            ("smtp://127.0.0.1", TlsMode::Plain, "smtp://127.0.0.1:25"),
            ("smtp://mail.example.org?tls=required", TlsMode::StartTls, "smtp://mail.example.org:587?tls=required"),
            (
                "smtp://mail.example.org:2525?tls=opportunistic",
                TlsMode::Opportunistic,
                "smtp://mail.example.org:2525?tls=opportunistic",
            ),
            ("smtps://mail.example.org", TlsMode::Implicit, "smtps://mail.example.org:465"),
        ] {
            let parsed = parse(url).unwrap();
            assert_eq!((parsed.mode, parsed.redacted.as_str()), (mode, redacted), "{url}");
        }
        let plain = parse("smtp://127.0.0.1").unwrap();
        assert_eq!((plain.port, plain.username, plain.password), (25, None, None));
    }

    #[test]
    fn credentials_are_decoded_and_kept_out_of_the_urls() {
        let parsed = parse("smtps://lifeboat%40example.org:p%40ss%3Aw0rd@mail.example.org:4650").unwrap();
        assert_eq!(parsed.username.as_deref(), Some("lifeboat@example.org"));
        assert_eq!(parsed.password.as_deref(), Some("p@ss:w0rd"));
        assert_eq!(parsed.host, "mail.example.org");
        assert_eq!(parsed.port, 4650);
        assert_eq!(parsed.redacted, "smtps://lifeboat@example.org@mail.example.org:4650");
        assert!(!parsed.redacted.contains("w0rd"));
    }

    #[test]
    fn the_hello_name_path_is_passed_on() {
        let parsed = parse("smtp://127.0.0.1:2525/client.example.org").unwrap();
        assert_eq!(parsed.hello_name.as_deref(), Some("client.example.org"));
        assert_eq!((parsed.host.as_str(), parsed.port), ("127.0.0.1", 2525));
        assert_eq!(parse("smtp://127.0.0.1/").unwrap().hello_name, None);
        assert_eq!(parse("smtp://[::1]:25").unwrap().host, "::1");
    }

    #[test]
    fn bad_urls_are_config_errors_with_a_hint() {
        assert!(config_error("not a url").contains("smtp://"));
        assert!(config_error("http://mail.example.org").contains("`http://`"));
        assert!(config_error("smtp://mail.example.org?tls=yes").contains("?tls=required"));
        assert!(config_error("smtp://mail.example.org?ssl=true").contains("`ssl`"));
        assert!(config_error("smtps://mail.example.org?tls=opportunistic").contains("smtps://"));
        assert!(config_error("smtp:///nohost").contains("no host"));
    }

    #[test]
    fn errors_never_repeat_the_password() {
        for url in [
            "smtp://user:hunter2@mail.example.org?tls=nope",
            "smtp://user:hunter2@mail.example.org?x=1",
            "ftp://user:hunter2@mail.example.org",
            "smtp://user:hunter2@[bad",
            "smtp://user:hunter2%FF@mail.example.org",
            // A `#` or `?` in the password, as typed: the rest reads as a
            // fragment or a query after a port.
            "smtp://user:#hunter2@mail.example.org",
            "smtp://user:25?hunter2@mail.example.org",
            "smtp://user:25?tls=hunter2@mail.example.org",
            "smtp://user:2024/hunter2@mail.example.org",
        ] {
            let message = config_error(url);
            assert!(!message.contains("hunter2"), "{message}");
        }
    }
}
