//! Which ticket each message lands on, on both backends.

use crate::both_backends;
use crate::harness::*;
use mailroom::pipeline::{Disposition, Outcome};

both_backends!(
    fixture_threads_land_on_the_right_tickets,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let t = |p: &str| format!("threads/{p}");

        // Arrange / Act
        let original = app.apply_file(t("01-original.eml")).await;
        let reply = app.apply_file(t("02-reply-in-reply-to-only.eml")).await;
        let colleague = app.apply_file(t("03-long-references-chain.eml")).await;
        let redelivered = app.apply_file(t("04-duplicate-delivery-of-01.eml")).await;
        let other_customer = app
            .apply_file(t("05-same-subject-other-customer.eml"))
            .await;
        let stranger = app.apply_file(t("06-bare-re-from-stranger.eml")).await;
        let outlook = app.apply_file(t("07-outlook-original.eml")).await;
        let outlook_reply = app.apply_file(t("08-outlook-reply-thread-index.eml")).await;
        let same_id_other_body = app
            .apply_file(t("09-same-message-id-different-body.eml"))
            .await;
        let no_id = app.apply_file(t("10-no-message-id.eml")).await;
        let no_id_again = app.apply_file(t("10-no-message-id.eml")).await;
        let auto_reply = app.apply_file(t("11-auto-reply-to-01.eml")).await;

        // Assert
        let alice = ticket_of(&original);
        assert!(matches!(original, Outcome::Created { .. }));
        assert_eq!(
            reply,
            Outcome::Appended {
                ticket_id: alice,
                number: 1,
                reopened: false
            }
        );
        assert_eq!(ticket_of(&colleague), alice);
        assert_eq!(
            redelivered,
            Outcome::Duplicate {
                ticket_id: Some(alice)
            }
        );
        assert!(matches!(other_customer, Outcome::Created { .. }));
        assert_ne!(ticket_of(&other_customer), alice);
        assert!(
            matches!(stranger, Outcome::Created { .. }),
            "a bare Re: from a stranger must not join: {stranger:?}"
        );
        assert!(matches!(outlook, Outcome::Created { .. }));
        assert_eq!(ticket_of(&outlook_reply), ticket_of(&outlook));
        assert!(matches!(outlook_reply, Outcome::Appended { .. }));
        assert!(
            matches!(same_id_other_body, Outcome::Appended { ticket_id, .. } if ticket_id == alice)
        );
        assert!(matches!(no_id, Outcome::Created { .. }));
        assert_eq!(
            no_id_again,
            Outcome::Duplicate {
                ticket_id: Some(ticket_of(&no_id))
            }
        );
        assert!(matches!(auto_reply, Outcome::Appended { ticket_id, .. } if ticket_id == alice));

        let view = app.store().ticket_show(1).await.unwrap().unwrap();
        assert_eq!(
            view.messages.len(),
            5,
            "01, 02, 03, 09, 11 on alice's ticket"
        );
        // Bob was never named on alice's ticket: his message is kept and
        // flagged, and he is not a recipient until an agent adds him.
        assert_eq!(view.ticket.contacts, vec!["alice@customer.test"]);
        assert_eq!(view.messages[2].from, "bob@customer.test");
        assert_eq!(view.messages[2].flags, vec!["new_participant"]);
        assert_eq!(view.messages[4].flags, vec!["auto_reply"]);
        let counts = app.store().counts().await.unwrap();
        assert_eq!(counts.tickets, 5, "alice, carol, mallory, dave, erin");
    }
);

both_backends!(
    two_customers_writing_help_get_two_tickets,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let a = app
            .apply(
                "pipe",
                &mail("a@one.test", "h1@one.test", "Help", "", "Help me"),
            )
            .await;
        let b = app
            .apply(
                "pipe",
                &mail("b@two.test", "h2@two.test", "Help", "", "Help me too"),
            )
            .await;
        let c = app
            .apply(
                "pipe",
                &mail("c@three.test", "h3@three.test", "Re: Help", "", "me too"),
            )
            .await;
        let tickets = [ticket_of(&a), ticket_of(&b), ticket_of(&c)];
        assert!(tickets[0] != tickets[1] && tickets[1] != tickets[2] && tickets[0] != tickets[2]);
    }
);

both_backends!(
    subject_tag_threads_only_for_participants,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let first = app
            .apply(
                "pipe",
                &mail("ann@c.test", "s1@c.test", "Invoice", "", "wrong"),
            )
            .await;
        let Outcome::Created { number, .. } = first else {
            panic!()
        };
        let subject = format!("Re: [#{number}] Invoice");

        let from_requester = app
            .apply(
                "pipe",
                &mail("ann@c.test", "s2@c.test", &subject, "", "any news?"),
            )
            .await;
        let from_stranger = app
            .apply(
                "pipe",
                &mail("eve@evil.test", "s3@evil.test", &subject, "", "let me in"),
            )
            .await;

        assert_eq!(ticket_of(&from_requester), ticket_of(&first));
        assert!(
            matches!(from_stranger, Outcome::Created { .. }),
            "{from_stranger:?}"
        );
    }
);

both_backends!(
    references_win_over_a_changed_subject,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let first = app
            .apply(
                "pipe",
                &mail("ann@c.test", "r1@c.test", "Printer", "", "broken"),
            )
            .await;
        let changed = app
            .apply(
                "pipe",
                &mail(
                    "ann@c.test",
                    "r2@c.test",
                    "Totally new topic",
                    "In-Reply-To: <r1@c.test>\r\n",
                    "x",
                ),
            )
            .await;
        assert_eq!(ticket_of(&changed), ticket_of(&first));
    }
);

both_backends!(
    same_message_to_two_teams_makes_one_ticket_per_team,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let raw = mail(
            "ann@c.test",
            "m1@c.test",
            "Quote and support",
            "Cc: sales@example.com\r\n",
            "both",
        );
        let support = app.apply("pipe", &raw).await;
        let sales = app.apply("sales", &raw).await;
        let support_again = app.apply("pipe2", &raw).await;
        assert!(matches!(support, Outcome::Created { .. }));
        assert!(matches!(sales, Outcome::Created { .. }));
        assert_ne!(ticket_of(&support), ticket_of(&sales));
        assert_eq!(
            support_again,
            Outcome::Duplicate {
                ticket_id: Some(ticket_of(&support))
            }
        );

        // A reply threads within each team onto that team's ticket.
        let reply = mail(
            "ann@c.test",
            "m2@c.test",
            "Re: Quote",
            "In-Reply-To: <m1@c.test>\r\n",
            "more",
        );
        assert_eq!(
            ticket_of(&app.apply("sales", &reply).await),
            ticket_of(&sales)
        );
        assert_eq!(
            ticket_of(&app.apply("pipe", &reply).await),
            ticket_of(&support)
        );
    }
);

both_backends!(
    customer_reply_reopens_but_auto_reply_does_not,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let first = app
            .apply(
                "pipe",
                &mail("ann@c.test", "w1@c.test", "Order", "", "where?"),
            )
            .await;
        let Outcome::Created { number, .. } = first else {
            panic!()
        };
        assert!(app
            .store()
            .set_ticket_status(number, "waiting on contact", "test")
            .await
            .unwrap());

        let auto = app
            .apply(
                "pipe",
                &mail(
                    "ann@c.test",
                    "w2@c.test",
                    "Out of office",
                    "Auto-Submitted: auto-replied\r\nIn-Reply-To: <w1@c.test>\r\n",
                    "away",
                ),
            )
            .await;
        assert_eq!(
            auto,
            Outcome::Appended {
                ticket_id: ticket_of(&first),
                number,
                reopened: false
            }
        );
        assert_eq!(
            app.store()
                .ticket_list(Some("waiting"))
                .await
                .unwrap()
                .len(),
            1
        );

        let human = app
            .apply(
                "pipe",
                &mail(
                    "ann@c.test",
                    "w3@c.test",
                    "Re: Order",
                    "In-Reply-To: <w1@c.test>\r\n",
                    "hello?",
                ),
            )
            .await;
        assert_eq!(
            human,
            Outcome::Appended {
                ticket_id: ticket_of(&first),
                number,
                reopened: true
            }
        );
        assert_eq!(
            app.store().ticket_list(Some("open")).await.unwrap()[0].number,
            number
        );
    }
);

both_backends!(
    reply_to_closed_ticket_reopens_by_default,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let first = app
            .apply(
                "pipe",
                &mail("ann@c.test", "c1@c.test", "Order", "", "where?"),
            )
            .await;
        app.store()
            .set_ticket_status(1, "closed", "test")
            .await
            .unwrap();
        let reply = app
            .apply(
                "pipe",
                &mail(
                    "ann@c.test",
                    "c2@c.test",
                    "Re: Order",
                    "References: <c1@c.test>\r\n",
                    "again",
                ),
            )
            .await;
        assert_eq!(
            reply,
            Outcome::Appended {
                ticket_id: ticket_of(&first),
                number: 1,
                reopened: true
            }
        );
    }
);

both_backends!(
    follow_up_policy_new_ticket_links_the_old_one,
    |backend| async move {
        let app = TestApp::with_config(backend, "").await;
        let config = test_config(&app.db.url, "").clone();
        let mut config = config;
        config.pipelines.get_mut("support").unwrap().follow_up =
            mailroom::config::FollowUp::NewTicket;
        let pipeline = TestApp::pipeline_for(&config).await;
        let app = TestApp {
            pipeline,
            config,
            db: app.db,
        };

        let first = app
            .apply(
                "pipe",
                &mail("ann@c.test", "f1@c.test", "Order", "", "where?"),
            )
            .await;
        app.store()
            .set_ticket_status(1, "closed", "test")
            .await
            .unwrap();
        let reply = app
            .apply(
                "pipe",
                &mail(
                    "ann@c.test",
                    "f2@c.test",
                    "Re: Order",
                    "In-Reply-To: <f1@c.test>\r\n",
                    "again",
                ),
            )
            .await;
        let Outcome::Created {
            follow_up_of,
            number,
            ..
        } = reply
        else {
            panic!("{reply:?}")
        };
        assert_eq!(follow_up_of, Some(ticket_of(&first)));
        assert_eq!(number, 2);
        let second = app.store().ticket_show(2).await.unwrap().unwrap();
        assert_eq!(second.ticket.follow_up_of, Some(ticket_of(&first)));
        // The next reply in that conversation follows the new, open ticket.
        let next = app
            .apply(
                "pipe",
                &mail(
                    "ann@c.test",
                    "f3@c.test",
                    "Re: Order",
                    "In-Reply-To: <f2@c.test>\r\n",
                    "hi",
                ),
            )
            .await;
        assert_eq!(ticket_of(&next), ticket_of(&reply));
    }
);

both_backends!(
    follow_up_after_days_reopens_recently_closed_tickets,
    |backend| async move {
        let db = TestDb::new(backend).await;
        let mut config = test_config(&db.url, "");
        let support = config.pipelines.get_mut("support").unwrap();
        support.follow_up = mailroom::config::FollowUp::NewTicket;
        support.new_ticket_after_days = Some(14);
        let pipeline = TestApp::pipeline_for(&config).await;
        let app = TestApp {
            pipeline,
            config,
            db,
        };

        app.apply(
            "pipe",
            &mail("ann@c.test", "d1@c.test", "Order", "", "where?"),
        )
        .await;
        app.store()
            .set_ticket_status(1, "closed", "test")
            .await
            .unwrap();
        let recent = app
            .apply(
                "pipe",
                &mail(
                    "ann@c.test",
                    "d2@c.test",
                    "Re: Order",
                    "In-Reply-To: <d1@c.test>\r\n",
                    "x",
                ),
            )
            .await;
        assert!(
            matches!(recent, Outcome::Appended { reopened: true, .. }),
            "{recent:?}"
        );

        app.store()
            .set_ticket_status(1, "closed", "test")
            .await
            .unwrap();
        let long_ago = mailroom::store::now_ms() - 15 * 86_400_000;
        sqlx::query("UPDATE tickets SET status_changed_at = $1 WHERE number = 1")
            .bind(long_ago)
            .execute(app.store().pool())
            .await
            .unwrap();
        let late = app
            .apply(
                "pipe",
                &mail(
                    "ann@c.test",
                    "d3@c.test",
                    "Re: Order",
                    "In-Reply-To: <d2@c.test>\r\n",
                    "y",
                ),
            )
            .await;
        assert!(
            matches!(
                late,
                Outcome::Created {
                    follow_up_of: Some(_),
                    ..
                }
            ),
            "{late:?}"
        );
    }
);

both_backends!(
    channel_without_ticket_creation_only_appends,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let first = app
            .apply("pipe", &mail("ann@c.test", "x1@c.test", "Chat", "", "hi"))
            .await;
        let threaded = app
            .apply(
                "chat",
                &mail(
                    "ann@c.test",
                    "x2@c.test",
                    "Re: Chat",
                    "In-Reply-To: <x1@c.test>\r\n",
                    "via bot",
                ),
            )
            .await;
        let unthreaded = app
            .apply(
                "chat",
                &mail("bob@c.test", "x3@c.test", "New chat", "", "hello bot"),
            )
            .await;
        assert_eq!(ticket_of(&threaded), ticket_of(&first));
        assert_eq!(unthreaded, Outcome::Recorded);
        assert_eq!(app.store().counts().await.unwrap().tickets, 1);
        assert_eq!(app.store().counts().await.unwrap().messages, 3);
    }
);

both_backends!(
    bounce_threads_onto_the_ticket_of_the_bounced_message,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let first = app
            .apply(
                "pipe",
                &mail("ann@c.test", "b1@c.test", "Order", "", "where?"),
            )
            .await;
        let dsn = "From: MAILER-DAEMON@mx.test\r\nTo: support@example.com\r\nSubject: Undelivered Mail Returned to Sender\r\n\
        Message-ID: <dsn1@mx.test>\r\nAuto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n\
        --b\r\nContent-Type: text/plain\r\n\r\nfailed\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\nStatus: 5.1.1\r\n\
        --b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <b1@c.test>\r\nSubject: Order\r\n--b--\r\n";
        let bounce = app.apply("pipe", dsn.as_bytes()).await;
        assert!(
            matches!(
                bounce,
                Outcome::Appended {
                    reopened: false,
                    ..
                }
            ),
            "{bounce:?}"
        );
        assert_eq!(ticket_of(&bounce), ticket_of(&first));
        let view = app.store().ticket_show(1).await.unwrap().unwrap();
        assert!(view.messages[1].flags.contains(&"bounce".to_string()));
    }
);

both_backends!(
    concurrent_instances_ingest_each_message_once,
    |backend| async move {
        // Two pipelines on one database stand in for two mailroom instances that
        // both received the same mail (e.g. two MTAs delivering the same message).
        let app = TestApp::new(backend).await;
        let other = TestApp::pipeline_for(&app.config).await;
        let messages: Vec<Vec<u8>> = (0..40)
            .map(|i| {
                let thread = i / 4; // 10 threads of 4 messages
                let irt = if i % 4 == 0 {
                    String::new()
                } else {
                    format!("In-Reply-To: <c{}@c.test>\r\n", i - 1)
                };
                mail(
                    &format!("u{thread}@c.test"),
                    &format!("c{i}@c.test"),
                    &format!("Thread {thread}"),
                    &irt,
                    "body",
                )
            })
            .collect();
        let run = |pipeline: mailroom::pipeline::Pipeline, messages: Vec<Vec<u8>>| async move {
            for m in messages {
                let raw = mailroom::pipeline::RawMessage {
                    channel: "pipe".into(),
                    source: None,
                    data: std::sync::Arc::new(m),
                };
                let d = pipeline
                    .process(vec![raw], mailroom::pipeline::OnBadInput::Refuse)
                    .await
                    .unwrap();
                assert!(matches!(d[0], Disposition::Applied(_)), "{d:?}");
            }
        };
        let (a, b) = tokio::join!(
            tokio::spawn(run(app.pipeline.clone(), messages.clone())),
            tokio::spawn(run(other, messages.clone()))
        );
        a.unwrap();
        b.unwrap();
        let counts = app.store().counts().await.unwrap();
        assert_eq!(counts.messages, 40);
        assert_eq!(counts.tickets, 10);
        assert_eq!(counts.quarantined, 0);
        for t in app.store().ticket_list(None).await.unwrap() {
            assert_eq!(t.message_count, 4, "{t:?}");
        }
    }
);

both_backends!(
    new_contacts_join_the_company_owning_their_domain,
    |backend| async move {
        let app = TestApp::new(backend).await;
        sqlx::query("INSERT INTO companies (name) VALUES ('Acme')")
            .execute(app.store().pool())
            .await
            .unwrap();
        sqlx::query("INSERT INTO company_domains (domain, company_id) SELECT 'acme.test', id FROM companies")
            .execute(app.store().pool())
            .await
            .unwrap();
        let acme = app
            .apply(
                "pipe",
                &mail("ann@acme.test", "co1@acme.test", "Hi", "", "x"),
            )
            .await;
        let other = app
            .apply(
                "pipe",
                &mail("bob@else.test", "co2@else.test", "Hi", "", "y"),
            )
            .await;
        let company_of = |ticket: i64| {
            let pool = app.store().pool().clone();
            async move {
                sqlx::query_scalar::<_, Option<i64>>("SELECT company_id FROM tickets WHERE id = $1")
                    .bind(ticket)
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        assert!(company_of(ticket_of(&acme)).await.is_some());
        assert_eq!(company_of(ticket_of(&other)).await, None);
    }
);

both_backends!(
    a_form_that_is_not_threaded_always_opens_a_new_ticket,
    |backend| async move {
        // A form post carries the participant's own [#n] tag and quotes our
        // reply's Message-ID: with `threaded = false` (the default) it is a
        // new ticket all the same; without the hint it would thread.
        let app = TestApp::new(backend).await;
        let first = app
            .apply(
                "pipe",
                &mail("ann@c.test", "f1@c.test", "Printer", "", "broken"),
            )
            .await;
        let number = match first {
            Outcome::Created { number, .. } => number,
            other => panic!("{other:?}"),
        };
        let post = mail(
            "ann@c.test",
            "f2@c.test",
            &format!("Re: [#{number}] Printer"),
            "In-Reply-To: <f1@c.test>\r\n",
            "still broken",
        );
        let submit = |no_threading: bool, data: Vec<u8>| {
            let hints = mailroom::pipeline::Hints {
                no_threading,
                ..Default::default()
            };
            let raw = mailroom::pipeline::RawMessage {
                channel: "pipe".into(),
                source: None,
                data: std::sync::Arc::new(data),
            };
            let pipeline = app.pipeline.clone();
            async move {
                let prepared = pipeline
                    .prepare_with(vec![(raw, hints)], mailroom::pipeline::OnBadInput::Refuse)
                    .await
                    .unwrap();
                pipeline.commit(prepared).await.unwrap().remove(0)
            }
        };
        let unthreaded = submit(true, post.clone()).await;
        assert!(
            matches!(unthreaded, Disposition::Applied(Outcome::Created { .. })),
            "{unthreaded:?}"
        );
        let again = String::from_utf8(post)
            .unwrap()
            .replace("f2@c.test", "f3@c.test");
        let threaded = submit(false, again.into_bytes()).await;
        assert!(
            matches!(threaded, Disposition::Applied(Outcome::Appended { number: n, .. }) if n == number),
            "{threaded:?}"
        );
    }
);

both_backends!(
    a_long_chain_threads_even_when_a_near_parent_is_another_teams,
    |backend| async move {
        // The nearest references are unknown here or another team's; the
        // team's own message is the 10th key. It still threads.
        let app = TestApp::new(backend).await;
        let ours = app
            .apply(
                "pipe",
                &mail("ann@c.test", "own@c.test", "Printer", "", "broken"),
            )
            .await;
        app.apply(
            "sales",
            &mail("ann@c.test", "sales@c.test", "Offer", "", "price?"),
        )
        .await;
        let middle: Vec<String> = (1..=7).map(|i| format!("<r{i}@c.test>")).collect();
        let references = format!(
            "References: <own@c.test> {} <sales@c.test>\r\n",
            middle.join(" ")
        );
        let reply = mail(
            "ann@c.test",
            "late@c.test",
            "Re: Printer",
            &references,
            "again",
        );
        let outcome = app.apply("pipe", &reply).await;
        assert_eq!(outcome.ticket_id(), ours.ticket_id(), "{outcome:?}");
    }
);

/// A message from `from` with `headers` (In-Reply-To, References …).
fn msg(from: &str, id: &str, headers: &str) -> Vec<u8> {
    mail(from, id, "Order 1234", headers, "text")
}

async fn number(app: &TestApp, outcome: &Outcome) -> i64 {
    crate::outbound::number_of(app.store(), ticket_of(outcome)).await
}

both_backends!(
    a_parent_that_arrives_after_its_replies_joins_their_ticket,
    |backend| async move {
        let app = TestApp::new(backend).await;
        // A reply first, then its parent.
        let reply = app
            .apply(
                "pipe",
                &msg(
                    "carol@customer.test",
                    "r1@c.test",
                    "In-Reply-To: <p1@c.test>\r\n",
                ),
            )
            .await;
        let parent = app
            .apply("pipe", &msg("carol@customer.test", "p1@c.test", ""))
            .await;
        assert!(matches!(reply, Outcome::Created { .. }));
        assert!(matches!(parent, Outcome::Appended { .. }), "{parent:?}");
        assert_eq!(ticket_of(&parent), ticket_of(&reply));

        // A chain arriving descendant first: C, then A (the root), then B.
        let refs = |ids: &[&str]| {
            let list: Vec<String> = ids.iter().map(|i| format!("<{i}>")).collect();
            format!(
                "In-Reply-To: {}\r\nReferences: {}\r\n",
                list.last().unwrap(),
                list.join(" ")
            )
        };
        let c = app
            .apply(
                "pipe",
                &msg(
                    "dan@customer.test",
                    "c@d.test",
                    &refs(&["a@d.test", "b@d.test"]),
                ),
            )
            .await;
        let a = app
            .apply("pipe", &msg("dan@customer.test", "a@d.test", ""))
            .await;
        let b = app
            .apply(
                "pipe",
                &msg("dan@customer.test", "b@d.test", &refs(&["a@d.test"])),
            )
            .await;
        assert_eq!(
            [ticket_of(&a), ticket_of(&b)],
            [ticket_of(&c); 2],
            "one conversation, one ticket"
        );
        // And C, B, A in one batch (the same delivery).
        let batch = [
            msg(
                "erin@customer.test",
                "c@e.test",
                &refs(&["a@e.test", "b@e.test"]),
            ),
            msg("erin@customer.test", "b@e.test", &refs(&["a@e.test"])),
            msg("erin@customer.test", "a@e.test", ""),
        ];
        let raws = batch
            .iter()
            .map(|raw| mailroom::pipeline::RawMessage {
                channel: "pipe".into(),
                source: None,
                data: std::sync::Arc::new(raw.clone()),
            })
            .collect();
        let done = app
            .pipeline
            .process(raws, mailroom::pipeline::OnBadInput::Quarantine)
            .await
            .unwrap();
        let tickets: Vec<Option<i64>> = done
            .iter()
            .map(|d| match d {
                Disposition::Applied(o) => o.ticket_id(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(tickets, vec![tickets[0]; 3], "{done:?}");

        // A stranger's late "parent" is kept but flagged (participants rule).
        let stranger = app
            .apply(
                "pipe",
                &msg("mallory@evil.test", "p1@c.test", "X-Other: 1\r\n"),
            )
            .await;
        assert_eq!(ticket_of(&stranger), ticket_of(&reply));
        let view = app
            .store()
            .ticket_show(number(&app, &reply).await)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(view.messages.last().unwrap().flags, vec!["new_participant"]);
    }
);

both_backends!(
    a_late_parent_links_two_tickets_and_merges_only_when_told,
    |backend| async move {
        let extra = r#"
[pipelines.merging]
statuses = [{ name = "open", kind = "open" }, { name = "closed", kind = "closed" }]
merge_late_parents = true
[channels.merging]
kind = "pipe"
team = "support"
pipeline = "merging"
"#;
        let app = TestApp::with_config(backend, extra).await;
        let irt = "In-Reply-To: <p@f.test>\r\n";
        // Two replies to one message that has not arrived: two tickets.
        let first = app
            .apply("pipe", &msg("fay@customer.test", "r1@f.test", irt))
            .await;
        let second = app
            .apply("pipe", &msg("fay@customer.test", "r2@f.test", irt))
            .await;
        assert_ne!(ticket_of(&first), ticket_of(&second));
        let parent = app
            .apply("pipe", &msg("fay@customer.test", "p@f.test", ""))
            .await;
        assert_eq!(ticket_of(&parent), ticket_of(&first), "the older ticket");
        let (a, b) = (number(&app, &first).await, number(&app, &second).await);
        // Linked on both timelines, not merged.
        for (on, to) in [(a, b), (b, a)] {
            let view = app.store().ticket_show(on).await.unwrap().unwrap();
            assert_eq!(view.merged_into, None);
            let related: Vec<i64> = view.related.iter().map(|r| r.ticket).collect();
            assert_eq!(related, vec![to], "#{on}");
            assert_eq!(view.related[0].reason, "late_parent");
        }
        // The same parent again through another inbox (other bytes): kept,
        // not linked a second time.
        app.apply(
            "pipe2",
            &mail(
                "fay@customer.test",
                "p@f.test",
                "Order 1234",
                "X-Via: other\r\n",
                "text",
            ),
        )
        .await;
        let links: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM ticket_events WHERE kind = 'related_ticket'")
                .fetch_one(app.store().pool())
                .await
                .unwrap();
        assert_eq!(links, 2, "one event on each ticket");

        // The agent's one action; later mail to the merged ticket lands on
        // the survivor.
        let merged = mailroom::outbound::merge::merge_tickets(
            app.store(),
            &mailroom::outbound::Actor::Ops,
            b,
            a,
        )
        .await
        .unwrap();
        assert_eq!((merged.ticket, merged.into), (b, a));
        let later = app
            .apply(
                "pipe",
                &msg(
                    "fay@customer.test",
                    "r3@f.test",
                    "In-Reply-To: <r2@f.test>\r\n",
                ),
            )
            .await;
        assert_eq!(ticket_of(&later), ticket_of(&first));
        assert!(
            mailroom::outbound::merge::merge_tickets(
                app.store(),
                &mailroom::outbound::Actor::Ops,
                b,
                a
            )
            .await
            .is_err(),
            "already merged"
        );

        // With merge_late_parents: merged at once when nobody worked on the
        // later ticket and both have the same requester…
        let irt = "In-Reply-To: <q@g.test>\r\n";
        let first = app
            .apply("merging", &msg("gus@customer.test", "s1@g.test", irt))
            .await;
        let second = app
            .apply("merging", &msg("gus@customer.test", "s2@g.test", irt))
            .await;
        app.apply("merging", &msg("gus@customer.test", "q@g.test", ""))
            .await;
        let view = app
            .store()
            .ticket_show(number(&app, &second).await)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(view.merged_into, Some(number(&app, &first).await));
        // …but not when an agent has touched it.
        let irt = "In-Reply-To: <t@h.test>\r\n";
        app.apply("merging", &msg("hal@customer.test", "u1@h.test", irt))
            .await;
        let touched = app
            .apply("merging", &msg("hal@customer.test", "u2@h.test", irt))
            .await;
        sqlx::query("INSERT INTO ticket_events (ticket_id, kind, data, actor, created_at) VALUES ($1, 'note', '{}', 'agent:alice', 0)")
            .bind(ticket_of(&touched))
            .execute(app.store().pool())
            .await
            .unwrap();
        app.apply("merging", &msg("hal@customer.test", "t@h.test", ""))
            .await;
        let view = app
            .store()
            .ticket_show(number(&app, &touched).await)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(view.merged_into, None);
        assert_eq!(view.related.len(), 1, "linked instead");
    }
);

both_backends!(
    quoted_ids_comments_folding_and_cycles_thread_without_surprises,
    |backend| async move {
        let app = TestApp::new(backend).await;
        // The same ID, quoted by one mailer and not by the other.
        let quoted = mail(
            "ivy@customer.test",
            "\"01KF8JCEOCBS0045PS\"@xxx.yyy.com",
            "Quoted",
            "",
            "hi",
        );
        let first = app.apply("pipe", &quoted).await;
        let reply = app
            .apply(
                "pipe",
                &msg(
                    "ivy@customer.test",
                    "v1@i.test",
                    "In-Reply-To: <01KF8JCEOCBS0045PS@xxx.yyy.com>\r\n",
                ),
            )
            .await;
        assert_eq!(ticket_of(&reply), ticket_of(&first));
        let back = app
            .apply(
                "pipe",
                &msg(
                    "ivy@customer.test",
                    "v2@i.test",
                    "References: <\"v1\"@i.test>\r\n",
                ),
            )
            .await;
        assert_eq!(ticket_of(&back), ticket_of(&first));

        // An ID stored quoted before IDs had one form is rewritten once at
        // start, and then threads in either form.
        let old = app
            .apply("pipe", &msg("ivy@customer.test", "legacy1@i.test", ""))
            .await;
        for sql in [
            "UPDATE messages SET message_id = '\"legacy1\"@i.test' WHERE message_id = 'legacy1@i.test'",
            "DELETE FROM counters WHERE name = 'message_ids_normalized'",
        ] {
            sqlx::query(sql).execute(app.store().pool()).await.unwrap();
        }
        app.store().migrate().await.unwrap();
        let answer = app
            .apply(
                "pipe",
                &msg(
                    "ivy@customer.test",
                    "v3@i.test",
                    "In-Reply-To: <\"legacy1\"@i.test>\r\n",
                ),
            )
            .await;
        assert_eq!(ticket_of(&answer), ticket_of(&old));

        // References with comments and folding.
        let root = app
            .apply("pipe", &msg("jo@customer.test", "w1@j.test", ""))
            .await;
        let folded =
            "References: <old@lists.test> (from the list)\r\n\t(a comment) <w1@j.test>\r\n";
        let commented = app
            .apply("pipe", &msg("jo@customer.test", "w2@j.test", folded))
            .await;
        assert_eq!(ticket_of(&commented), ticket_of(&root));

        // A self-reference and a reference cycle: no loop, no crash, one ticket.
        let own = app
            .apply(
                "pipe",
                &msg(
                    "kim@customer.test",
                    "x1@k.test",
                    "In-Reply-To: <x1@k.test>\r\nReferences: <x1@k.test>\r\n",
                ),
            )
            .await;
        assert!(matches!(own, Outcome::Created { .. }));
        let y = app
            .apply(
                "pipe",
                &msg(
                    "kim@customer.test",
                    "y1@k.test",
                    "References: <z1@k.test>\r\n",
                ),
            )
            .await;
        let z = app
            .apply(
                "pipe",
                &msg(
                    "kim@customer.test",
                    "z1@k.test",
                    "References: <y1@k.test>\r\n",
                ),
            )
            .await;
        assert_eq!(ticket_of(&z), ticket_of(&y));
        let again = app
            .apply(
                "pipe",
                &msg(
                    "kim@customer.test",
                    "y1@k.test",
                    "References: <z1@k.test>\r\n",
                ),
            )
            .await;
        assert!(matches!(again, Outcome::Duplicate { .. }), "{again:?}");
    }
);

both_backends!(
    the_migration_fills_the_reverse_lookup_for_mail_stored_before_it,
    |backend| async move {
        let app = TestApp::new(backend).await;
        app.apply("pipe", &msg("lea@customer.test", "m1@l.test", ""))
            .await;
        let chain = "In-Reply-To: <m1@l.test>\r\nReferences: <m0@l.test> <m1@l.test>\r\n";
        app.apply("pipe", &msg("lea@customer.test", "m2@l.test", chain))
            .await;
        app.apply(
            "pipe",
            &msg(
                "lea@customer.test",
                "m3@l.test",
                "References: <m3@l.test> <m2@l.test>\r\n",
            ),
        )
        .await;
        let rows = || async {
            sqlx::query_as::<_, (String, i64, i64, i64)>(
                "SELECT referenced, team_id, ticket_id, message_id FROM message_refs ORDER BY message_id, referenced",
            )
            .fetch_all(app.store().pool())
            .await
            .unwrap()
        };
        let written = rows().await;
        let referenced: Vec<&str> = written.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(
            referenced,
            vec!["m0@l.test"],
            "own ID and parents stored on the ticket (m1, m2) left out"
        );
        // The migration's backfill, run over the same messages, finds the
        // same and the stored parents too (harmless: a copy of a stored
        // parent finds its ticket by its own Message-ID).
        sqlx::query("DELETE FROM message_refs")
            .execute(app.store().pool())
            .await
            .unwrap();
        let dir = match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        let migration = std::fs::read_to_string(format!(
            "{}/migrations/{dir}/0006_message_refs.sql",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let backfill = &migration[migration.find("INSERT INTO").unwrap()..];
        for statement in backfill.split(';').filter(|s| !s.trim().is_empty()) {
            sqlx::query(statement)
                .execute(app.store().pool())
                .await
                .unwrap();
        }
        let backfilled = rows().await;
        let referenced: Vec<&str> = backfilled.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(referenced, vec!["m0@l.test", "m1@l.test", "m2@l.test"]);
        assert!(written.iter().all(|row| backfilled.contains(row)));
    }
);

both_backends!(
    a_reply_to_stored_mail_writes_no_reverse_lookup_and_a_copy_of_its_parent_still_joins,
    |backend| async move {
        let app = TestApp::new(backend).await;
        let parent = app
            .apply("pipe", &msg("ida@customer.test", "p@i.test", ""))
            .await;
        let chain = "In-Reply-To: <p@i.test>\r\nReferences: <p@i.test>\r\n";
        let reply = app
            .apply("pipe", &msg("ida@customer.test", "r@i.test", chain))
            .await;
        assert_eq!(ticket_of(&reply), ticket_of(&parent));
        let refs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM message_refs")
            .fetch_one(app.store().pool())
            .await
            .unwrap();
        assert_eq!(refs, 0, "the only parent is stored on the ticket");

        // The same Message-ID again with another body (not a duplicate by
        // fingerprint): found by its own ID, not through the reply.
        let copy = mail(
            "ida@customer.test",
            "p@i.test",
            "Fwd: a copy",
            "",
            "The same message through another inbox, with a footer.",
        );
        let copy = app.apply("pipe", &copy).await;
        assert!(
            matches!(copy, Outcome::Appended { ticket_id, .. } if ticket_id == ticket_of(&parent)),
            "{copy:?}"
        );
    }
);

both_backends!(
    a_late_parent_to_a_closed_ticket_follows_the_follow_up_policy_unlinked,
    |backend| async move {
        let extra = r#"
[pipelines.followups]
statuses = [{ name = "open", kind = "open" }, { name = "closed", kind = "closed" }]
follow_up = "new_ticket"
merge_late_parents = true
[channels.followups]
kind = "pipe"
team = "support"
pipeline = "followups"
"#;
        let app = TestApp::with_config(backend, extra).await;
        let reply = app
            .apply(
                "followups",
                &msg(
                    "mo@customer.test",
                    "r1@m.test",
                    "In-Reply-To: <p@m.test>\r\n",
                ),
            )
            .await;
        let closed = number(&app, &reply).await;
        assert!(app
            .store()
            .set_ticket_status(closed, "closed", "test")
            .await
            .unwrap());
        let parent = app
            .apply("followups", &msg("mo@customer.test", "p@m.test", ""))
            .await;
        assert!(
            matches!(parent, Outcome::Created { .. }),
            "a follow-up: {parent:?}"
        );
        let follow_up = number(&app, &parent).await;
        for n in [closed, follow_up] {
            let view = app.store().ticket_show(n).await.unwrap().unwrap();
            assert_eq!((view.merged_into, view.related.len()), (None, 0), "#{n}");
        }
        assert_eq!(
            app.store()
                .ticket_show(follow_up)
                .await
                .unwrap()
                .unwrap()
                .ticket
                .follow_up_of,
            Some(ticket_of(&reply))
        );
    }
);

both_backends!(
    the_opt_in_subject_fallback_joins_one_open_recent_ticket_of_the_same_sender,
    |backend| async move {
        let extra = r#"
[pipelines.bysubject]
statuses = [{ name = "open", kind = "open" }, { name = "closed", kind = "closed" }]
thread_by_subject_days = 14
[channels.bysubject]
kind = "pipe"
team = "support"
pipeline = "bysubject"
[channels.bysubject_sales]
kind = "pipe"
team = "sales"
pipeline = "bysubject"
"#;
        let app = TestApp::with_config(backend, extra).await;
        let say = |from: &str, id: &str, subject: &str, headers: &str| {
            mail(from, id, subject, headers, "text")
        };
        let first = app
            .apply(
                "bysubject",
                &say("carol@customer.test", "s1@c.test", "Printer on fire", ""),
            )
            .await;
        let t1 = ticket_of(&first);
        // A reply that lost its headers, from the same sender: joins.
        let again = app
            .apply(
                "bysubject",
                &say(
                    "carol@customer.test",
                    "s2@c.test",
                    "RE: AW: Printer on fire",
                    "",
                ),
            )
            .await;
        assert!(
            matches!(again, Outcome::Appended { ticket_id, .. } if ticket_id == t1),
            "{again:?}"
        );
        // Never: automatic mail, another sender, another team, a pipeline
        // without the option.
        let auto = app
            .apply(
                "bysubject",
                &say(
                    "carol@customer.test",
                    "s3@c.test",
                    "Re: Printer on fire",
                    "Auto-Submitted: auto-replied\r\n",
                ),
            )
            .await;
        let dave = app
            .apply(
                "bysubject",
                &say("dave@customer.test", "s4@c.test", "Re: Printer on fire", ""),
            )
            .await;
        let sales = app
            .apply(
                "bysubject_sales",
                &say(
                    "carol@customer.test",
                    "s5@c.test",
                    "Re: Printer on fire",
                    "",
                ),
            )
            .await;
        let off = app
            .apply(
                "pipe",
                &say(
                    "carol@customer.test",
                    "s6@c.test",
                    "Re: Printer on fire",
                    "",
                ),
            )
            .await;
        for (what, outcome) in [
            ("automatic", &auto),
            ("other sender", &dave),
            ("other team", &sales),
            ("option off", &off),
        ] {
            assert_ne!(ticket_of(outcome), t1, "{what}: {outcome:?}");
        }

        // Several open tickets with that subject: a new ticket, not a guess.
        app.apply(
            "pipe",
            &say("erin@customer.test", "i1@e.test", "Invoice", ""),
        )
        .await;
        app.apply(
            "pipe",
            &say("erin@customer.test", "i2@e.test", "Invoice", ""),
        )
        .await;
        let ambiguous = app
            .apply(
                "bysubject",
                &say("erin@customer.test", "i3@e.test", "Re: Invoice", ""),
            )
            .await;
        assert!(
            matches!(ambiguous, Outcome::Created { .. }),
            "{ambiguous:?}"
        );

        // Too old, or closed: a new ticket.
        let old = app
            .apply(
                "bysubject",
                &say("fay@customer.test", "o1@f.test", "Old question", ""),
            )
            .await;
        sqlx::query("UPDATE tickets SET updated_at = $1 WHERE id = $2")
            .bind(mailroom::store::now_ms() - 20 * 86_400_000)
            .bind(ticket_of(&old))
            .execute(app.store().pool())
            .await
            .unwrap();
        let late = app
            .apply(
                "bysubject",
                &say("fay@customer.test", "o2@f.test", "Re: Old question", ""),
            )
            .await;
        assert_ne!(ticket_of(&late), ticket_of(&old));
        let done = app
            .apply(
                "bysubject",
                &say("gus@customer.test", "c1@g.test", "Done deal", ""),
            )
            .await;
        let n = number(&app, &done).await;
        assert!(app
            .store()
            .set_ticket_status(n, "closed", "test")
            .await
            .unwrap());
        let reopened = app
            .apply(
                "bysubject",
                &say("gus@customer.test", "c2@g.test", "Re: Done deal", ""),
            )
            .await;
        assert_ne!(ticket_of(&reopened), ticket_of(&done));
    }
);

async fn team_of(app: &TestApp, outcome: Outcome) -> String {
    let n = number(app, &outcome).await;
    app.store()
        .ticket_show(n)
        .await
        .unwrap()
        .unwrap()
        .ticket
        .team
}

/// A message into the `inbox` channel, with the envelope recipient an MTA
/// would pass.
async fn routed(app: &TestApp, data: Vec<u8>, envelope: Option<&str>) -> Outcome {
    let hints = mailroom::pipeline::Hints {
        envelope_to: envelope.map(str::to_string),
        ..Default::default()
    };
    let raw = mailroom::pipeline::RawMessage {
        channel: "inbox".into(),
        source: None,
        data: std::sync::Arc::new(data),
    };
    let prepared = app
        .pipeline
        .prepare_with(vec![(raw, hints)], mailroom::pipeline::OnBadInput::Refuse)
        .await
        .unwrap();
    match app.pipeline.commit(prepared).await.unwrap().remove(0) {
        Disposition::Applied(outcome) => outcome,
        other => panic!("{other:?}"),
    }
}

both_backends!(
    a_shared_inbox_routes_each_message_to_the_team_it_was_sent_to,
    |backend| async move {
        let extra = "[channels.inbox]\nkind = \"pipe\"\nteam = \"support\"\npipeline = \"support\"\nroute = \"recipient\"\n";
        let app = TestApp::with_config(backend, extra).await;
        let raw = |id: &str, to: &str, headers: &str| {
            format!(
                "From: pat@customer.test\r\nTo: {to}\r\nSubject: Routing {id}\r\nMessage-ID: <{id}@p.test>\r\n{headers}\r\nhello\r\n"
            )
            .into_bytes()
        };
        // A Google Workspace / Microsoft 365 forward of sales@ into the inbox.
        let forwarded = routed(
            &app,
            raw(
                "f1",
                "someone@partner.test",
                "X-Forwarded-To: sales@example.com\r\n",
            ),
            None,
        )
        .await;
        assert_eq!(team_of(&app, forwarded).await, "sales");
        // An alias: the list address is no team's, Delivered-To says which.
        let alias = routed(
            &app,
            raw(
                "a1",
                "all@lists.example.org",
                "Delivered-To: SALES@example.com\r\n",
            ),
            None,
        )
        .await;
        assert_eq!(team_of(&app, alias).await, "sales");
        // Addressed to two teams: To before Cc.
        let both = routed(
            &app,
            raw("b1", "support@example.com", "Cc: sales@example.com\r\n"),
            None,
        )
        .await;
        assert_eq!(team_of(&app, both).await, "support");
        // The envelope recipient (the MTA's) comes first.
        let envelope = routed(
            &app,
            raw("e1", "support@example.com", ""),
            Some("<sales@example.com>"),
        )
        .await;
        assert_eq!(team_of(&app, envelope).await, "sales");
        // No team address anywhere: the channel's team.
        let none = routed(&app, raw("n1", "someone@else.test", ""), None).await;
        assert_eq!(team_of(&app, none).await, "support");
    }
);
