//! Content-Transfer-Encoding of the text and HTML parts (RFC 2045): 7bit
//! when the text already is mail-safe (ASCII without control characters,
//! lines of at most 998 octets), else quoted-printable, or base64 when that
//! is shorter (text mostly outside ASCII).
//!
//! 7bit allows lines up to 998 octets (RFC 2045 2.7, RFC 5322 2.1.1), and
//! `=` stands for itself there: the HTML notice, whose every `style`
//! attribute has `=` and whose lines are long, goes out as it is, with no
//! byte escaped and nothing to decode. A reader sees the same text either
//! way; quoted-printable's soft line breaks are invisible after decoding.
//!
//! The encoded text is written straight into the message being assembled,
//! in one pass that copies runs of plain bytes whole.

use base64::Engine;

/// RFC 2045 6.7 (5): encoded lines are at most 76 characters. A soft line
/// break's `=` counts, so the text of a broken line stops at 75.
const LINE_LIMIT: usize = 75;
/// RFC 2045 6.8: base64 lines of at most 76 characters.
const BASE64_LINE: usize = 76;
/// RFC 5322 2.1.1 and RFC 2045 2.7: no line of a message, and so of a 7bit
/// part, may be longer than 998 octets (without its CRLF).
const SEVEN_BIT_LINE: usize = 998;

/// Writes a part's `Content-Transfer-Encoding` header, the empty line that
/// ends the part's header, and `text` (line breaks `\n` or `\r\n`) encoded,
/// with CRLF line breaks.
pub(crate) fn write_encoded_part(text: &str, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(b"Content-Transfer-Encoding: 7bit\r\n\r\n");
    if copy_if_seven_bit(text.as_bytes(), out) {
        return;
    }
    out.truncate(start);
    out.extend_from_slice(b"Content-Transfer-Encoding: quoted-printable\r\n\r\n");
    let body_start = out.len();
    let crlf_len = QuotedPrintable::encode(text.as_bytes(), out);
    if out.len() - body_start > base64_len(crlf_len) {
        out.truncate(start);
        out.extend_from_slice(b"Content-Transfer-Encoding: base64\r\n\r\n");
        base64_lines(text.as_bytes(), out);
    }
}

/// Copies `input` with CRLF line breaks when it is 7bit-safe; false (and
/// `out` partly written) when it is not.
fn copy_if_seven_bit(input: &[u8], out: &mut Vec<u8>) -> bool {
    // The bytes are checked in one pass over the whole text, which the
    // compiler vectorizes; line by line, the checks of short lines cost
    // more than their copies.
    if !all_seven_bit_text_or_line_breaks(input) || has_lone_carriage_return(input) {
        return false;
    }
    out.reserve(input.len() + input.len() / 32 + 2);
    for (line, line_break) in lines(input) {
        if line.len() > SEVEN_BIT_LINE {
            return false;
        }
        out.extend_from_slice(line);
        if line_break {
            out.extend_from_slice(b"\r\n");
        }
    }
    true
}

/// The lines of `input` without their line breaks (`\n` or `\r\n`), each
/// with whether a line break ended it.
fn lines(input: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let mut rest = Some(input);
    std::iter::from_fn(move || {
        let current = rest?;
        Some(match memchr::memchr(b'\n', current) {
            Some(lf) => {
                rest = Some(&current[lf + 1..]);
                let line = &current[..lf];
                (line.strip_suffix(b"\r").unwrap_or(line), true)
            }
            None => {
                rest = None;
                (current, false)
            }
        })
    })
}

/// Printable ASCII, space and tab (what a 7bit line may hold), and CR and
/// LF. No early exit within a chunk, so that the compiler checks many bytes
/// per instruction.
fn all_seven_bit_text_or_line_breaks(text: &[u8]) -> bool {
    text.chunks(64).all(|chunk| chunk.iter().fold(true, |all, &byte| all & is_seven_bit_text_or_line_break(byte)))
}

fn is_seven_bit_text_or_line_break(byte: u8) -> bool {
    matches!(byte, b' '..=b'~' | b'\t' | b'\r' | b'\n')
}

/// A CR that does not start a CRLF: a control character, not a line break.
fn has_lone_carriage_return(text: &[u8]) -> bool {
    memchr::memchr_iter(b'\r', text).any(|at| text.get(at + 1) != Some(&b'\n'))
}

/// Quoted-printable, written into the message being assembled.
struct QuotedPrintable<'a> {
    out: &'a mut Vec<u8>,
}

/// Printable ASCII but `=`, plus space and tab: these stand for themselves,
/// except space and tab at the end of a line. A table, because this is
/// asked of every byte of every message.
static STANDS_FOR_ITSELF: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = matches!(byte as u8, b' ' | b'\t' | b'!'..=b'<' | b'>'..=b'~');
        byte += 1;
    }
    table
};

impl QuotedPrintable<'_> {
    /// Encodes `input` into `out`; returns the length of the input with
    /// every line break as CRLF (what base64 would encode).
    fn encode(input: &[u8], out: &mut Vec<u8>) -> usize {
        out.reserve(input.len() + input.len() / 16 + 16);
        let mut encoder = QuotedPrintable { out };
        let mut crlf_len = 0;
        for (line, line_break) in lines(input) {
            encoder.line(line);
            crlf_len += line.len();
            if line_break {
                encoder.out.extend_from_slice(b"\r\n");
                crlf_len += 2;
            }
        }
        crlf_len
    }

    /// One line of the input, without its line break.
    fn line(&mut self, line: &[u8]) {
        let mut column = 0;
        let mut at = 0;
        while at < line.len() {
            // A run of bytes that stand for themselves, copied whole.
            let mut run_end = plain_run_end(line, at);
            // Space or tab ending the line must be escaped (transports may
            // strip trailing white space).
            if run_end == line.len() && run_end > at && matches!(line[run_end - 1], b' ' | b'\t') {
                run_end -= 1;
            }
            while at < run_end {
                if column == LINE_LIMIT {
                    self.soft_break();
                    column = 0;
                }
                let take = (run_end - at).min(LINE_LIMIT - column);
                self.out.extend_from_slice(&line[at..at + take]);
                column += take;
                at += take;
            }
            if at < line.len() {
                if column + 3 > LINE_LIMIT {
                    self.soft_break();
                    column = 0;
                }
                self.escape(line[at]);
                column += 3;
                at += 1;
            }
        }
    }

    fn soft_break(&mut self) {
        self.out.extend_from_slice(b"=\r\n");
    }

    fn escape(&mut self, byte: u8) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        self.out.extend_from_slice(&[b'=', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0x0f)]]);
    }
}

/// Where the run of bytes that stand for themselves from `at` ends: eight
/// bytes at a time while all are plain, then byte by byte.
fn plain_run_end(line: &[u8], mut at: usize) -> usize {
    while let Some(word) = line.get(at..at + 8) {
        if !all_plain(u64::from_le_bytes(word.try_into().expect("eight bytes"))) {
            break;
        }
        at += 8;
    }
    while at < line.len() && STANDS_FOR_ITSELF[usize::from(line[at])] {
        at += 1;
    }
    at
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Some byte of `word` is below `n` (n <= 0x80); exact for "some", see
/// "Bit Twiddling Hacks", hasless.
fn has_below(word: u64, n: u64) -> bool {
    word.wrapping_sub(ONES * n) & !word & HIGHS != 0
}

/// Some byte of `word` is `byte`: a byte is zero after `^ byte` exactly
/// when it was `byte`.
fn has_byte(word: u64, byte: u8) -> bool {
    has_below(word ^ (ONES * u64::from(byte)), 1)
}

/// Are all eight bytes printable ASCII other than `=`, so that they stand
/// for themselves in quoted-printable? (Tab stands for itself too; it is
/// left to the byte-by-byte loop.)
fn all_plain(word: u64) -> bool {
    word & HIGHS == 0 && !has_below(word, 0x20) && !has_byte(word, 0x7f) && !has_byte(word, b'=')
}

fn base64_len(input_len: usize) -> usize {
    let chars = input_len.div_ceil(3) * 4;
    chars + chars.div_ceil(BASE64_LINE) * 2
}

/// The input with its line breaks as CRLF, base64-encoded in lines of 76.
fn base64_lines(input: &[u8], out: &mut Vec<u8>) {
    let mut crlf = Vec::with_capacity(input.len() + input.len() / 32);
    for (line, line_break) in lines(input) {
        crlf.extend_from_slice(line);
        if line_break {
            crlf.extend_from_slice(b"\r\n");
        }
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(&crlf);
    out.reserve(base64_len(crlf.len()));
    for chunk in encoded.as_bytes().chunks(BASE64_LINE) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eight_bytes_are_plain_exactly_when_each_stands_for_itself() {
        let plain = *b"abcdefgh";
        for byte in 0..=255u8 {
            for position in 0..8 {
                let mut word = plain;
                word[position] = byte;
                let expected = STANDS_FOR_ITSELF[usize::from(byte)] && byte != b'\t';
                assert_eq!(all_plain(u64::from_le_bytes(word)), expected, "byte {byte:#04x} at {position}");
            }
        }
        // Mixed words, where a carry from one byte could hide another.
        for (word, expected) in [(*b"\x00\x01 = \x7f\xff!", false), (*b"\x1f~~~~~~~", false), (*b" !<>~09Z", true)] {
            assert_eq!(all_plain(u64::from_le_bytes(word)), expected, "{word:?}");
        }
    }

    /// The part's transfer encoding and its body, as written.
    fn encoded(text: &str) -> (&'static str, String) {
        let mut out = Vec::new();
        write_encoded_part(text, &mut out);
        let written = String::from_utf8(out).unwrap();
        let (header, body) = written.split_once("\r\n\r\n").unwrap();
        let encoding = match header.strip_prefix("Content-Transfer-Encoding: ").unwrap() {
            "7bit" => "7bit",
            "quoted-printable" => "quoted-printable",
            "base64" => "base64",
            other => panic!("unexpected encoding {other:?}"),
        };
        (encoding, body.to_owned())
    }

    /// What a mail reader gets back out of the body.
    fn decoded(text: &str) -> String {
        let (encoding, body) = encoded(text);
        let bytes = match encoding {
            "7bit" => body.into_bytes(),
            "quoted-printable" => quoted_printable::decode(body, quoted_printable::ParseMode::Strict).unwrap(),
            _ => {
                let joined: Vec<u8> = body.into_bytes().into_iter().filter(|b| !b"\r\n".contains(b)).collect();
                base64::engine::general_purpose::STANDARD.decode(joined).unwrap()
            }
        };
        String::from_utf8(bytes).unwrap()
    }

    fn with_crlf(text: &str) -> String {
        text.replace("\r\n", "\n").replace('\n', "\r\n")
    }

    fn assert_mail_safe(text: &str) {
        let (encoding, body) = encoded(text);
        let longest = if encoding == "7bit" { 998 } else { 76 };
        for line in body.split("\r\n") {
            assert!(line.len() <= longest, "{encoding} line of {} characters: {line:?}", line.len());
            assert!(line.bytes().all(|b| (32..=126).contains(&b) || b == b'\t'), "{line:?}");
            if encoding != "7bit" {
                assert!(!line.ends_with([' ', '\t']), "white space ends {line:?}");
            }
        }
    }

    #[test]
    fn ascii_lines_stay_as_they_are_with_crlf() {
        let text = "Hello Alice,\n\nyour token is abc~123.\r\nBye\n";
        assert_eq!(encoded(text), ("7bit", with_crlf(text)));
    }

    #[test]
    fn html_with_equals_signs_and_long_lines_needs_no_encoding() {
        let text = format!("<div style=\"margin:0\">{}</div>\n", "<p style=\"margin:0; padding:0\">x</p>".repeat(25));
        assert!(text.len() > 900 && text.len() < 998);
        assert_eq!(encoded(&text), ("7bit", with_crlf(&text)));
    }

    #[test]
    fn a_line_of_998_octets_is_7bit_and_one_of_999_is_not() {
        assert_eq!(encoded(&"x".repeat(998)).0, "7bit");
        assert_eq!(encoded(&format!("{}\r\n", "x".repeat(998))).0, "7bit");
        assert_eq!(encoded(&"x".repeat(999)).0, "quoted-printable");
    }

    #[test]
    fn lines_longer_than_998_octets_are_broken_softly_and_come_back_whole() {
        let text = format!("{}\nshort\n{}", "x".repeat(999), "<p style=\"margin:0\">".repeat(60));
        let (encoding, _) = encoded(&text);
        assert_eq!(encoding, "quoted-printable");
        assert_mail_safe(&text);
        assert_eq!(decoded(&text), with_crlf(&text));
    }

    #[test]
    fn equals_signs_non_ascii_and_trailing_white_space_are_escaped() {
        let text = "a=b Grüße — ok \nend\t\ncarriage\rreturn, and enough plain words to keep this quoted-printable";
        let (encoding, body) = encoded(text);
        assert_eq!(encoding, "quoted-printable");
        assert!(body.starts_with("a=3Db Gr=C3=BC=C3=9Fe =E2=80=94 ok=20\r\nend=09\r\ncarriage=0Dreturn"), "{body}");
        assert_mail_safe(text);
        assert_eq!(decoded(text), with_crlf(text));
    }

    #[test]
    fn control_characters_are_not_7bit() {
        for text in [
            "bell\x07",
            "nul\x00",
            "delete\x7f",
            "lone\rreturn",
            "form\x0cfeed",
            "ends in a return\r",
            "two\r\r\nreturns",
        ] {
            let (encoding, _) = encoded(text);
            assert_eq!(encoding, "quoted-printable", "{text:?}");
            assert_eq!(decoded(text), with_crlf(text));
        }
        // A tab is text.
        assert_eq!(encoded("a\tb\n").0, "7bit");
    }

    #[test]
    fn text_mostly_outside_ascii_goes_as_base64() {
        let text = "Потеря базы данных: ваша учётная запись и как вернуться.\n".repeat(5);
        let (encoding, _) = encoded(&text);
        assert_eq!(encoding, "base64");
        assert_mail_safe(&text);
        assert_eq!(decoded(&text), with_crlf(&text));
    }

    #[test]
    fn any_text_comes_back_unchanged_in_mail_safe_lines() {
        // A deterministic spread of lengths, escapes at every column, lines
        // ending in spaces, CRLF and LF mixed.
        let any = ["a", " ", "\t", "=", "é", "—", "\n", "\r\n", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", ".", "日本"];
        // ASCII only, with lines around 998 octets: 7bit or not by length.
        let ascii = ["a", " ", "=", "\n", "\r\n", &"x".repeat(200), "."];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for round in 0..1000 {
            let (pieces, most) = if round % 2 == 0 { (&any[..], 300) } else { (&ascii[..], 60) };
            let mut text = String::new();
            for _ in 0..(state % most) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push_str(pieces[(state % pieces.len() as u64) as usize]);
            }
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            assert_mail_safe(&text);
            assert_eq!(decoded(&text), with_crlf(&text), "{text:?}");
        }
    }
}
