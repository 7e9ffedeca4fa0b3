//! Counts and lists in words: "1 account", "2 accounts", "a, b, and 3 more".

/// `n` and the noun that goes with it.
pub fn count(n: impl Into<i64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// At most `limit` IDs, comma-separated, and how many more there are.
pub fn id_list(ids: &[impl std::fmt::Display], limit: usize) -> String {
    let text = ids.iter().take(limit).map(ToString::to_string).collect::<Vec<_>>().join(", ");
    if ids.len() > limit { format!("{text}, and {} more", ids.len() - limit) } else { text }
}

#[cfg(test)]
mod tests {
    #[test]
    fn one_is_singular_and_every_other_count_plural() {
        assert_eq!(super::count(1, "account", "accounts"), "1 account");
        assert_eq!(super::count(0, "account", "accounts"), "0 accounts");
        assert_eq!(super::count(2i64, "person", "people"), "2 people");
    }
}
