//! Secrets kept out of what lifeboat prints: a URL's password.

/// A URL fit for messages and logs (a registry's, an SMTP relay's): any
/// password replaced, in its user part or its query.
pub fn redact_url(url: &str) -> String {
    // Read as typed first: a password with a `/` in it (base64 makes them)
    // ends the host part early for a parser, which then sees none. Text no
    // parser takes hides up to its last `@`, wherever that is.
    let text = hide_user_password(url, false);
    let Ok(mut parsed) = url::Url::parse(&text) else { return hide_user_password(url, true) };
    if parsed.query_pairs().any(|(name, _)| is_secret_parameter(&name)) {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_secret_parameter(&name) { "REDACTED".into() } else { value.into_owned() };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// `password`, libpq's `sslpassword`, a mistyped `passwd`, a `secret` or a
/// `token`: whatever a parameter's name says it holds.
fn is_secret_parameter(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token"].iter().any(|word| name.contains(word))
}

/// Hides whatever sits between `scheme://user:` and the last `@` (the user
/// name holds no `/`; the password may hold one). Not `greedy`, an `@` after
/// a `?` or `#` is a query parameter's (`?user=ops@tenant`), not the
/// password's end; unless no `=` comes before it there (`user:ab?cd@host`),
/// or only digits stand between the `:` and the `?` or `#`: a parser reads
/// those as a port and a query or fragment with no password in sight.
/// Hiding a real query after a port (`host:5432?user=a@b`) is safe.
fn hide_user_password(text: &str, greedy: bool) -> String {
    let Some(start) = text.find("://").map(|i| i + 3) else { return text.to_owned() };
    let rest = &text[start..];
    let Some(colon) = rest.find(':') else { return text.to_owned() };
    let scope = match rest[colon..].find(['?', '#']).map(|query| colon + query) {
        Some(query) if !greedy && !password_runs_past(&rest[colon + 1..query], &rest[query + 1..]) => query,
        _ => rest.len(),
    };
    match rest[..scope].rfind('@') {
        Some(at) if colon < at && !rest[..colon].contains('/') => {
            format!("{}REDACTED{}", &text[..start + colon + 1], &rest[at..])
        }
        _ => text.to_owned(),
    }
}

/// Whether what follows `user:` reads as a password going on past the `?`
/// or `#` that ends `before`: digits only before it (a parser's port), or
/// an `@` in `after` with no `=` ahead of it (no parameter's value).
fn password_runs_past(before: &str, after: &str) -> bool {
    let digits_only = before.bytes().all(|b| b.is_ascii_digit());
    let bare_at = after.find('@').is_some_and(|at| !after[..at].contains('='));
    digits_only || bare_at
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn a_password_is_hidden_whatever_it_holds() {
        let shown = |url| redact_url(url);
        assert_eq!(shown("postgres://lifeboat:s3cret@db/lifeboat"), "postgres://lifeboat:REDACTED@db/lifeboat");
        assert_eq!(shown("postgres://lifeboat:Ab3/xY9@db/lifeboat"), "postgres://lifeboat:REDACTED@db/lifeboat");
        // Digits then a slash parse as a port and a path, with no password.
        assert_eq!(shown("postgres://u:1234/abc@h/db"), "postgres://u:REDACTED@h/db");
        assert_eq!(shown("smtp://mail:p@ss@relay:587"), "smtp://mail:REDACTED@relay:587");
        // A `#` or `?` right after the `:` or after digits reads as a
        // fragment or a query after a port, with no password, to a parser.
        assert_eq!(shown("postgres://lifeboat:#S3cret@db/lifeboat"), "postgres://lifeboat:REDACTED@db/lifeboat");
        assert_eq!(shown("smtp://relay:2024#pw@mail:587"), "smtp://relay:REDACTED@mail:587");
        assert_eq!(shown("postgres://lb:12?hunter2@db/x"), "postgres://lb:REDACTED@db/x");
        // A path then a query, as a parser reads them: no `=` before the `@`.
        assert_eq!(shown("postgres://u:12/ab?cd@h/db"), "postgres://u:REDACTED@h/db");
        assert_eq!(shown("postgres://u:/ab?cd@h/db"), "postgres://u:REDACTED@h/db");
    }

    #[test]
    fn a_query_parameter_named_for_a_secret_is_hidden() {
        assert_eq!(
            redact_url("postgres://db/lifeboat?sslmode=require&sslpassword=k3y&password=pw"),
            "postgres://db/lifeboat?sslmode=require&sslpassword=REDACTED&password=REDACTED"
        );
    }

    #[test]
    fn an_at_sign_in_the_query_is_no_end_of_a_password() {
        assert_eq!(
            redact_url("postgresql://host:5432/db?password=ab@cd&sslmode=require"),
            "postgresql://host:5432/db?password=REDACTED&sslmode=require"
        );
        assert_eq!(redact_url("postgres://db:5432/x?user=u@tenant"), "postgres://db:5432/x?user=u@tenant");
        assert_eq!(redact_url("postgres://[::1]:5432/db?user=a@b"), "postgres://[::1]:5432/db?user=a@b");
        assert_eq!(redact_url("postgres://u:p@[::1]:5432/db"), "postgres://u:REDACTED@[::1]:5432/db");
    }

    #[test]
    fn a_url_without_a_password_is_shown_as_it_is() {
        assert_eq!(redact_url("sqlite:///var/lib/lifeboat/a:b@c.db"), "sqlite:///var/lib/lifeboat/a:b@c.db");
        assert_eq!(redact_url("postgres://db:5432/lifeboat"), "postgres://db:5432/lifeboat");
        assert_eq!(redact_url("smtp://relay:25"), "smtp://relay:25");
    }
}
