//! Poison messages are isolated and kept, never lost and never blocking.

use std::sync::Arc;

use crate::both_backends;
use crate::harness::*;
use mailroom::pipeline::parse::{parse, ParseError, ParsedMessage};
use mailroom::pipeline::{Disposition, OnBadInput, Outcome, RawMessage};

/// Fault injection: panics or runs away on marked messages, parses the rest.
fn hostile_parser(raw: &[u8]) -> Result<ParsedMessage, ParseError> {
    let text = String::from_utf8_lossy(raw);
    if text.contains("PANIC-ME") {
        panic!("injected parser panic");
    }
    if text.contains("LOOP-ME") {
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
    parse(raw)
}

fn raw(data: Vec<u8>) -> RawMessage {
    RawMessage {
        channel: "pipe".into(),
        source: Some("test".into()),
        data: Arc::new(data),
    }
}

both_backends!(
    parser_panic_and_runaway_are_quarantined_and_do_not_block,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let pipeline = app.pipeline.clone().with_parser(hostile_parser);
        let batch = vec![
            raw(mail("a@c.test", "q1@c.test", "fine", "", "ok")),
            raw(mail("b@c.test", "q2@c.test", "boom", "", "PANIC-ME")),
            raw(mail("c@c.test", "q3@c.test", "slow", "", "LOOP-ME")),
            raw(mail("d@c.test", "q4@c.test", "fine too", "", "ok")),
        ];
        let d = pipeline
            .process(batch, OnBadInput::Quarantine)
            .await
            .unwrap();
        assert!(matches!(
            d[0],
            Disposition::Applied(Outcome::Created { .. })
        ));
        assert!(
            matches!(&d[1], Disposition::Quarantined { reason, .. } if reason.contains("injected parser panic")),
            "{:?}",
            d[1]
        );
        assert!(
            matches!(&d[2], Disposition::Quarantined { reason, .. } if reason.contains("longer than ingest.parse_timeout_ms (500 ms)")),
            "{:?}",
            d[2]
        );
        assert!(matches!(
            d[3],
            Disposition::Applied(Outcome::Created { .. })
        ));

        let entries = app.store().quarantine_list().await.unwrap();
        assert_eq!(entries.len(), 2);
        // Kept whole: the stored bytes are the original message.
        let (_, stored) = app
            .store()
            .quarantine_get(entries[0].id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored,
            mail("b@c.test", "q2@c.test", "boom", "", "PANIC-ME")
        );

        // Once the cause is fixed (the normal parser), a retry applies it.
        let retried = app
            .pipeline
            .process(vec![raw(stored)], OnBadInput::Quarantine)
            .await
            .unwrap();
        assert!(matches!(
            retried[0],
            Disposition::Applied(Outcome::Created { .. })
        ));
        assert!(app.store().quarantine_drop(entries[0].id).await.unwrap());
        assert_eq!(app.store().quarantine_list().await.unwrap().len(), 1);
    }
);

both_backends!(
    a_large_message_is_stored_in_parts_and_read_back_whole,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let pipeline = app.pipeline.clone().with_parser(hostile_parser);
        // 3.5 MiB: over blob_parts' 1 MiB, so stored as four parts.
        let filler: String = (0..48_000).map(|i| format!("{i:075}\n")).collect();
        let big = mail(
            "big@c.test",
            "big@c.test",
            "big",
            "",
            &format!("PANIC-ME\n{filler}"),
        );
        assert!(big.len() > 3 * 1024 * 1024);
        let d = pipeline
            .process(vec![raw(big.clone())], OnBadInput::Quarantine)
            .await
            .unwrap();
        assert!(
            matches!(d[0], Disposition::Quarantined { .. }),
            "{:?}",
            d[0]
        );
        let pool = app.store().pool().clone();
        let count = |sql: &'static str| {
            let pool = pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>(sql)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        let parts = "SELECT COUNT(*) FROM blob_parts";
        assert_eq!(count(parts).await, 4);
        let entries = app.store().quarantine_list().await.unwrap();
        let (_, stored) = app
            .store()
            .quarantine_get(entries[0].id)
            .await
            .unwrap()
            .unwrap();
        assert!(
            stored == big,
            "the parts read back differ from the original"
        );

        // The same content applied as a message shares the stored blob.
        let d = app
            .pipeline
            .process(vec![raw(stored)], OnBadInput::Quarantine)
            .await
            .unwrap();
        assert!(matches!(
            d[0],
            Disposition::Applied(Outcome::Created { .. })
        ));
        assert!(app.store().quarantine_drop(entries[0].id).await.unwrap());
        let large = "SELECT COUNT(*) FROM blobs WHERE size > 1048576";
        assert_eq!(
            (count(large).await, count(parts).await),
            (1, 4),
            "kept once, for the message"
        );

        // A large entry nothing else refers to goes with its parts.
        let other = mail(
            "big@c.test",
            "big2@c.test",
            "big",
            "",
            &format!("PANIC-ME 2\n{filler}"),
        );
        pipeline
            .process(vec![raw(other)], OnBadInput::Quarantine)
            .await
            .unwrap();
        assert_eq!(count(parts).await, 8);
        let entry = app.store().quarantine_list().await.unwrap()[0].id;
        assert!(app.store().quarantine_drop(entry).await.unwrap());
        assert_eq!(count(parts).await, 4);
    }
);

async fn install_poison_trigger(app: &TestApp) {
    let statements: &[&str] = match app.db.backend {
        Backend::Sqlite => &["CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.subject = 'poison'
             BEGIN SELECT RAISE(ABORT, 'poison subject refused by trigger'); END"],
        Backend::Postgres => &[
            "CREATE FUNCTION poison() RETURNS trigger AS $$ BEGIN
               IF NEW.subject = 'poison' THEN RAISE EXCEPTION 'poison subject refused by trigger'; END IF;
               RETURN NEW; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER poison BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION poison()",
        ],
    };
    for s in statements {
        sqlx::raw_sql(s).execute(app.store().pool()).await.unwrap();
    }
}

both_backends!(
    message_that_cannot_be_applied_is_quarantined_and_the_batch_goes_on,
    |backend| async move {
        let app = TestApp::new(backend).await;
        install_poison_trigger(&app).await;
        let batch = vec![
            raw(mail("a@c.test", "p1@c.test", "first", "", "ok")),
            raw(mail("b@c.test", "p2@c.test", "poison", "", "bad")),
            raw(mail("c@c.test", "p3@c.test", "third", "", "ok")),
        ];
        let d = app
            .pipeline
            .process(batch, OnBadInput::Quarantine)
            .await
            .unwrap();
        assert!(matches!(
            d[0],
            Disposition::Applied(Outcome::Created { .. })
        ));
        assert!(
            matches!(&d[1], Disposition::Quarantined { reason, .. } if reason.contains("poison subject refused")),
            "{:?}",
            d[1]
        );
        assert!(matches!(
            d[2],
            Disposition::Applied(Outcome::Created { .. })
        ));
        let counts = app.store().counts().await.unwrap();
        assert_eq!(
            (counts.tickets, counts.messages, counts.quarantined),
            (2, 2, 1)
        );

        // Feeding the poison again does not trip twice: same entry, one more attempt.
        app.feed("pipe", &mail("b@c.test", "p2@c.test", "poison", "", "bad"))
            .await;
        let entries = app.store().quarantine_list().await.unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].attempts, 2);
    }
);

both_backends!(
    unusable_input_is_refused_or_quarantined_by_policy,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let refused = app
            .pipeline
            .process(vec![raw(b"not mail at all".to_vec())], OnBadInput::Refuse)
            .await
            .unwrap();
        assert!(
            matches!(&refused[0], Disposition::Refused { reason } if reason.contains("header"))
        );
        assert_eq!(app.store().counts().await.unwrap().quarantined, 0);
        let kept = app.feed("pipe", b"").await;
        assert!(matches!(kept, Disposition::Quarantined { .. }));
    }
);

/// Hostile shapes, each over one ingest limit with the defaults.
fn hostile_shapes() -> Vec<(&'static str, Vec<u8>)> {
    let head =
        "From: h@c.test\r\nTo: support@example.com\r\nSubject: hostile\r\nMIME-Version: 1.0\r\n";
    let mut parts = format!(
        "{head}Message-ID: <parts@c.test>\r\nContent-Type: multipart/mixed; boundary=\"p\"\r\n\r\n"
    );
    for i in 0..10_000 {
        parts.push_str(&format!(
            "--p\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n"
        ));
    }
    parts.push_str("--p--\r\n");
    let mut nested = format!("{head}Message-ID: <nested@c.test>\r\n");
    for level in 0..200 {
        nested.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"n{level}\"\r\n\r\n--n{level}\r\n"
        ));
    }
    nested.push_str("Content-Type: text/plain\r\n\r\ndeep\r\n");
    for level in (0..200).rev() {
        nested.push_str(&format!("--n{level}--\r\n"));
    }
    let big_header = format!(
        "{head}Message-ID: <header@c.test>\r\nX-Filler: {}\r\n\r\nbody\r\n",
        "a".repeat(1024 * 1024)
    );
    let recipients: Vec<String> = (0..100_000).map(|i| format!("r{i}@c.test")).collect();
    let many = format!(
        "From: h@c.test\r\nTo: {}\r\nSubject: hostile\r\nMessage-ID: <many@c.test>\r\n\r\nbody\r\n",
        recipients.join(", ")
    );
    vec![
        ("ingest.max_parts", parts.into_bytes()),
        ("ingest.max_depth", nested.into_bytes()),
        ("ingest.max_header_bytes", big_header.into_bytes()),
        ("ingest.max_addresses", many.into_bytes()),
    ]
}

both_backends!(
    hostile_shapes_are_quarantined_naming_the_limit,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let shapes = hostile_shapes();
        let batch = shapes.iter().map(|(_, data)| raw(data.clone())).collect();
        let d = app
            .pipeline
            .process(batch, OnBadInput::Quarantine)
            .await
            .unwrap();
        for ((limit, _), disposition) in shapes.iter().zip(&d) {
            assert!(
                matches!(disposition, Disposition::Quarantined { reason, .. } if reason.contains(limit)),
                "{limit}: {disposition:?}"
            );
        }
        // Kept whole, each once, and nothing else was stored.
        let entries = app.store().quarantine_list().await.unwrap();
        assert_eq!(entries.len(), shapes.len());
        assert_eq!(app.store().counts().await.unwrap().tickets, 0);
        // Over the pipe the same is refused (exit 65), with the same name.
        let refused = app
            .pipeline
            .process(vec![raw(shapes[0].1.clone())], OnBadInput::Refuse)
            .await
            .unwrap();
        assert!(
            matches!(&refused[0], Disposition::Refused { reason } if reason.contains("ingest.max_parts")),
            "{:?}",
            refused[0]
        );
    }
);

both_backends!(
    the_same_bytes_from_two_sources_name_both,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let bytes = b"not a message at all".to_vec();
        for source in ["spool/new/1.eml", "spool/new/2.eml", "spool/new/1.eml"] {
            let message = RawMessage {
                channel: "pipe".into(),
                source: Some(source.into()),
                data: Arc::new(bytes.clone()),
            };
            app.pipeline
                .process(vec![message], OnBadInput::Quarantine)
                .await
                .unwrap();
        }
        let entries = app.store().quarantine_list().await.unwrap();
        assert_eq!(entries.len(), 1, "kept once per content");
        assert_eq!(entries[0].attempts, 3);
        assert_eq!(
            entries[0].source.as_deref(),
            Some("spool/new/1.eml; spool/new/2.eml")
        );
    }
);
