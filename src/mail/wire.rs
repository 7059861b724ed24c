//! The bytes that may cross an SMTP connection. A bare CR or LF in a
//! message is read as a line end by some servers and not by others; that
//! difference is what SMTP smuggling uses to end the DATA early and inject
//! commands. Every message we hand to a relay has CRLF line ends only, and
//! no line longer than RFC 5322's 998 bytes.

use std::borrow::Cow;

/// RFC 5322 §2.1.1: a line is at most 998 bytes, CRLF not counted.
pub const MAX_LINE: usize = 998;

/// Bytes of `n` bytes in MIME base64: 4 per 3, and a CRLF per 76-character
/// line (the attachment's share of a message's size).
pub fn base64_len(n: usize) -> usize {
    let chars = n.div_ceil(3) * 4;
    chars + chars.div_ceil(76) * 2
}

/// `text` with every line end (CRLF, a bare CR, a bare LF) made CRLF.
pub fn crlf(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let already = bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    });
    if already {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + text.len() / 16);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\r\n");
            }
            '\n' => out.push_str("\r\n"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Why `message` may not be sent as it is: a bare CR or LF, a NUL, or an
/// over-long line, with the offset of the first one.
pub fn check_smtp_safe(message: &[u8]) -> Result<(), String> {
    let mut line_start = 0;
    for (i, &b) in message.iter().enumerate() {
        match b {
            b'\r' if message.get(i + 1) != Some(&b'\n') => {
                return Err(format!("bare CR at byte {i}"));
            }
            b'\n' if i == 0 || message[i - 1] != b'\r' => {
                return Err(format!("bare LF at byte {i}"));
            }
            b'\n' => {
                // The CR before this LF is not part of the line.
                if i - 1 - line_start > MAX_LINE {
                    return Err(format!(
                        "line at byte {line_start} is longer than {MAX_LINE} bytes"
                    ));
                }
                line_start = i + 1;
            }
            0 => return Err(format!("NUL at byte {i}")),
            _ => {}
        }
    }
    if message.len() - line_start > MAX_LINE {
        return Err(format!(
            "line at byte {line_start} is longer than {MAX_LINE} bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_end_becomes_crlf() {
        assert_eq!(crlf("a\r\nb"), "a\r\nb");
        assert!(matches!(crlf("a\r\nb"), Cow::Borrowed(_)));
        assert_eq!(crlf("a\nb\rc\r\n\r\nd\n\r"), "a\r\nb\r\nc\r\n\r\nd\r\n\r\n");
        assert_eq!(crlf("\n.\r\nMAIL"), "\r\n.\r\nMAIL");
    }

    #[test]
    fn bare_line_ends_nul_and_long_lines_are_refused() {
        assert!(check_smtp_safe(b"a: b\r\n\r\nbody\r\n").is_ok());
        assert!(check_smtp_safe(b"").is_ok());
        for bad in [&b"a\nb"[..], b"\n", b"a\rb", b"a\r", b"a\r\r\n", b"a\0\r\n"] {
            assert!(check_smtp_safe(bad).is_err(), "{bad:?}");
        }
        let line = vec![b'x'; MAX_LINE];
        assert!(check_smtp_safe(&[&line[..], b"\r\n"].concat()).is_ok());
        assert!(check_smtp_safe(&line).is_ok());
        let long = vec![b'x'; MAX_LINE + 1];
        assert!(check_smtp_safe(&[&long[..], b"\r\n"].concat()).is_err());
        assert!(check_smtp_safe(&long).is_err());
    }

    #[test]
    fn base64_length_matches_the_encoder() {
        for n in [0, 1, 56, 57, 58, 1000, 100_000] {
            let mut out = Vec::new();
            mail_builder::encoders::base64::base64_encode_mime(&vec![7u8; n], &mut out, false)
                .unwrap();
            assert!(
                out.len() <= base64_len(n),
                "{n}: {} > {}",
                out.len(),
                base64_len(n)
            );
        }
    }

    #[test]
    fn normalised_text_is_always_safe() {
        for text in ["a\nb", "\r\r\n\n", "x\r", "\n\r\n\r"] {
            assert!(check_smtp_safe(crlf(text).as_bytes()).is_ok(), "{text:?}");
        }
    }
}
