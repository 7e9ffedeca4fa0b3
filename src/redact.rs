//! Secrets kept out of what lifeboat prints: a URL's password.

/// A URL fit for messages and logs (a registry's, an SMTP relay's): any
/// password replaced.
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else { return redact_unparsed(url) };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("REDACTED"));
    }
    let has_secret_query = parsed.query_pairs().any(|(name, _)| name.eq_ignore_ascii_case("password"));
    if has_secret_query {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if name.eq_ignore_ascii_case("password") { "REDACTED".into() } else { value.into_owned() };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// For text that is not even a URL: hide whatever sits between
/// `scheme://user:` and `@`.
fn redact_unparsed(text: &str) -> String {
    let Some(start) = text.find("://").map(|i| i + 3) else { return text.to_owned() };
    let authority_end = text[start..].find('/').map(|i| start + i).unwrap_or(text.len());
    match (text[start..authority_end].rfind('@'), text[start..authority_end].find(':')) {
        (Some(at), Some(colon)) if colon < at => {
            format!("{}REDACTED{}", &text[..start + colon + 1], &text[start + at..])
        }
        _ => text.to_owned(),
    }
}
