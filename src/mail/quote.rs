//! The new part of a reply: what its writer typed, without the quoted
//! earlier message and without their signature. The message itself is
//! always stored whole; this is what is relayed for an agent, and shown
//! beside a customer's message (the API, `ticket show`, the export,
//! notifications).
//!
//! The cut is the first of: our own "reply above this line" separator
//! (notifications carry it), an attribution line ("On … wrote:" and its
//! translations, wrapped over two lines by Gmail), Outlook's header block
//! (`From:` / `Sent:` after an underscore rule or not, "Original Message"
//! rules, in several languages), or a trailing block of `>` quotes. Then
//! a signature (`-- `, "Sent from my iPhone" and the like) is cut.
//! fixtures/quotes/ holds the replies this is measured on.

/// Carried by notifications; anything below it in an answer is ours.
pub const SEPARATOR: &str = "##- Please type your reply above this line -##";

/// The text kept on a message (shown, searched, sent on to agents) stops
/// here; the original keeps all of it (`GET /api/v1/messages/{id}/original`).
/// It is more than anyone reads, and one value of 50 MB is copied several
/// times on its way into the database.
pub const MAX_BODY_TEXT_BYTES: usize = 1024 * 1024;

const CUT_NOTE_END: &str = " KiB more of this text is in the original message.]";

/// What ends a text cut at [`MAX_BODY_TEXT_BYTES`], `left_out` bytes short.
pub fn cut_note(left_out: usize) -> String {
    format!("\n\n[{}{CUT_NOTE_END}", left_out.div_ceil(1024))
}

/// Whether a stored text was cut (it is at the limit and ends with the note).
pub fn is_cut(text: &str) -> bool {
    text.len() > MAX_BODY_TEXT_BYTES - 4 && text.ends_with(CUT_NOTE_END)
}

/// The text of `body` its writer added.
pub fn new_part(body: &str) -> String {
    let text = body.replace("\r\n", "\n").replace('\r', "\n");
    let lines: Vec<&str> = text.lines().collect();
    let end = cut_at(&lines);
    let above = &lines[..end];
    // Bottom-posted (Thunderbird's default): nothing above the quote, the
    // new text below it.
    let kept = match above.iter().all(|l| l.trim().is_empty()) {
        true => without_signature(below_quote(&lines[end..])),
        false => without_signature(above),
    };
    let mut out: Vec<&str> = kept.iter().map(|l| l.trim_end()).collect();
    while out.last().is_some_and(|l| l.is_empty()) {
        out.pop();
    }
    let start = out.iter().take_while(|l| l.is_empty()).count();
    out[start..].join("\n")
}

/// The first line that belongs to the quoted part (`lines.len()` if none).
fn cut_at(lines: &[&str]) -> usize {
    for (i, line) in lines.iter().enumerate() {
        let bare = unquoted(line);
        if bare.contains("Please type your reply above this line") {
            return attribution_before(lines, i);
        }
        if is_attribution(bare)
            || lines
                .get(i + 1)
                .is_some_and(|next| is_wrapped_attribution(bare, unquoted(next)))
        {
            return i;
        }
        if is_rule(bare) || is_header_block(lines, i) {
            return i;
        }
    }
    trailing_quote(lines)
}

/// Where the quote that holds our separator at `at` starts: the
/// attribution just above it, if there is one.
fn attribution_before(lines: &[&str], at: usize) -> usize {
    let mut i = at;
    while i > 0 {
        let above = unquoted(lines[i - 1]);
        if is_attribution(above) || is_rule(above) || is_header_block(lines, i - 1) {
            return i - 1;
        }
        if i >= 2 && is_wrapped_attribution(unquoted(lines[i - 2]), above) {
            return i - 2;
        }
        if !above.is_empty() && !lines[i - 1].trim_start().starts_with('>') {
            break;
        }
        i -= 1;
    }
    // No attribution: the quote starts where the `>` lines do.
    let mut start = at;
    while start > 0
        && (lines[start - 1].trim_start().starts_with('>') || lines[start - 1].trim().is_empty())
    {
        start -= 1;
    }
    start
}

/// The line without `>` quoting and surrounding space or bold markers.
fn unquoted(line: &str) -> &str {
    line.trim_start_matches(|c: char| c == '>' || c.is_whitespace())
        .trim_matches(|c: char| c == '*' || c.is_whitespace())
}

/// The verbs of "X wrote:" in the languages mail clients write it in.
const WROTE: &[&str] = &[
    "wrote",
    "schrieb",
    "a écrit",
    "escribió",
    "schreef",
    "skrev",
    "kirjoitti",
    "scrisse",
    "escreveu",
    "napisał",
    "написал",
    "написала",
    "yazdı",
];

fn is_attribution(line: &str) -> bool {
    let lower = line.to_lowercase();
    let lower = lower.trim_end();
    if !lower.ends_with(':') || lower.len() > 400 {
        return false;
    }
    if WROTE.iter().any(|w| lower.contains(w)) {
        return true;
    }
    // Japanese and Chinese clients: a date and the address, then a colon.
    (line.contains('年') && line.contains('月') && line.contains('@'))
        || (line.contains("<")
            && line.contains('@')
            && lower.ends_with(">:")
            && starts_with_date(line))
}

fn starts_with_date(line: &str) -> bool {
    line.chars().next().is_some_and(|c| c.is_ascii_digit())
}

/// Gmail wraps a long attribution: "On Mon, … Jane <" / "jane@x> wrote:".
fn is_wrapped_attribution(first: &str, second: &str) -> bool {
    const OPENERS: &[&str] = &["On ", "Am ", "Le ", "El ", "Op ", "Den ", "Il ", "Em "];
    OPENERS.iter().any(|o| first.starts_with(o))
        && !first.trim_end().ends_with(':')
        && is_attribution(&format!("{first} {second}"))
}

/// Outlook's rules above the quoted message.
fn is_rule(line: &str) -> bool {
    let t = line.trim();
    if t.len() >= 10 && t.chars().all(|c| c == '_') {
        return true;
    }
    let lower = t.to_lowercase();
    t.starts_with("-----")
        && [
            "original message",
            "ursprüngliche nachricht",
            "message d'origine",
            "mensaje original",
            "oorspronkelijk bericht",
            "ursprungligt meddelande",
            "messaggio originale",
        ]
        .iter()
        .any(|m| lower.contains(m))
}

const FROM_LABELS: &[&str] = &["from:", "von:", "de :", "de:", "van:", "från:", "da:"];
const SENT_LABELS: &[&str] = &[
    "sent:",
    "date:",
    "gesendet:",
    "datum:",
    "envoyé :",
    "envoyé:",
    "enviado:",
    "fecha:",
    "verzonden:",
    "skickat:",
    "inviato:",
];
const OTHER_LABELS: &[&str] = &[
    "to:",
    "subject:",
    "an:",
    "betreff:",
    "à :",
    "objet :",
    "para:",
    "asunto:",
    "aan:",
    "onderwerp:",
    "till:",
    "ämne:",
    "cc:",
    "a:",
    "oggetto:",
];

fn starts_with_any(line: &str, labels: &[&str]) -> bool {
    let lower = unquoted(line).replace('*', "").to_lowercase();
    labels.iter().any(|l| lower.starts_with(l))
}

/// Outlook's header block of the quoted message: `From:` with `Sent:` (or
/// `Date:`) and another header within the next few lines.
fn is_header_block(lines: &[&str], i: usize) -> bool {
    if !starts_with_any(lines[i], FROM_LABELS) {
        return false;
    }
    let next: Vec<&str> = lines[i + 1..]
        .iter()
        .take(5)
        .copied()
        .filter(|l| !l.trim().is_empty())
        .collect();
    next.iter().any(|l| starts_with_any(l, SENT_LABELS))
        && next.iter().any(|l| starts_with_any(l, OTHER_LABELS))
}

/// The start of a block of `>` lines (with blank lines) that runs to the end.
fn trailing_quote(lines: &[&str]) -> usize {
    let mut start = lines.len();
    while start > 0 {
        let line = lines[start - 1].trim_start();
        if line.starts_with('>') || line.is_empty() {
            start -= 1;
        } else {
            break;
        }
    }
    let quoted = lines[start..]
        .iter()
        .any(|l| l.trim_start().starts_with('>'));
    match quoted {
        true => start,
        false => lines.len(),
    }
}

/// The lines after the attribution and its `>` block.
fn below_quote<'a, 'b>(lines: &'b [&'a str]) -> &'b [&'a str] {
    let mut i = 1.min(lines.len());
    while i < lines.len() && (lines[i].trim_start().starts_with('>') || lines[i].trim().is_empty())
    {
        i += 1;
    }
    &lines[i..]
}

/// Mobile and webmail footers that stand for a signature.
const DEVICE_FOOTERS: &[&str] = &[
    "sent from my ",
    "sent from mail for windows",
    "sent from outlook",
    "get outlook for ",
    "sent from yahoo mail",
    "sent with protonmail",
    "sent with proton mail",
    "von meinem ",
    "gesendet von meinem",
    "envoyé de mon ",
    "enviado desde mi ",
    "verzonden vanaf mijn ",
    "skickat från min ",
    "inviato da ",
];

fn without_signature<'a>(lines: &[&'a str]) -> Vec<&'a str> {
    if let Some(at) = lines.iter().position(|l| *l == "-- " || *l == "--") {
        return lines[..at].to_vec();
    }
    // A device footer counts only as the last words of the text.
    let last = lines.iter().rposition(|l| !l.trim().is_empty());
    if let Some(last) = last {
        let lower = lines[last].trim().to_lowercase();
        if DEVICE_FOOTERS.iter().any(|f| lower.starts_with(f)) && lower.len() < 60 {
            return lines[..last].to_vec();
        }
    }
    lines.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_separator_the_attribution_and_the_signature_are_cut() {
        let body = format!(
            "Refunded, see the attached receipt.\n\n-- \nAlice\n\nOn Mon, 3 Feb 2025 at 10:12, Support <support@example.com> wrote:\n> {SEPARATOR}\n> old text\n"
        );
        assert_eq!(new_part(&body), "Refunded, see the attached receipt.");
    }

    #[test]
    fn a_reply_without_a_quote_is_kept_whole() {
        assert_eq!(
            new_part("Hello,\n\n> 5 items\nare missing.\n\nThanks,\nBob\n"),
            "Hello,\n\n> 5 items\nare missing.\n\nThanks,\nBob"
        );
    }

    /// The fixture set (fixtures/quotes): the share of replies whose new
    /// part comes out exactly as a careful reader would cut it.
    #[test]
    fn at_least_95_percent_of_the_fixture_replies_are_cut_right() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/quotes");
        let mut total = 0;
        let mut wrong = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .expect("fixtures/quotes exists")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        entries.sort();
        for path in entries {
            let text = std::fs::read_to_string(&path).unwrap();
            let rest = text
                .strip_prefix("--- body\n")
                .unwrap_or_else(|| panic!("{}: starts with '--- body'", path.display()));
            let (body, expected) = rest
                .split_once("\n--- expected\n")
                .unwrap_or_else(|| panic!("{}: has '--- expected'", path.display()));
            let expected: Vec<&str> = expected.trim().lines().map(str::trim_end).collect();
            total += 1;
            if new_part(body) != expected.join("\n") {
                wrong.push(path.file_name().unwrap().to_string_lossy().to_string());
            }
        }
        assert!(total >= 40, "only {total} fixtures");
        let share = (total - wrong.len()) as f64 / total as f64;
        println!(
            "quote stripping: {} of {total} right ({:.1}%); wrong: {wrong:?}",
            total - wrong.len(),
            share * 100.0
        );
        assert!(
            share >= 0.95,
            "{:.1}% right; wrong: {wrong:?}",
            share * 100.0
        );
    }
}
