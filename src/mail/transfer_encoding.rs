//! Content-Transfer-Encoding of the text and HTML parts (RFC 2045): 7bit
//! when the text already is mail-safe, else quoted-printable, or base64 when
//! that is shorter (text mostly outside ASCII).
//!
//! Why not lettre's own `Body::new`: it inserts each missing CR with a
//! separate `String::insert` (quadratic in the number of lines), then runs
//! an encoding chooser and a byte-at-a-time encoder. For a 7.8 kB notice
//! that was most of the ~30 µs lettre spent per message in the
//! `notify_email` bench. This is one pass that copies runs of plain bytes
//! whole; lettre still assembles the message around the encoded bodies.

use base64::Engine;
use lettre::message::Body;
use lettre::message::header::ContentTransferEncoding;

/// RFC 2045 6.7 (5): encoded lines are at most 76 characters. A soft line
/// break's `=` counts, so the text of a broken line stops at 75.
const LINE_LIMIT: usize = 75;
/// RFC 2045 6.8: base64 lines of at most 76 characters.
const BASE64_LINE: usize = 76;

/// Encodes `text` (line breaks `\n` or `\r\n`) for a MIME part.
pub(crate) fn encode_text(text: &str) -> Body {
    let quoted = QuotedPrintable::encode(text.as_bytes());
    if quoted.plain {
        // Nothing needed escaping or breaking: the text is its own encoding.
        return Body::dangerous_pre_encoded(quoted.out, ContentTransferEncoding::SevenBit);
    }
    if quoted.out.len() > base64_len(quoted.crlf_len) {
        return Body::dangerous_pre_encoded(base64_lines(text.as_bytes()), ContentTransferEncoding::Base64);
    }
    Body::dangerous_pre_encoded(quoted.out, ContentTransferEncoding::QuotedPrintable)
}

struct QuotedPrintable {
    out: Vec<u8>,
    /// No byte was escaped and no line was broken.
    plain: bool,
    /// The length of the input with every line break as CRLF (what base64
    /// would encode).
    crlf_len: usize,
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

impl QuotedPrintable {
    fn encode(input: &[u8]) -> QuotedPrintable {
        let mut encoded =
            QuotedPrintable { out: Vec::with_capacity(input.len() + input.len() / 16 + 16), plain: true, crlf_len: 0 };
        let mut rest = input;
        loop {
            let (line, next) = match memchr::memchr(b'\n', rest) {
                Some(lf) => {
                    let line = &rest[..lf];
                    (line.strip_suffix(b"\r").unwrap_or(line), Some(&rest[lf + 1..]))
                }
                None => (rest, None),
            };
            encoded.line(line);
            encoded.crlf_len += line.len();
            match next {
                Some(after) => {
                    encoded.out.extend_from_slice(b"\r\n");
                    encoded.crlf_len += 2;
                    rest = after;
                }
                None => return encoded,
            }
        }
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
        self.plain = false;
    }

    fn escape(&mut self, byte: u8) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        self.out.extend_from_slice(&[b'=', HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0x0f)]]);
        self.plain = false;
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

/// Are all eight bytes printable ASCII other than `=`? (Tab stands for
/// itself too; it is left to the byte-by-byte loop.) Bit tricks on the
/// whole word: a byte is zero after `^ c` exactly when it was `c`.
fn all_plain(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Some byte is below `n` (n <= 0x80); exact for "some", see
    // "Bit Twiddling Hacks", hasless.
    let has_below = |v: u64, n: u64| v.wrapping_sub(ONES * n) & !v & HIGHS != 0;
    word & HIGHS == 0
        && !has_below(word, 0x20)
        && !has_below(word ^ (ONES * 0x7f), 1)
        && !has_below(word ^ (ONES * u64::from(b'=')), 1)
}

fn base64_len(input_len: usize) -> usize {
    let chars = input_len.div_ceil(3) * 4;
    chars + chars.div_ceil(BASE64_LINE) * 2
}

/// The input with its line breaks as CRLF, base64-encoded in lines of 76.
fn base64_lines(input: &[u8]) -> Vec<u8> {
    let mut crlf = Vec::with_capacity(input.len() + input.len() / 32);
    for (index, line) in input.split(|&byte| byte == b'\n').enumerate() {
        if index > 0 {
            crlf.extend_from_slice(b"\r\n");
        }
        crlf.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(&crlf);
    let mut out = Vec::with_capacity(base64_len(crlf.len()));
    for chunk in encoded.as_bytes().chunks(BASE64_LINE) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
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

    fn encoded(text: &str) -> (ContentTransferEncoding, String) {
        let body = encode_text(text);
        (body.encoding(), String::from_utf8(body.into_vec()).unwrap())
    }

    /// What a mail reader gets back out of the body.
    fn decoded(text: &str) -> String {
        let body = encode_text(text);
        let bytes = match body.encoding() {
            ContentTransferEncoding::SevenBit => body.into_vec(),
            ContentTransferEncoding::QuotedPrintable => {
                quoted_printable::decode(body.into_vec(), quoted_printable::ParseMode::Strict).unwrap()
            }
            ContentTransferEncoding::Base64 => {
                let joined: Vec<u8> = body.into_vec().into_iter().filter(|b| !b"\r\n".contains(b)).collect();
                base64::engine::general_purpose::STANDARD.decode(joined).unwrap()
            }
            other => panic!("unexpected encoding {other:?}"),
        };
        String::from_utf8(bytes).unwrap()
    }

    fn with_crlf(text: &str) -> String {
        text.replace("\r\n", "\n").replace('\n', "\r\n")
    }

    fn assert_mail_safe(text: &str) {
        let (_, body) = encoded(text);
        for line in body.split("\r\n") {
            assert!(line.len() <= 76, "line of {} characters: {line:?}", line.len());
            assert!(line.bytes().all(|b| (32..=126).contains(&b) || b == b'\t'), "{line:?}");
            assert!(!line.ends_with([' ', '\t']), "white space ends {line:?}");
        }
    }

    #[test]
    fn short_ascii_lines_stay_as_they_are_with_crlf() {
        let text = "Hello Alice,\n\nyour token is abc~123.\r\nBye\n";
        assert_eq!(encoded(text), (ContentTransferEncoding::SevenBit, with_crlf(text)));
    }

    #[test]
    fn long_lines_are_broken_softly_and_come_back_whole() {
        let text = format!("{}\nshort\n{}", "x".repeat(200), "<p style=\"margin:0\">".repeat(9));
        let (encoding, _) = encoded(&text);
        assert_eq!(encoding, ContentTransferEncoding::QuotedPrintable);
        assert_mail_safe(&text);
        assert_eq!(decoded(&text), with_crlf(&text));
    }

    #[test]
    fn equals_signs_non_ascii_and_trailing_white_space_are_escaped() {
        let text = "a=b Grüße — ok \nend\t\ncarriage\rreturn, and enough plain words to keep this quoted-printable";
        let (encoding, body) = encoded(text);
        assert_eq!(encoding, ContentTransferEncoding::QuotedPrintable);
        assert!(body.starts_with("a=3Db Gr=C3=BC=C3=9Fe =E2=80=94 ok=20\r\nend=09\r\ncarriage=0Dreturn"), "{body}");
        assert_mail_safe(text);
        assert_eq!(decoded(text), with_crlf(text));
    }

    #[test]
    fn text_mostly_outside_ascii_goes_as_base64() {
        let text = "Потеря базы данных: ваша учётная запись и как вернуться.\n".repeat(5);
        let (encoding, _) = encoded(&text);
        assert_eq!(encoding, ContentTransferEncoding::Base64);
        assert_mail_safe(&text);
        assert_eq!(decoded(&text), with_crlf(&text));
    }

    #[test]
    fn any_text_comes_back_unchanged_in_mail_safe_lines() {
        // A deterministic spread of lengths, escapes at every column, lines
        // ending in spaces, CRLF and LF mixed.
        let pieces = ["a", " ", "\t", "=", "é", "—", "\n", "\r\n", "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", ".", "日本"];
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..500 {
            let mut text = String::new();
            for _ in 0..(state % 300) {
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
