//! The review routes: `PATCH /v1/items/{id}` (relabel, or keep the label) and
//! `POST /v1/duplicates/{group}/dismiss`, with the reports they change. Auth, 400s and the
//! 404/409 rules run on the fake backend; the whole flow runs on the real engine (the towers and
//! a small demo catalogue), where the next reports, the engine's own included, must show it.
#![allow(clippy::unwrap_used)]

mod engine_support;
mod support;

use actix_web::test::{self, TestRequest};
use engine_support::engine_catalogue;
use serde_json::{json, Value};
use support::{b64, bearer, json_of, keyed, post_json, FakeBackend};
use trio_engine::catalog::{DuplicatesOutcome, Space};
use trio_engine::quality::duplicates::DuplicateOptions;
use trio_engine::NoProgress;
use trio_server::ServerConfig;

fn patch(id: &str, body: Value) -> TestRequest {
    TestRequest::patch()
        .uri(&format!("/v1/items/{id}"))
        .insert_header(bearer())
        .set_json(body)
}

fn dismiss(path: &str) -> TestRequest {
    TestRequest::post().uri(path).insert_header(bearer())
}

/// The group holding item `id` in a served duplicates report.
fn group_of<'a>(report: &'a Value, id: &str) -> Option<&'a Value> {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["members"].as_array().unwrap().iter().any(|m| m == id))
}

/// Whether the engine's own report (what `trio duplicates` prints) shows `a` and `b` together.
fn together(outcome: &DuplicatesOutcome, a: &str, b: &str) -> bool {
    outcome
        .groups
        .iter()
        .any(|g| g.members.iter().any(|m| m == a) && g.members.iter().any(|m| m == b))
}

#[actix_web::test]
async fn review_writes_need_the_write_key() {
    let app = app!(FakeBackend::new(), keyed());
    let request = TestRequest::patch()
        .uri("/v1/items/a")
        .set_json(json!({"label": "cat"}))
        .to_request();
    assert_error!(app, request, 401, "unauthorized", "Authorization");
    let request = TestRequest::post()
        .uri("/v1/duplicates/0123456789ab/dismiss")
        .to_request();
    assert_error!(app, request, 401, "unauthorized", "Authorization");
    let request = TestRequest::patch()
        .uri("/v1/items/a")
        .insert_header((actix_web::http::header::AUTHORIZATION, "Bearer wrong"))
        .set_json(json!({"keep_label": true}))
        .to_request();
    assert_error!(app, request, 401, "unauthorized", "not valid");

    // A server without a key takes no writes at all.
    let app = app!(FakeBackend::new(), ServerConfig::default());
    let request = patch("a", json!({"label": "cat"})).to_request();
    assert_error!(app, request, 403, "writes_disabled", "API key");
    let request = dismiss("/v1/duplicates/0123456789ab/dismiss").to_request();
    assert_error!(app, request, 403, "writes_disabled", "API key");
}

#[actix_web::test]
async fn a_patch_is_exactly_one_change_of_a_known_item() {
    let app = app!(FakeBackend::new(), keyed());
    let request = post_json(
        "/v1/items",
        json!({"id": "a", "title": "a dog", "label": "cat"}),
    );
    assert_eq!(
        test::call_service(&app, request.to_request())
            .await
            .status(),
        201
    );
    for (body, field) in [
        (json!({}), "keep_label"),
        (json!({"label": "dog", "keep_label": true}), "keep_label"),
        (json!({"keep_label": false}), "keep_label"),
        (json!({"label": "  "}), "label"),
        (json!({"label": "dog", "colour": "red"}), "colour"),
    ] {
        let request = patch("a", body.clone()).to_request();
        let response = test::call_service(&app, request).await;
        let (status, error) = json_of(response).await;
        assert_eq!(status, 400, "{body}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }
    let request = patch("nobody", json!({"label": "dog"})).to_request();
    assert_error!(app, request, 404, "not_found", "nobody");
    let request = patch("nobody", json!({"keep_label": true})).to_request();
    assert_error!(app, request, 404, "not_found", "nobody");
    // `if_label` guards against a change someone else made meanwhile: nothing is written.
    let request = patch("a", json!({"label": "dog", "if_label": "bird"})).to_request();
    assert_error!(app, request, 409, "conflict", "bird");
    let request = patch("a", json!({"keep_label": true, "if_label": "bird"})).to_request();
    assert_error!(app, request, 409, "conflict", "bird");
    let request = TestRequest::get().uri("/v1/items/a").to_request();
    let (_, item) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(item["label"], "cat");

    let request = patch("a", json!({"label": "dog", "if_label": "cat"})).to_request();
    let (status, item) = json_of(test::call_service(&app, request).await).await;
    assert_eq!((status, &item["label"]), (200, &json!("dog")), "{item}");
}

#[actix_web::test]
async fn a_dismissed_group_is_gone_and_a_stale_dismissal_is_a_conflict() {
    let app = app!(FakeBackend::new(), keyed());
    for (id, title) in [("a", "Red car"), ("b", "red car"), ("c", "a dog")] {
        let request = post_json("/v1/items", json!({"id": id, "title": title}));
        assert_eq!(
            test::call_service(&app, request.to_request())
                .await
                .status(),
            201
        );
    }
    let request = TestRequest::get()
        .uri("/v1/duplicates?space=text")
        .to_request();
    let (status, report) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200, "{report}");
    let group = group_of(&report, "a").unwrap().clone();
    let id = group["id"].as_str().unwrap();
    assert_eq!(
        id,
        trio_engine::catalog::group_id(&["b".into(), "a".into()])
    );
    let seen = report["generation"].as_u64().unwrap();

    // Unknown ids are 404 whatever generation the client saw.
    for path in [
        "/v1/duplicates/0123456789ab/dismiss?space=text".to_string(),
        format!("/v1/duplicates/0123456789ab/dismiss?space=text&generation={seen}"),
    ] {
        assert_error!(
            app,
            dismiss(&path).to_request(),
            404,
            "not_found",
            "0123456789ab"
        );
    }
    // The group is looked up in the report of the same options: not in another space's.
    let path = format!("/v1/duplicates/{id}/dismiss?space=text&threshold=2");
    assert_error!(app, dismiss(&path).to_request(), 404, "not_found", id);

    let path = format!("/v1/duplicates/{id}/dismiss?space=text&generation={seen}");
    let (status, body) = json_of(test::call_service(&app, dismiss(&path).to_request()).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"group": id, "members": ["a", "b"]}));

    let request = TestRequest::get()
        .uri("/v1/duplicates?space=text")
        .to_request();
    let (_, report) = json_of(test::call_service(&app, request).await).await;
    assert!(group_of(&report, "a").is_none(), "{report}");
    assert!(report["generation"].as_u64().unwrap() > seen, "{report}");
    // Again, from the report seen before: it changed since, so the client must reload.
    assert_error!(app, dismiss(&path).to_request(), 409, "conflict", "reload");
    let path = format!("/v1/duplicates/{id}/dismiss?space=text");
    assert_error!(app, dismiss(&path).to_request(), 404, "not_found", id);
}

#[actix_web::test]
async fn report_pages_filter_by_label_without_recomputing() {
    let backend = FakeBackend::new();
    let app = app!(backend.clone(), keyed());
    for (id, title, label) in [
        ("a1", "Red car", "car"),
        ("a2", "red car", "car"),
        ("b1", "grey cat", "cat"),
        ("b2", "Grey cat", "cat"),
        ("c1", "brown dog", "dog"),
        ("c2", "brown DOG", "dog"),
    ] {
        let request = post_json(
            "/v1/items",
            json!({"id": id, "title": title, "label": label}),
        );
        assert_eq!(
            test::call_service(&app, request.to_request())
                .await
                .status(),
            201
        );
    }
    let get = |uri: &str| TestRequest::get().uri(uri).to_request();
    let (_, all) = json_of(test::call_service(&app, get("/v1/duplicates?space=text")).await).await;
    assert_eq!(
        (&all["total"], &all["offset"]),
        (&json!(3), &json!(0)),
        "{all}"
    );
    let (_, page) =
        json_of(test::call_service(&app, get("/v1/duplicates?space=text&offset=1&limit=1")).await)
            .await;
    assert_eq!(page["groups"], json!([all["groups"][1]]), "{page}");
    assert_eq!((&page["total"], &page["offset"]), (&json!(3), &json!(1)));
    let (_, cats) =
        json_of(test::call_service(&app, get("/v1/duplicates?space=text&label=cat")).await).await;
    assert_eq!(cats["total"], 1, "{cats}");
    assert_eq!(cats["groups"][0]["members"], json!(["b1", "b2"]), "{cats}");
    let items = &cats["groups"][0]["items"];
    assert_eq!(
        items[0],
        json!({"id": "b1", "title": "grey cat", "label": "cat", "image": null})
    );
    // One report computed, whatever page or filter was asked of it.
    assert_eq!(
        backend
            .report_calls
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
}

/// The whole review flow on the real engine: duplicates and label issues as the page reads them,
/// each decision, and the next reports (the server's and the engine's).
#[actix_web::test]
async fn review_decisions_change_the_next_reports() {
    let catalogue = engine_catalogue(false);
    let app = app!(catalogue.backend(), keyed());
    let get = |uri: &str| TestRequest::get().uri(uri).to_request();
    let original = &catalogue.rows.catalogue[0];
    let image = std::fs::read(original.image.as_ref().unwrap()).unwrap();
    let original_id = original.id.clone().unwrap();
    // A copy listed under the original's title: items whose texts differ are never duplicates.
    let request = post_json(
        "/v1/items",
        json!({"id": "copy", "title": original.title, "image": b64(&image)}),
    );
    assert_eq!(
        test::call_service(&app, request.to_request())
            .await
            .status(),
        201
    );

    // ---- duplicates -----------------------------------------------------------------------
    let (status, report) = json_of(test::call_service(&app, get("/v1/duplicates")).await).await;
    assert_eq!(status, 200, "{report}");
    let group = group_of(&report, "copy").unwrap_or_else(|| panic!("{report}"));
    assert!(group["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m == &original_id));
    let id = group["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 12);
    let copy = group["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "copy")
        .unwrap();
    assert_eq!(copy["image"], "/v1/items/copy/image");
    assert_eq!(
        test::call_service(&app, get("/v1/items/copy/image"))
            .await
            .status(),
        200
    );
    let seen = report["generation"].as_u64().unwrap();

    let path = format!("/v1/duplicates/{id}/dismiss?generation={seen}");
    let (status, body) = json_of(test::call_service(&app, dismiss(&path).to_request()).await).await;
    assert_eq!(status, 200, "{body}");
    let (_, report) = json_of(test::call_service(&app, get("/v1/duplicates")).await).await;
    assert!(group_of(&report, "copy").is_none(), "{report}");
    assert_error!(app, dismiss(&path).to_request(), 409, "conflict", &id);
    let engine = catalogue
        .catalog
        .duplicates(
            Some(Space::Image),
            &DuplicateOptions::default(),
            &NoProgress,
        )
        .unwrap();
    assert!(!together(&engine, "copy", &original_id), "{engine:?}");
    // Every pair among the group's members, and nothing else.
    let n = body["members"].as_array().unwrap().len();
    assert_eq!(
        catalogue.catalog.dismissed_pairs().unwrap().len(),
        n * (n - 1) / 2
    );

    // ---- label issues ---------------------------------------------------------------------
    // Two fruits the catalogue has not seen, one labelled a mammal, one a vehicle.
    let mut fruits = catalogue
        .rows
        .unseen
        .iter()
        .filter(|r| r.label.as_deref() == Some("food-fruit"));
    for (item, label) in [
        ("mislabelled", "animal-mammal"),
        ("odd", "transport-ground"),
    ] {
        let row = fruits.next().unwrap();
        let image = std::fs::read(row.image.as_ref().unwrap()).unwrap();
        let request = post_json(
            "/v1/items",
            json!({"id": item, "title": row.title, "label": label, "image": b64(&image)}),
        );
        assert_eq!(
            test::call_service(&app, request.to_request())
                .await
                .status(),
            201
        );
    }
    let issues = |report: &Value| -> Vec<String> {
        report["issues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, report) = json_of(test::call_service(&app, get("/v1/noise?limit=50")).await).await;
    assert_eq!(status, 200, "{report}");
    let listed = issues(&report);
    assert!(
        listed.contains(&"mislabelled".into()) && listed.contains(&"odd".into()),
        "{report}"
    );
    let issue = report["issues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "mislabelled")
        .unwrap();
    assert_eq!(issue["suggested_label"], "food-fruit", "{report}");
    assert_eq!(issue["image"], "/v1/items/mislabelled/image");
    let p = issue["p_suggested"].as_f64().unwrap();
    assert!(p > 0.0 && p <= 1.0, "{report}");
    // The label filter: issues given or suggested that label.
    let (_, mammals) =
        json_of(test::call_service(&app, get("/v1/noise?label=animal-mammal&limit=50")).await)
            .await;
    for issue in mammals["issues"].as_array().unwrap() {
        assert!(
            issue["given_label"] == "animal-mammal" || issue["suggested_label"] == "animal-mammal",
            "{mammals}"
        );
    }
    assert!(
        issues(&mammals).contains(&"mislabelled".into()),
        "{mammals}"
    );
    assert!(!issues(&mammals).contains(&"odd".into()), "{mammals}");

    let request = patch(
        "mislabelled",
        json!({"label": "food-fruit", "if_label": "transport-ground"}),
    );
    assert_error!(app, request.to_request(), 409, "conflict", "animal-mammal");
    let request = patch(
        "mislabelled",
        json!({"label": "food-fruit", "if_label": "animal-mammal"}),
    );
    let (status, item) = json_of(test::call_service(&app, request.to_request()).await).await;
    assert_eq!(
        (status, &item["label"]),
        (200, &json!("food-fruit")),
        "{item}"
    );
    let request = patch(
        "odd",
        json!({"keep_label": true, "if_label": "transport-ground"}),
    );
    let (status, item) = json_of(test::call_service(&app, request.to_request()).await).await;
    assert_eq!(
        (status, &item["label"]),
        (200, &json!("transport-ground")),
        "{item}"
    );

    let (_, report) = json_of(test::call_service(&app, get("/v1/noise?limit=50")).await).await;
    let listed = issues(&report);
    assert!(!listed.contains(&"mislabelled".into()), "{report}");
    assert!(!listed.contains(&"odd".into()), "{report}");
    let stored = catalogue.catalog.get("mislabelled").unwrap().unwrap();
    assert_eq!(stored.label.as_deref(), Some("food-fruit"));
    // The engine's own report agrees (what `trio noise` prints).
    let engine = catalogue
        .catalog
        .noise(&trio_engine::catalog::NoiseOptions::default(), &NoProgress)
        .unwrap();
    assert!(
        engine
            .issues
            .iter()
            .all(|i| i.id != "mislabelled" && i.id != "odd"),
        "{:?}",
        engine.issues
    );
    // Once its label changes, a kept item is judged again.
    let request = patch("odd", json!({"label": "animal-mammal"}));
    assert_eq!(
        test::call_service(&app, request.to_request())
            .await
            .status(),
        200
    );
    // Judged again: ranked among every item (how sure the 34-item model is decides whether it
    // is also flagged), first, with the fruit suggested.
    let (status, _) = json_of(test::call_service(&app, get("/v1/noise?limit=50")).await).await;
    assert_eq!(status, 200);
    let ranked = catalogue
        .catalog
        .noise(
            &trio_engine::catalog::NoiseOptions {
                noise: trio_engine::quality::noise::LabelNoiseOptions {
                    rank_all: true,
                    ..Default::default()
                },
                ..Default::default()
            },
            &NoProgress,
        )
        .unwrap();
    let first = &ranked.issues[0];
    assert_eq!(
        (first.id.as_str(), first.suggested_label.as_str()),
        ("odd", "food-fruit"),
        "{:?}",
        ranked.issues
    );
}
