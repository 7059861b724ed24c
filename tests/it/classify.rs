//! Automatic mail is recognised and customers' mail is not: every fixture
//! of `fixtures/classify` (written from the specs and the formats MTAs and
//! providers document; see its README) through the parser's classifier.
//! Prints the rates; fails under the targets (≥ 99% of the automatic set
//! flagged, no ordinary message flagged).

use std::path::Path;

pub fn messages(folder: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/classify")
        .join(folder);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn automatic_mail_is_flagged_and_customers_mail_is_not() {
    let automatic = messages("automatic");
    let ordinary = messages("ordinary");
    assert!(
        automatic.len() >= 150 && ordinary.len() >= 50,
        "{} / {}",
        automatic.len(),
        ordinary.len()
    );
    let missed: Vec<&str> = automatic
        .iter()
        .filter(|(_, raw)| {
            let parsed = mailroom::pipeline::parse::parse(raw).unwrap();
            !parsed.flags.is_automatic()
        })
        .map(|(name, _)| name.as_str())
        .collect();
    let wrongly: Vec<(&str, Vec<&str>)> = ordinary
        .iter()
        .filter_map(|(name, raw)| {
            let parsed = mailroom::pipeline::parse::parse(raw).unwrap();
            parsed
                .flags
                .is_automatic()
                .then(|| (name.as_str(), parsed.flags.names()))
        })
        .collect();
    let rate = 100.0 * (automatic.len() - missed.len()) as f64 / automatic.len() as f64;
    println!(
        "automatic flagged: {}/{} ({rate:.1}%); ordinary flagged: {}/{}",
        automatic.len() - missed.len(),
        automatic.len(),
        wrongly.len(),
        ordinary.len()
    );
    assert!(rate >= 99.0, "missed: {missed:?}");
    assert!(wrongly.is_empty(), "flagged: {wrongly:?}");
}
