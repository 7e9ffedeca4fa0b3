//! Counts in words: "1 account", "2 accounts".

/// `n` and the noun that goes with it.
pub fn count(n: impl Into<i64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
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
