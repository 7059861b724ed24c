//! The golden corpus: every fixtures/mime/*.eml parses to what its .json says,
//! and every fixture goes through the whole pipeline on both backends.

use serde::Deserialize;

use crate::both_backends;
use crate::harness::*;
use mailroom::pipeline::parse::parse;
use mailroom::pipeline::{Disposition, Outcome};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expected {
    subject: String,
    from: String,
    from_name: Option<String>,
    message_id: Option<String>,
    text_contains: Vec<String>,
    has_html: bool,
    attachments: Vec<ExpectedAttachment>,
    flags: Vec<String>,
    in_reply_to: Vec<String>,
    references: Vec<String>,
}

#[derive(Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct ExpectedAttachment {
    filename: String,
    content_type: String,
    inline: bool,
}

fn eml_files(folder: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(fixture(folder))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    files
}

#[test]
fn mime_corpus_parses_as_expected() {
    let files = eml_files("mime");
    assert!(
        files.len() >= 40,
        "the corpus has {} messages, expected at least 40",
        files.len()
    );
    let mut failures = Vec::new();
    for path in &files {
        let expected: Expected = serde_json::from_str(
            &std::fs::read_to_string(path.with_extension("json"))
                .unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.with_extension("json").display()));
        let parsed = match parse(&std::fs::read(path).unwrap()) {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{}: does not parse: {e}", path.display()));
                continue;
            }
        };
        let mut problems = Vec::new();
        let mut check = |what: &str, ok: bool, detail: String| {
            if !ok {
                problems.push(format!("{what}: {detail}"));
            }
        };
        check(
            "subject",
            parsed.subject == expected.subject,
            format!("{:?} != {:?}", parsed.subject, expected.subject),
        );
        let from = parsed
            .from
            .as_ref()
            .map(|f| f.address.clone())
            .unwrap_or_default();
        check(
            "from",
            from == expected.from,
            format!("{from:?} != {:?}", expected.from),
        );
        let from_name = parsed.from.as_ref().and_then(|f| f.name.clone());
        check(
            "from_name",
            from_name == expected.from_name,
            format!("{from_name:?} != {:?}", expected.from_name),
        );
        match &expected.message_id {
            Some(id) => check(
                "message_id",
                &parsed.message_id == id && !parsed.synthetic_id,
                format!("{:?}", parsed.message_id),
            ),
            None => check(
                "message_id",
                parsed.synthetic_id,
                format!("expected synthetic, got {:?}", parsed.message_id),
            ),
        }
        for needle in &expected.text_contains {
            check(
                "text",
                parsed.body_text.contains(needle.as_str()),
                format!(
                    "missing {needle:?} in {:?}",
                    parsed.body_text.chars().take(300).collect::<String>()
                ),
            );
        }
        check(
            "has_html",
            parsed.body_html.is_some() == expected.has_html,
            format!("{}", parsed.body_html.is_some()),
        );
        let attachments: Vec<ExpectedAttachment> = parsed
            .attachments
            .iter()
            .map(|a| ExpectedAttachment {
                filename: a.filename.clone(),
                content_type: a.content_type.clone(),
                inline: a.inline,
            })
            .collect();
        check(
            "attachments",
            attachments == expected.attachments,
            format!("{attachments:?} != {:?}", expected.attachments),
        );
        let flags: Vec<String> = parsed.flags.names().iter().map(|s| s.to_string()).collect();
        check(
            "flags",
            flags == expected.flags,
            format!("{flags:?} != {:?}", expected.flags),
        );
        check(
            "in_reply_to",
            parsed.in_reply_to == expected.in_reply_to,
            format!("{:?}", parsed.in_reply_to),
        );
        check(
            "references",
            parsed.references == expected.references,
            format!("{:?}", parsed.references),
        );
        if !problems.is_empty() {
            failures.push(format!(
                "{}:\n    {}",
                path.display(),
                problems.join("\n    ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures differ:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
}

both_backends!(
    every_fixture_goes_through_the_pipeline,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let files = eml_files("mime");
        for path in &files {
            let data = std::fs::read(path).unwrap();
            match app.feed("pipe", &data).await {
                Disposition::Applied(Outcome::Created { .. } | Outcome::Appended { .. }) => {}
                other => panic!("{}: {other:?}", path.display()),
            }
        }
        // And all of it again: nothing new.
        for path in &files {
            let data = std::fs::read(path).unwrap();
            assert!(
                matches!(
                    app.feed("pipe", &data).await,
                    Disposition::Applied(Outcome::Duplicate { .. })
                ),
                "{}",
                path.display()
            );
        }
        let counts = app.store().counts().await.unwrap();
        assert_eq!(counts.messages as usize, files.len());
        assert_eq!(counts.quarantined, 0);
        // Attachments are stored once by content: the export names them.
        let export = app.store().export().await.unwrap();
        assert!(export
            .iter()
            .flat_map(|t| &t.messages)
            .any(|m| !m.attachments.is_empty()));
    }
);
