//! Shared output helpers: JSON, timestamps, progress bars.

use std::io::{BufRead, IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::{Failure, exit};

pub fn print_json(value: &impl Serialize) -> Result<(), Failure> {
    let text =
        serde_json::to_string_pretty(value).map_err(|err| Failure::failed(format!("cannot write JSON: {err}")))?;
    println!("{text}");
    Ok(())
}

/// A command's failure, printed as `{"error": "…"}` on stdout too when it
/// prints JSON (`json`): scripts get one object whatever happens, a stop
/// by Ctrl-C too (not a usage error, which comes before any work).
pub fn json_on_failure<T>(result: Result<T, Failure>, json: bool) -> Result<T, Failure> {
    if let Err(failure) = &result
        && json
        && failure.code != exit::USAGE
    {
        print_json(&serde_json::json!({"error": failure.message}))?;
    }
    result
}

/// `2026-11-25T19:30:00Z`, or `-` for none.
pub fn time(ms: Option<i64>) -> String {
    ms.and_then(crate::registry::format_time).unwrap_or_else(|| "-".to_owned())
}

/// Moves `bar` to `done` of `total`.
pub fn show_progress(bar: &ProgressBar, done: u64, total: u64) {
    bar.set_length(total);
    bar.set_position(done);
}

/// Moves `bar` to `seen` accounts of a listing, of `total` when Synapse says.
pub fn show_listing(bar: &ProgressBar, seen: u64, total: Option<u64>) {
    if let Some(total) = total {
        bar.set_length(total.max(seen));
    }
    bar.set_position(seen);
}

/// A count of things done on stderr (for work whose total is not known
/// ahead), drawn only when stderr is a terminal.
pub fn progress_count(message: &'static str) -> ProgressBar {
    on_terminal(message, "{msg:>10} {pos} ({per_sec})")
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
pub fn progress_bar(message: &'static str) -> ProgressBar {
    on_terminal(message, "{msg:>10} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)")
}

fn on_terminal(message: &'static str, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(template).expect("the progress templates are valid");
    bar.set_style(style.progress_chars("=> "));
    bar.set_message(message);
    bar
}

/// The line `check` and `sync` print about held IDs unlocked outside lifeboat.
pub fn unlocked_held_line(ids: &[String]) -> Option<String> {
    (!ids.is_empty()).then(|| {
        format!(
            "  held but unlocked outside lifeboat: {} (whoever can sign in to one has its person's ID: {})",
            id_list(ids, 20),
            crate::holds::UNLOCKED_HELD_REMEDY
        )
    })
}

/// Up to `limit` IDs joined, with a count of the rest.
pub fn id_list(ids: &[impl std::fmt::Display], limit: usize) -> String {
    let text = crate::plural::id_list(ids, limit);
    if ids.len() > limit { format!("{text} (--json lists all)") } else { text }
}

/// Asks `question` on the terminal and returns the answer line; refuses to
/// guess when stdin is not a terminal (`without_terminal` says what to pass
/// instead). Read off the runtime's workers, which go on meanwhile.
pub async fn ask(question: &str, without_terminal: &str) -> Result<String, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(exit::USAGE, without_terminal));
    }
    print!("{question} ");
    std::io::stdout().flush().ok();
    let answer = tokio::task::spawn_blocking(|| {
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer).ok();
        answer
    })
    .await
    .unwrap_or_default();
    Ok(answer.trim().to_owned())
}

/// `ask` for a `[y/N]` question: only y or yes says yes.
pub async fn ask_yes(question: &str, without_terminal: &str) -> Result<bool, Failure> {
    Ok(matches!(ask(question, without_terminal).await?.as_str(), "y" | "Y" | "yes"))
}
