//! Small helpers the benchmarks share. Included by each bench with
//! `#[path]`, like `synapse.rs`.

/// A whole number from the environment, or `default` when it is unset.
pub fn env_number(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) if !text.trim().is_empty() => {
            text.trim().parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number"))
        }
        _ => default,
    }
}

/// A client that never goes through a proxy: every server here is on loopback.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("a plain reqwest client builds")
}

/// The middle value, or the mean of the two middle ones (of two rounds, the
/// mean, not the worse); NaN when there are none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[mid],
        _ => (sorted[mid - 1] + sorted[mid]) / 2.0,
    }
}
