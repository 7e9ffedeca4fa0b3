//! Text others chose (a room's name, a display name, a server's refusal),
//! made fit to show: on one line, with nothing unseen that breaks, hides
//! or reorders it, and cut short where a reply or a line must stay short.

use std::borrow::Cow;

/// Characters that break a line, or hide or reorder text without being
/// seen: control characters (line breaks too), the line and paragraph
/// separators, bidi embeddings, overrides and isolates, the zero-width
/// space, word joiner and invisible operators, the byte order mark, and the
/// interlinear annotation marks. Not the zero-width (non-)joiners nor the
/// left-to-right and right-to-left marks: some scripts, emoji and
/// right-to-left writing need them.
pub fn is_hidden_formatting(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
        )
}

/// `text` with [`is_hidden_formatting`] characters as spaces, ends trimmed.
pub fn one_line(text: &str) -> Cow<'_, str> {
    let trimmed = text.trim();
    // Bytes first (this runs on every value of every notice): each such
    // character is below 0x20 or 0x7f, or UTF-8 writes it with a leading
    // 0xc2 (U+0080 to U+009F), 0xe2 (U+2000 to U+2FFF) or 0xef (U+F000 to
    // U+FFFF).
    let may_hold_one = trimmed.bytes().any(|byte| byte < 0x20 || matches!(byte, 0x7f | 0xc2 | 0xe2 | 0xef));
    if may_hold_one && trimmed.chars().any(is_hidden_formatting) {
        let spaced: String = trimmed.chars().map(|c| if is_hidden_formatting(c) { ' ' } else { c }).collect();
        Cow::Owned(spaced.trim().to_owned())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// `text` cut at `max` characters, an ellipsis saying where.
pub fn cut(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((at, _)) => Cow::Owned(format!("{}…", text[..at].trim_end())),
        None => Cow::Borrowed(text),
    }
}

/// [`one_line`], then [`cut`] at `max` characters.
pub fn short_line(text: &str, max: usize) -> Cow<'_, str> {
    match one_line(text) {
        Cow::Borrowed(line) => cut(line, max),
        Cow::Owned(line) => Cow::Owned(cut(&line, max).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_others_chose_is_shown_on_one_line_with_nothing_unseen_in_it() {
        assert_eq!(one_line(" two\r\nlines\ttab\u{7f}del\u{85}next\u{9f}end "), "two  lines tab del next end");
        assert_eq!(one_line("evil\u{200b}.com \u{202e}gpj.exe\u{2028}x"), "evil .com  gpj.exe x");
        assert!(matches!(one_line(" © 2026 Zoë, ok "), Cow::Borrowed("© 2026 Zoë, ok")));
        // Joiners and direction marks stay: a family emoji, a Persian word.
        assert!(matches!(one_line("👨\u{200d}👩\u{200d}👧 می\u{200c}خواهم\u{200f} 1\u{200e}"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_cut_says_where() {
        assert_eq!(cut("short", 10), "short");
        assert_eq!(cut("a long name indeed", 7), "a long…");
        assert_eq!(cut("Zoë's room", 3), "Zoë…");
        assert_eq!(short_line(" two\nlines of it ", 9), "two lines…");
        assert!(matches!(short_line("Book club", 80), Cow::Borrowed("Book club")));
    }
}
