//! The help-desk API over real HTTP, on SQLite and PostgreSQL: access (404
//! for another team's ticket, 403 for admin actions), tickets by hand,
//! status rules, assign/follow/move, merge, comments and mentions, drafts,
//! delete/restore/purge, blocked senders, snippets in a sent reply,
//! contacts and companies, the list's filters and cursor, and the OpenAPI
//! document against the routes served.

use std::time::Duration;

use mail_parser::MessageParser;
use serde_json::{json, Value};

use crate::harness::*;
use crate::outbound::OutApp;
use crate::smtp::SmtpSink;
use mailroom::pipeline::Disposition;

const ALICE: &str = "alice-token-0123456789"; // agent, support
const BOB: &str = "bob-token-0123456789"; // admin, support
const SAM: &str = "sam-token-0123456789"; // agent, sales
const CAROL: &str = "carol-token-0123456789"; // agent, support and sales

const EXTRA: &str = r#"
[agents.carol]
email = "carol@example.com"
name = "Carol Colleague"
teams = ["support", "sales"]
api_token = "carol-token-0123456789"
"#;

async fn start(backend: Backend, sink: &SmtpSink) -> OutApp {
    OutApp::start_with(backend, sink.port, EXTRA).await
}

async fn call(
    app: &OutApp,
    method: &'static str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    app.api(method, path, token, &[], body).await
}

/// A ticket made by hand through the API; returns its number.
async fn manual_ticket(app: &OutApp, token: &str, body: Value) -> i64 {
    let (status, ticket) = call(app, "POST", "/api/v1/tickets", token, Some(body)).await;
    assert_eq!(status, 201, "{ticket}");
    ticket["number"].as_i64().unwrap()
}

fn customer(from: &str, id: &str, subject: &str, headers: &str) -> Vec<u8> {
    mail(from, id, subject, headers, "Hello, it is broken.")
}

crate::both_backends!(
    another_teams_ticket_is_missing_and_admin_actions_are_forbidden,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = start(backend, &sink).await;
        let number = app
            .customer_mail(&customer(
                "Ann <ann@customer.test>",
                "a1@customer.test",
                "Broken",
                "",
            ))
            .await;
        // Sam works in sales: the support ticket does not exist for him.
        for (method, path, body) in [
            ("GET", format!("/api/v1/tickets/{number}"), None),
            ("GET", format!("/api/v1/tickets/{number}/events"), None),
            ("GET", format!("/api/v1/tickets/{number}/comments"), None),
            (
                "POST",
                format!("/api/v1/tickets/{number}/comments"),
                Some(json!({"body": "hi"})),
            ),
            (
                "PUT",
                format!("/api/v1/tickets/{number}/draft"),
                Some(json!({"body": "hi"})),
            ),
            (
                "PUT",
                format!("/api/v1/tickets/{number}/owner"),
                Some(json!({"owner": "me"})),
            ),
            (
                "PUT",
                format!("/api/v1/tickets/{number}/status"),
                Some(json!({"status": "closed"})),
            ),
            ("DELETE", format!("/api/v1/tickets/{number}"), None),
        ] {
            let (status, answer) = call(&app, method, &path, SAM, body).await;
            assert_eq!(status, 404, "{method} {path}: {answer}");
            assert_eq!(answer["error"], format!("ticket #{number} does not exist"));
        }
        let (_, list) = call(&app, "GET", "/api/v1/tickets", SAM, None).await;
        assert_eq!(list["tickets"], json!([]));
        // A missing ticket answers the same.
        let (status, _) = call(&app, "GET", "/api/v1/tickets/999", SAM, None).await;
        assert_eq!(status, 404);

        // Alice is an agent: admin actions are refused with 403.
        let forbidden = [
            (
                "POST",
                "/api/v1/blocked-senders".to_string(),
                Some(json!({"value": "spam.test"})),
            ),
            ("GET", "/api/v1/blocked-senders".to_string(), None),
            ("GET", "/api/v1/quarantine".to_string(), None),
            ("GET", "/api/v1/tickets?deleted=true".to_string(), None),
            (
                "POST",
                "/api/v1/snippets".to_string(),
                Some(json!({"name": "shared", "body": "x"})),
            ),
            (
                "POST",
                "/api/v1/snippets".to_string(),
                Some(json!({"team": "sales", "name": "s", "body": "x"})),
            ),
            (
                "PUT",
                "/api/v1/teams/support/default-address".to_string(),
                Some(json!({"address": "help@example.org"})),
            ),
        ];
        for (method, path, body) in forbidden {
            let (status, answer) = call(&app, method, &path, ALICE, body).await;
            assert_eq!(status, 403, "{method} {path}: {answer}");
        }
        let (status, _) = call(
            &app,
            "DELETE",
            &format!("/api/v1/tickets/{number}"),
            ALICE,
            None,
        )
        .await;
        assert_eq!(status, 204);
        let (status, answer) = call(
            &app,
            "POST",
            &format!("/api/v1/tickets/{number}/restore"),
            ALICE,
            None,
        )
        .await;
        assert_eq!(status, 403, "{answer}");
        let (status, _) = call(
            &app,
            "DELETE",
            &format!("/api/v1/tickets/{number}?purge=true"),
            ALICE,
            None,
        )
        .await;
        assert_eq!(status, 403);
        // No token, or a wrong one: 401.
        let (status, _) = call(&app, "GET", "/api/v1/tickets", "nope", None).await;
        assert_eq!(status, 401);
    }
);

crate::both_backends!(
    manual_ticket_gets_a_contact_then_its_first_reply_starts_the_thread,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = start(backend, &sink).await;
        // Status checks: it must be in the pipeline and its properties set.
        let body = json!({"subject": "Call back Dana", "pipeline": "support", "status": "solved"});
        let (status, answer) = call(&app, "POST", "/api/v1/tickets", ALICE, Some(body)).await;
        assert_eq!(status, 422, "{answer}");
        assert_eq!(answer["field"], "properties");
        assert!(
            answer["error"].as_str().unwrap().contains("resolution"),
            "{answer}"
        );
        let body = json!({"subject": "x", "pipeline": "support", "status": "nope"});
        let (status, answer) = call(&app, "POST", "/api/v1/tickets", ALICE, Some(body)).await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (422, Some("status")),
            "{answer}"
        );
        let body = json!({"subject": "x", "pipeline": "support", "status": "open", "bogus": 1});
        let (status, _) = call(&app, "POST", "/api/v1/tickets", ALICE, Some(body)).await;
        assert_eq!(status, 422);

        let number = manual_ticket(&app, ALICE, json!({"name": "Call back Dana", "pipeline": "support", "status": "open", "properties": {"priority": "high"}})).await;
        let (_, ticket) = call(
            &app,
            "GET",
            &format!("/api/v1/tickets/{number}"),
            ALICE,
            None,
        )
        .await;
        assert_eq!(ticket["subject"], "Call back Dana");
        assert_eq!(ticket["team"], "support");
        assert_eq!(ticket["contacts"], json!([]));
        assert_eq!(ticket["properties"]["priority"], "high");
        assert_eq!(ticket["events"][0]["kind"], "created");
        assert_eq!(ticket["events"][0]["actor"], "agent:alice");

        // No contact: no conversation yet.
        let (status, answer) = app
            .reply(number, ALICE, json!({"body": "Hello Dana"}))
            .await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (422, Some("to")),
            "{answer}"
        );
        let path = format!("/api/v1/tickets/{number}/participants");
        let (status, _) = call(
            &app,
            "POST",
            &path,
            ALICE,
            Some(json!({"address": "Dana <dana@customer.test>"})),
        )
        .await;
        assert_eq!(status, 201);
        let (status, queued) = app
            .reply(number, ALICE, json!({"body": "Hello Dana, as promised."}))
            .await;
        assert_eq!(status, 202, "{queued}");
        assert_eq!(app.flush().await, 1);
        let got = sink.wait_for(1, Duration::from_secs(10)).await;
        assert_eq!(got[0].rcpt_to, vec!["dana@customer.test"]);
        let sent = MessageParser::default().parse(&got[0].message).unwrap();
        assert!(
            sent.in_reply_to().is_empty(),
            "the first message of a thread answers nothing"
        );
        let our_id = sent.message_id().unwrap().to_string();

        // Dana's answer threads back onto the manual ticket.
        let answer = customer(
            "Dana <dana@customer.test>",
            "d1@customer.test",
            "Re: Call back Dana",
            &format!("In-Reply-To: <{our_id}>\r\n"),
        );
        assert_eq!(app.customer_mail(&answer).await, number);
    }
);

crate::both_backends!(
    status_owner_follow_move_and_the_timeline,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = start(backend, &sink).await;
        let number = app
            .customer_mail(&customer(
                "Ann <ann@customer.test>",
                "a1@customer.test",
                "Broken",
                "",
            ))
            .await;
        let t = |suffix: &str| format!("/api/v1/tickets/{number}{suffix}");

        let (status, answer) = call(
            &app,
            "PUT",
            &t("/status"),
            ALICE,
            Some(json!({"status": "solved"})),
        )
        .await;
        assert_eq!(status, 422, "{answer}");
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("requires resolution"),
            "{answer}"
        );
        let body = json!({"status": "solved", "properties": {"resolution": "replaced toner"}});
        let (status, ticket) = call(&app, "PUT", &t("/status"), ALICE, Some(body)).await;
        assert_eq!(status, 200, "{ticket}");
        assert_eq!(ticket["status"], "solved");
        assert_eq!(ticket["properties"]["resolution"], "replaced toner");
        // Removing a property the status requires is refused.
        let (status, _) = call(
            &app,
            "PATCH",
            &t(""),
            ALICE,
            Some(json!({"properties": {"resolution": null}})),
        )
        .await;
        assert_eq!(status, 422);
        let (status, ticket) = call(
            &app,
            "PATCH",
            &t(""),
            ALICE,
            Some(json!({"subject": "Toner broken", "properties": {"model": "X1"}})),
        )
        .await;
        assert_eq!(status, 200, "{ticket}");
        assert_eq!(
            (
                ticket["subject"].as_str(),
                ticket["properties"]["model"].as_str()
            ),
            (Some("Toner broken"), Some("X1"))
        );

        let (status, answer) = call(
            &app,
            "PUT",
            &t("/owner"),
            ALICE,
            Some(json!({"owner": "sam"})),
        )
        .await;
        assert_eq!(
            (status, answer["field"].as_str()),
            (422, Some("owner")),
            "sam is not in support: {answer}"
        );
        let (_, ticket) = call(
            &app,
            "PUT",
            &t("/owner"),
            ALICE,
            Some(json!({"owner": "bob"})),
        )
        .await;
        assert_eq!(ticket["owner"], "bob");
        let (_, list) = call(&app, "GET", "/api/v1/tickets?owner=bob", ALICE, None).await;
        assert_eq!(list["tickets"][0]["number"], number);
        let (_, list) = call(&app, "GET", "/api/v1/tickets?owner=none", ALICE, None).await;
        assert_eq!(list["tickets"], json!([]));
        let (_, ticket) = call(&app, "PUT", &t("/follow"), ALICE, None).await;
        assert_eq!(ticket["followers"], json!(["alice"]));
        let (_, ticket) = call(&app, "DELETE", &t("/follow"), ALICE, None).await;
        assert_eq!(ticket["followers"], json!([]));

        // Alice does not work in sales; Carol does. Bob owns it but is not in
        // sales, so the move unassigns him.
        let (status, _) = call(
            &app,
            "POST",
            &t("/move"),
            ALICE,
            Some(json!({"team": "sales"})),
        )
        .await;
        assert_eq!(status, 422);
        let (status, ticket) = call(
            &app,
            "POST",
            &t("/move"),
            CAROL,
            Some(json!({"team": "sales", "status": "open"})),
        )
        .await;
        assert_eq!(status, 200, "{ticket}");
        assert_eq!(
            (ticket["team"].as_str(), ticket["owner"].as_str()),
            (Some("sales"), None)
        );
        let (status, _) = call(&app, "GET", &t(""), ALICE, None).await;
        assert_eq!(status, 404, "moved out of Alice's teams");

        let (_, events) = call(&app, "GET", &t("/events"), SAM, None).await;
        let kinds: Vec<(&str, &str)> = events
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["kind"].as_str().unwrap(),
                    e["actor"].as_str().unwrap_or(""),
                )
            })
            .collect();
        for expected in [
            ("status_changed", "agent:alice"),
            ("properties_changed", "agent:alice"),
            ("subject_changed", "agent:alice"),
            ("assigned", "agent:alice"),
            ("followed", "agent:alice"),
            ("unfollowed", "agent:alice"),
            ("moved", "agent:carol"),
            ("unassigned", "agent:carol"),
        ] {
            assert!(
                kinds.contains(&expected),
                "{expected:?} missing from {kinds:?}"
            );
        }
        assert!(events
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["created_at"].as_i64().unwrap() > 0));
    }
);

crate::both_backends!(
    merged_ticket_points_to_the_survivor_and_its_mail_lands_there,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = start(backend, &sink).await;
        let first = app
            .customer_mail(&customer(
                "Ann <ann@customer.test>",
                "a1@customer.test",
                "Broken",
                "",
            ))
            .await;
        let second = app
            .customer_mail(&customer(
                "Ann <ann@customer.test>",
                "a2@customer.test",
                "Still broken",
                "",
            ))
            .await;
        let follow = format!("/api/v1/tickets/{second}/follow");
        call(&app, "PUT", &follow, ALICE, None).await;
        let comment = json!({"body": "customer called twice"});
        call(
            &app,
            "POST",
            &format!("/api/v1/tickets/{second}/comments"),
            ALICE,
            Some(comment),
        )
        .await;
        let (status, merged) = call(
            &app,
            "POST",
            &format!("/api/v1/tickets/{second}/merge"),
            ALICE,
            Some(json!({"into": first})),
        )
        .await;
        assert_eq!(status, 200, "{merged}");
        let (_, view) = call(
            &app,
            "GET",
            &format!("/api/v1/tickets/{second}"),
            ALICE,
            None,
        )
        .await;
        assert_eq!(view["merged_into"], first);
        // Its messages, followers and comments are the survivor's now.
        let (_, survivor) = call(
            &app,
            "GET",
            &format!("/api/v1/tickets/{first}"),
            ALICE,
            None,
        )
        .await;
        let ids: Vec<&str> = survivor["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["message_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a1@customer.test", "a2@customer.test"]);
        assert_eq!(survivor["followers"], json!(["alice"]));
        assert_eq!(survivor["comments"][0]["body"], "customer called twice");
        // Merged tickets leave the list; the survivor stays.
        let (_, list) = call(&app, "GET", "/api/v1/tickets", ALICE, None).await;
        let numbers: Vec<i64> = list["tickets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["number"].as_i64().unwrap())
            .collect();
        assert_eq!(numbers, vec![first]);
        // Mail answering the merged ticket's message lands on the survivor.
        let answer = customer(
            "Ann <ann@customer.test>",
            "a3@customer.test",
            "Re: Still broken",
            "In-Reply-To: <a2@customer.test>\r\n",
        );
        assert_eq!(app.customer_mail(&answer).await, first);
        // Changes to the merged ticket go to the survivor.
        let (_, ticket) = call(
            &app,
            "PUT",
            &format!("/api/v1/tickets/{second}/owner"),
            ALICE,
            Some(json!({"owner": "me"})),
        )
        .await;
        assert_eq!(
            (ticket["number"].as_i64(), ticket["owner"].as_str()),
            (Some(first), Some("alice"))
        );
    }
);

crate::both_backends!(
    comment_mentions_notify_each_agent_once_and_never_reach_the_customer,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = start(backend, &sink).await;
        let number = app
            .customer_mail(&customer(
                "Ann <ann@customer.test>",
                "a1@customer.test",
                "Broken",
                "",
            ))
            .await;
        let path = format!("/api/v1/tickets/{number}/comments");
        let body = json!({"body": "@bob can you look? @bob@example.com knows the SECRET-PLAN. Also @Carol and @sam and @alice."});
        let (status, commented) = call(&app, "POST", &path, ALICE, Some(body)).await;
        assert_eq!(status, 201, "{commented}");
        // Bob (three times), Carol by first name; Sam is not in support; Alice wrote it.
        assert_eq!(commented["mentioned"], json!(["bob", "carol"]));

        let (_, bobs) = call(&app, "GET", "/api/v1/notifications", BOB, None).await;
        let bobs = bobs.as_array().unwrap().clone();
        assert_eq!(bobs.len(), 1, "{bobs:?}");
        assert_eq!(bobs[0]["kind"], "mention");
        assert_eq!(bobs[0]["ticket"], number);
        assert_eq!(bobs[0]["link"], format!("/api/v1/tickets/{number}"));
        assert_eq!(bobs[0]["actor"], "agent:alice");
        for token in [ALICE, SAM] {
            let (_, none) = call(&app, "GET", "/api/v1/notifications", token, None).await;
            assert_eq!(none, json!([]));
        }
        let id = bobs[0]["id"].as_i64().unwrap();
        let (status, _) = call(
            &app,
            "POST",
            &format!("/api/v1/notifications/{id}/read"),
            ALICE,
            None,
        )
        .await;
        assert_eq!(status, 404, "not Alice's");
        let (status, _) = call(
            &app,
            "POST",
            &format!("/api/v1/notifications/{id}/read"),
            BOB,
            None,
        )
        .await;
        assert_eq!(status, 204);
        let (_, unread) = call(&app, "GET", "/api/v1/notifications", BOB, None).await;
        assert_eq!(unread, json!([]));
        let (_, all) = call(&app, "GET", "/api/v1/notifications?all=true", BOB, None).await;
        assert!(all[0]["read_at"].as_i64().is_some());

        let (_, comments) = call(&app, "GET", &path, BOB, None).await;
        assert_eq!(comments[0]["author"], "agent:alice");
        // A reply afterwards carries nothing of the comment.
        let (status, _) = app
            .reply(number, BOB, json!({"body": "We are on it."}))
            .await;
        assert_eq!(status, 202);
        app.flush().await;
        let got = sink.wait_for(1, Duration::from_secs(10)).await;
        assert!(!String::from_utf8_lossy(&got[0].message).contains("SECRET-PLAN"));
    }
);

crate::both_backends!(
    draft_is_private_idempotent_and_gone_after_the_reply,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = start(backend, &sink).await;
        let number = app
            .customer_mail(&customer(
                "Ann <ann@customer.test>",
                "a1@customer.test",
                "Broken",
                "",
            ))
            .await;
        let path = format!("/api/v1/tickets/{number}/draft");
        let draft = json!({"body": "Dear Ann, draft one", "cc": ["boss@customer.test"]});
        let (status, _) = call(&app, "PUT", &path, ALICE, Some(draft.clone())).await;
        assert_eq!(status, 201);
        let (status, _) = call(&app, "PUT", &path, ALICE, Some(draft.clone())).await;
        assert_eq!(status, 204, "the same PUT again only replaces it");
        let (status, _) = call(
            &app,
            "PUT",
            &path,
            ALICE,
            Some(json!({"body": "Dear Ann, final", "nonsense": 1})),
        )
        .await;
        assert_eq!(status, 422);
        let (status, mine) = call(&app, "GET", &path, ALICE, None).await;
        assert_eq!(status, 200);
        assert_eq!(mine["content"]["body"], "Dear Ann, draft one");
        assert_eq!(mine["content"]["cc"], json!(["boss@customer.test"]));
        // Bob sees no draft of Alice's, and keeps his own.
        let (status, _) = call(&app, "GET", &path, BOB, None).await;
        assert_eq!(status, 404);
        let (_, bobs) = call(&app, "GET", "/api/v1/drafts", BOB, None).await;
        assert_eq!(bobs, json!([]));
        let (status, _) = call(&app, "PUT", &path, BOB, Some(json!({"body": "Bob's note"}))).await;
        assert_eq!(status, 201);
        let (_, list) = call(&app, "GET", "/api/v1/drafts", ALICE, None).await;
        assert_eq!(list.as_array().unwrap().len(), 1);
        assert_eq!(list[0]["ticket"], number);

        let (status, _) = app
            .reply(number, ALICE, json!({"body": "Dear Ann, final"}))
            .await;
        assert_eq!(status, 202);
        let (status, _) = call(&app, "GET", &path, ALICE, None).await;
        assert_eq!(status, 404, "the reply took the draft away");
        let (_, list) = call(&app, "GET", "/api/v1/drafts", ALICE, None).await;
        assert_eq!(list, json!([]));
        let (status, _) = call(&app, "GET", &path, BOB, None).await;
        assert_eq!(status, 200, "only Alice's draft went");
        let (status, _) = call(&app, "DELETE", &path, BOB, None).await;
        assert_eq!(status, 204);
    }
);

crate::both_backends!(
    deleted_ticket_is_hidden_restored_and_purged,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = start(backend, &sink).await;
        let raw = customer("Ann <ann@customer.test>", "a1@customer.test", "Broken", "");
        let number = app.customer_mail(&raw).await;
        let t = format!("/api/v1/tickets/{number}");
        let (status, _) = call(&app, "DELETE", &t, ALICE, None).await;
        assert_eq!(status, 204);
        let (_, list) = call(&app, "GET", "/api/v1/tickets", ALICE, None).await;
        assert_eq!(list["tickets"], json!([]));
        let (status, answer) = call(&app, "GET", &t, ALICE, None).await;
        assert_eq!(
            (status, answer["error"].as_str()),
            (404, Some(format!("ticket #{number} was deleted").as_str()))
        );
        let (_, deleted) = call(&app, "GET", "/api/v1/tickets?deleted=true", BOB, None).await;
        assert_eq!(deleted["tickets"][0]["number"], number);
        let (status, restored) = call(&app, "POST", &format!("{t}/restore"), BOB, None).await;
        assert_eq!(status, 200, "{restored}");
        let kinds: Vec<&str> = restored["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["kind"].as_str().unwrap())
            .collect();
        assert!(kinds.ends_with(&["deleted", "restored"]), "{kinds:?}");
        let (_, list) = call(&app, "GET", "/api/v1/tickets", ALICE, None).await;
        assert_eq!(list["tickets"][0]["number"], number);

        // Purged: gone for good, and the same mail delivered again stays a
        // duplicate instead of coming back.
        let (status, _) = call(&app, "DELETE", &format!("{t}?purge=true"), BOB, None).await;
        assert_eq!(status, 204);
        let (status, _) = call(&app, "GET", &t, BOB, None).await;
        assert_eq!(status, 404);
        let again = app.pipeline_apply("pipe", &raw).await;
        assert_eq!(again.name(), "duplicate");
        assert_eq!(app.store().counts().await.unwrap().tickets, 0);
    }
);

crate::both_backends!(
    blocked_domain_is_kept_out_of_tickets_and_released,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = start(backend, &sink).await;
        let body = json!({"value": "@Spam.Example", "reason": "phishing"});
        let (status, block) = call(
            &app,
            "POST",
            "/api/v1/blocked-senders",
            BOB,
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, 201, "{block}");
        assert_eq!(
            (block["value"].as_str(), block["kind"].as_str()),
            (Some("spam.example"), Some("domain"))
        );
        let (status, _) = call(&app, "POST", "/api/v1/blocked-senders", BOB, Some(body)).await;
        assert_eq!(status, 200);
        let (status, _) = call(
            &app,
            "POST",
            "/api/v1/blocked-senders",
            BOB,
            Some(json!({"value": "not a domain"})),
        )
        .await;
        assert_eq!(status, 422);

        let raw = customer("Win <prize@spam.example>", "s1@spam.example", "You won", "");
        let quarantined = match feed_with(&app.pipeline, "pipe", &raw).await {
            Disposition::Quarantined { id, reason } => {
                assert!(
                    reason.contains("blocked sender: prize@spam.example"),
                    "{reason}"
                );
                assert!(reason.contains("agent:bob"), "{reason}");
                id
            }
            other => panic!("expected the quarantine, got {other:?}"),
        };
        // Others still get through.
        app.customer_mail(&customer(
            "Ann <ann@customer.test>",
            "a1@customer.test",
            "Broken",
            "",
        ))
        .await;
        assert_eq!(app.store().counts().await.unwrap().tickets, 1);
        let (_, entries) = call(&app, "GET", "/api/v1/quarantine", BOB, None).await;
        assert_eq!(entries.as_array().unwrap().len(), 1);
        assert!(entries[0]["reason"].as_str().unwrap().contains("blocked"));

        let (status, released) = call(
            &app,
            "POST",
            &format!("/api/v1/quarantine/{quarantined}/release"),
            BOB,
            None,
        )
        .await;
        assert_eq!(status, 200, "{released}");
        assert_eq!(released["result"]["result"], "applied");
        assert_eq!(released["result"]["outcome"], "created");
        assert_eq!(app.store().counts().await.unwrap().tickets, 2);
        let (_, entries) = call(&app, "GET", "/api/v1/quarantine", BOB, None).await;
        assert_eq!(entries, json!([]));

        let (status, _) = call(
            &app,
            "DELETE",
            "/api/v1/blocked-senders/spam.example",
            BOB,
            None,
        )
        .await;
        assert_eq!(status, 204);
        let raw = customer(
            "Win <prize@spam.example>",
            "s2@spam.example",
            "You won again",
            "",
        );
        assert!(matches!(
            feed_with(&app.pipeline, "pipe", &raw).await,
            Disposition::Applied(_)
        ));
    }
);

crate::both_backends!(
    snippet_is_rendered_into_the_sent_reply,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = start(backend, &sink).await;
        let number = app
            .customer_mail(&customer(
                "Ann Archer <ann@customer.test>",
                "a1@customer.test",
                "Broken",
                "",
            ))
            .await;
        let bad = json!({"team": "support", "name": "greet", "body": "Hi {{contact.shoe_size}}"});
        let (status, answer) = call(&app, "POST", "/api/v1/snippets", ALICE, Some(bad)).await;
        assert_eq!(status, 422);
        assert!(
            answer["error"]
                .as_str()
                .unwrap()
                .contains("contact.shoe_size"),
            "{answer}"
        );
        let body = json!({"team": "support", "name": "greet", "body": "Hi {{contact.first_name}}, about #{{ticket.number}}.\n-- {{agent.name}}"});
        let (status, snippet) =
            call(&app, "POST", "/api/v1/snippets", ALICE, Some(body.clone())).await;
        assert_eq!(status, 201, "{snippet}");
        let (status, _) = call(&app, "POST", "/api/v1/snippets", ALICE, Some(body)).await;
        assert_eq!(status, 422, "one name per team");
        let shared = json!({"name": "bye", "body": "Kind regards, {{team.name}}"});
        let (status, bye) = call(&app, "POST", "/api/v1/snippets", BOB, Some(shared)).await;
        assert_eq!(status, 201, "{bye}");
        let (_, sams) = call(&app, "GET", "/api/v1/snippets", SAM, None).await;
        assert_eq!(
            sams.as_array().unwrap().len(),
            1,
            "sales sees the shared one only: {sams}"
        );

        let ids = json!([snippet["id"], bye["id"]]);
        let (status, queued) = app
            .reply(
                number,
                ALICE,
                json!({"body": "Thanks for writing.", "snippets": ids}),
            )
            .await;
        assert_eq!(status, 202, "{queued}");
        app.flush().await;
        let got = sink.wait_for(1, Duration::from_secs(10)).await;
        let sent = MessageParser::default().parse(&got[0].message).unwrap();
        let text = sent.body_text(0).unwrap().to_string();
        let expected = format!("Thanks for writing.\n\nHi Ann, about #{number}.\n-- Alice Agent\n\nKind regards, support");
        assert!(
            text.replace("\r\n", "\n").starts_with(&expected),
            "{text:?}"
        );
        let (_, ticket) = call(
            &app,
            "GET",
            &format!("/api/v1/tickets/{number}"),
            ALICE,
            None,
        )
        .await;
        let stored = ticket["messages"][1]["body_text"].as_str().unwrap();
        assert!(stored.starts_with(&expected), "{stored:?}");
        // Sam cannot insert a support snippet.
        let (status, _) = app
            .reply(
                number,
                SAM,
                json!({"body": "x", "snippets": [snippet["id"]]}),
            )
            .await;
        assert_eq!(status, 404);
    }
);

crate::both_backends!(
    companies_visitors_and_contact_merges,
    |backend| async move {
        let sink = SmtpSink::start(&[]);
        let app = start(backend, &sink).await;
        let body = json!({"name": "Customer Inc", "domains": ["Customer.test"]});
        let (status, company) = call(&app, "POST", "/api/v1/companies", ALICE, Some(body)).await;
        assert_eq!(status, 201, "{company}");
        assert_eq!(company["domains"], json!(["customer.test"]));
        let company_id = company["id"].as_i64().unwrap();
        let (status, _) = call(
            &app,
            "POST",
            "/api/v1/companies",
            ALICE,
            Some(json!({"name": "Other", "domains": ["customer.test"]})),
        )
        .await;
        assert_eq!(status, 422, "a domain belongs to one company");

        let first = app
            .customer_mail(&customer(
                "Ann <ann@customer.test>",
                "a1@customer.test",
                "Broken",
                "",
            ))
            .await;
        let other = app
            .customer_mail(&customer(
                "Ann <ann.home@mail.test>",
                "h1@mail.test",
                "From home",
                "",
            ))
            .await;
        let (_, list) = call(
            &app,
            "GET",
            &format!("/api/v1/tickets?company={company_id}"),
            ALICE,
            None,
        )
        .await;
        let numbers: Vec<i64> = list["tickets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["number"].as_i64().unwrap())
            .collect();
        assert_eq!(numbers, vec![first]);

        let (_, visitors) = call(
            &app,
            "GET",
            "/api/v1/contacts?kind=visitor&q=ann",
            ALICE,
            None,
        )
        .await;
        let visitors = visitors["contacts"].as_array().unwrap().clone();
        assert_eq!(visitors.len(), 2, "{visitors:?}");
        let office = visitors
            .iter()
            .find(|c| c["email"] == "ann@customer.test")
            .unwrap();
        let home = visitors
            .iter()
            .find(|c| c["email"] == "ann.home@mail.test")
            .unwrap();
        assert_eq!(office["company_id"], company_id);
        let (office, home) = (office["id"].as_i64().unwrap(), home["id"].as_i64().unwrap());

        let (status, made) = call(
            &app,
            "PATCH",
            &format!("/api/v1/contacts/{office}"),
            ALICE,
            Some(json!({"kind": "contact", "name": "Ann Archer"})),
        )
        .await;
        assert_eq!(status, 200, "{made}");
        assert_eq!(made["kind"], "contact");
        // The home address is Ann's too: attach it.
        let (status, merged) = call(
            &app,
            "POST",
            &format!("/api/v1/contacts/{home}/merge"),
            ALICE,
            Some(json!({"into": office})),
        )
        .await;
        assert_eq!(status, 200, "{merged}");
        let tickets: Vec<i64> = merged["tickets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["number"].as_i64().unwrap())
            .collect();
        assert_eq!(tickets.len(), 2, "{merged}");
        assert!(tickets.contains(&other));
        let (_, home_view) = call(
            &app,
            "GET",
            &format!("/api/v1/contacts/{home}"),
            ALICE,
            None,
        )
        .await;
        assert_eq!(home_view["merged_into"], office);
        // Later mail from the home address counts for Ann.
        let later = app
            .customer_mail(&customer(
                "Ann <ann.home@mail.test>",
                "h2@mail.test",
                "New question",
                "",
            ))
            .await;
        let (_, list) = call(
            &app,
            "GET",
            &format!("/api/v1/tickets?contact={office}"),
            ALICE,
            None,
        )
        .await;
        assert!(
            list["tickets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["number"] == later),
            "{list}"
        );

        let (status, created) = call(
            &app,
            "POST",
            "/api/v1/contacts",
            ALICE,
            Some(json!({"email": "Dee@Customer.test", "name": "Dee"})),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(
            (created["email"].as_str(), created["company_id"].as_i64()),
            (Some("dee@customer.test"), Some(company_id))
        );
        let (status, _) = call(
            &app,
            "POST",
            "/api/v1/contacts",
            ALICE,
            Some(json!({"email": "dee@customer.test"})),
        )
        .await;
        assert_eq!(status, 200);
    }
);

crate::both_backends!(ticket_list_filters_and_cursor, |backend| async move {
    let sink = SmtpSink::start(&[]);
    let app = start(backend, &sink).await;
    for (i, subject) in [
        "Printer 100% broken",
        "Printer jam",
        "Login fails",
        "Invoice_2026",
        "Printer again",
    ]
    .iter()
    .enumerate()
    {
        manual_ticket(&app, ALICE, json!({"subject": subject, "pipeline": "support", "status": if i == 2 { "closed" } else { "open" }})).await;
    }
    manual_ticket(
        &app,
        SAM,
        json!({"subject": "Printer for sales", "pipeline": "support", "status": "open"}),
    )
    .await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..4 {
        let path = match &cursor {
            Some(c) => format!("/api/v1/tickets?limit=2&cursor={c}"),
            None => "/api/v1/tickets?limit=2".to_string(),
        };
        let (status, page) = call(&app, "GET", &path, ALICE, None).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["tickets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["number"].as_i64().unwrap()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec![5, 4, 3, 2, 1],
        "newest first, each once, sales's ticket not listed"
    );
    let q = |query: &'static str| {
        let app = &app;
        async move {
            let (status, page) =
                call(app, "GET", &format!("/api/v1/tickets?{query}"), ALICE, None).await;
            assert_eq!(status, 200, "{query}: {page}");
            page["tickets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["number"].as_i64().unwrap())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(q("q=PRINTER").await, vec![5, 2, 1]);
    assert_eq!(q("q=100%25").await, vec![1], "% is literal");
    assert_eq!(q("q=e_2").await, vec![4], "_ is literal");
    assert_eq!(q("status=closed").await, vec![3]);
    assert_eq!(q("status=open&q=jam").await, vec![2]);
    assert_eq!(q("team=sales").await, Vec::<i64>::new());
    assert_eq!(q("updated_since=99999999999999").await, Vec::<i64>::new());
    let (status, _) = call(&app, "GET", "/api/v1/tickets?limit=0", ALICE, None).await;
    assert_eq!(status, 422);
    let (status, _) = call(&app, "GET", "/api/v1/tickets?cursor=garbage", ALICE, None).await;
    assert_eq!(status, 422);
    let (status, _) = call(&app, "GET", "/api/v1/tickets?limit=x", ALICE, None).await;
    assert_eq!(status, 400);
});

/// Every path and method of the OpenAPI document is served (401 without a
/// token, never 404 or 405), and the methods it leaves out are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes_served() {
    let sink = SmtpSink::start(&[]);
    let app = start(Backend::Sqlite, &sink).await;
    let (status, doc) = call(&app, "GET", "/api/v1/openapi.json", "", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 29, "{}", paths.len());
    let mut checked = 0;
    for (path, item) in paths {
        let concrete = path
            .replace("{number}", "1")
            .replace("{id}", "1")
            .replace("{team}", "support")
            .replace("{value}", "spam.test");
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let documented = item.get(method.to_lowercase()).is_some();
            let url = format!("{}{concrete}", app.base);
            let status = tokio::task::spawn_blocking(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .build()
                    .into();
                let response = match method {
                    "GET" => agent.get(&url).call(),
                    "DELETE" => agent.delete(&url).call(),
                    "POST" => agent.post(&url).send("{}"),
                    "PUT" => agent.put(&url).send("{}"),
                    _ => agent.patch(&url).send("{}"),
                };
                response.unwrap().status().as_u16()
            })
            .await
            .unwrap();
            match documented {
                true => assert_eq!(
                    status, 401,
                    "{method} {path} is documented but answers {status}"
                ),
                false => assert_eq!(
                    status, 405,
                    "{method} {path} is served but not documented ({status})"
                ),
            }
            checked += 1;
        }
    }
    assert!(checked >= 145);
}
