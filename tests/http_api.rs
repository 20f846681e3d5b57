//! The HTTP API over a fake backend: every route, every error status, auth, the API
//! description, metrics and the web page. Driven through `actix_web::test`, no socket.
#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeSet;

use actix_web::http::header;
use actix_web::test::{self, TestRequest};
use serde_json::{json, Value};
use support::{
    b64, bearer, expect_error, json_of, keyed, multipart, multipart_content_type, png_header,
    post_json, post_multipart, FakeBackend, KEY,
};
use trio_server::{Limits, ServerConfig};

#[actix_web::test]
async fn items_can_be_added_read_listed_and_deleted() {
    let app = app!(FakeBackend::new(), keyed());

    let png = png_header(4, 3);
    let request = post_json(
        "/v1/items",
        json!({"id": "c1", "title": "A cat", "description": "sleeping", "tags": ["pet"],
               "label": "cat", "metadata": {"source": "test"}, "image": b64(&png)}),
    );
    let response = test::call_service(&app, request.to_request()).await;
    assert_eq!(
        response.headers().get(header::LOCATION).unwrap(),
        "/v1/items/c1"
    );
    let (status, body) = json_of(response).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["id"], "c1");
    assert_eq!(body["has_image"], true);
    assert_eq!(body["metadata"]["source"], "test");

    // Text-only item with a backend-assigned id.
    let request = post_json("/v1/items", json!({"title": "A dog", "label": "dog"}));
    let (status, body) = json_of(test::call_service(&app, request.to_request()).await).await;
    assert_eq!(status, 201, "{body}");
    let dog_id = body["id"].as_str().unwrap().to_string();

    let request = TestRequest::get().uri("/v1/items/c1").to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!((status, body["title"].as_str()), (200, Some("A cat")));

    let request = TestRequest::get().uri("/v1/items/c1/image").to_request();
    let response = test::call_service(&app, request).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers().get(header::CONTENT_TYPE).unwrap(),
        "image/png"
    );
    assert_eq!(test::read_body(response).await.as_ref(), png.as_slice());

    let request = TestRequest::get()
        .uri(&format!("/v1/items/{dog_id}/image"))
        .to_request();
    assert_error!(app, request, 404, "not_found", &dog_id);

    let request = TestRequest::get()
        .uri("/v1/items?offset=1&limit=1")
        .to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["total"].as_u64(), body["offset"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(body["items"].as_array().unwrap().len(), 1);

    let request = TestRequest::delete()
        .uri("/v1/items/c1")
        .insert_header(bearer())
        .to_request();
    let response = test::call_service(&app, request).await;
    assert_eq!(response.status(), 204);

    let request = TestRequest::get().uri("/v1/items/c1").to_request();
    assert_error!(app, request, 404, "not_found", "c1");
    let request = TestRequest::delete()
        .uri("/v1/items/c1")
        .insert_header(bearer())
        .to_request();
    assert_error!(app, request, 404, "not_found", "c1");
}

#[actix_web::test]
async fn items_can_be_added_as_multipart_forms() {
    let app = app!(FakeBackend::new(), keyed());
    let png = png_header(2, 2);

    // Individual text parts, repeated tags, metadata.<key>.
    let body = multipart(&[
        ("image", Some("cat.png"), Some("image/png"), &png),
        ("id", None, None, b"m1"),
        ("title", None, None, b"Tabby"),
        ("tags", None, None, b"pet"),
        ("tags", None, None, b"striped"),
        ("metadata.source", None, None, b"camera"),
        ("label", None, None, b"cat"),
    ]);
    let request = post_multipart("/v1/items", body).to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["tags"], json!(["pet", "striped"]));
    assert_eq!(body["metadata"], json!({"source": "camera"}));
    assert_eq!(body["has_image"], true);

    // A `fields` JSON part instead.
    let fields = json!({"id": "m2", "title": "Goldfish", "label": "fish"}).to_string();
    let body = multipart(&[
        ("fields", None, Some("application/json"), fields.as_bytes()),
        ("image", Some("fish.png"), Some("image/png"), &png),
    ]);
    let request = post_multipart("/v1/items", body).to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!((status, body["id"].as_str()), (201, Some("m2")), "{body}");

    // Unknown part, a field given twice, unknown field inside `fields`.
    for (parts, mentions) in [
        (vec![("colour", None, None, b"red".as_slice())], "colour"),
        (
            vec![
                ("title", None, None, b"a".as_slice()),
                ("title", None, None, b"b".as_slice()),
            ],
            "title",
        ),
    ] {
        let request = post_multipart("/v1/items", multipart(&parts)).to_request();
        assert_error!(app, request, 400, "invalid_multipart", mentions);
    }
    let body = multipart(&[("fields", None, None, br#"{"title": "x", "colour": "red"}"#)]);
    let request = post_multipart("/v1/items", body).to_request();
    assert_error!(app, request, 400, "invalid_body", "colour");
}

#[actix_web::test]
async fn truncated_multipart_is_a_400() {
    let app = app!(FakeBackend::new(), keyed());
    let mut body = multipart(&[
        ("title", None, None, b"Tabby"),
        (
            "image",
            Some("cat.png"),
            Some("image/png"),
            &png_header(2, 2),
        ),
    ]);
    // Cut inside the image part: no closing boundary ever arrives.
    body.truncate(body.len() - 30);
    let request = post_multipart("/v1/items", body).to_request();
    assert_error!(app, request, 400, "invalid_multipart", "");

    // No boundary parameter at all.
    let request = TestRequest::post()
        .uri("/v1/items")
        .insert_header(bearer())
        .insert_header((header::CONTENT_TYPE, "multipart/form-data"))
        .set_payload("--x\r\n")
        .to_request();
    assert_error!(app, request, 400, "invalid_multipart", "");
}

#[actix_web::test]
async fn bad_images_are_415_and_huge_ones_413() {
    let app = app!(
        FakeBackend::new(),
        ServerConfig {
            limits: Limits {
                max_pixels: 1_000_000,
                ..Limits::default()
            },
            ..keyed()
        }
    );
    // A text file sent with an image content type: the backend's decoder refuses it.
    let body = multipart(&[
        ("title", None, None, b"fake"),
        (
            "image",
            Some("cat.png"),
            Some("image/png"),
            b"this is not a png at all",
        ),
    ]);
    let request = post_multipart("/v1/items", body).to_request();
    assert_error!(app, request, 415, "not_an_image", "PNG");

    let request = post_json("/v1/classify", json!({"image": b64(b"GIF? no")}));
    assert_error!(app, request.to_request(), 415, "not_an_image", "");

    // Decoded pixels over the limit (the limit reaches the backend's decoder).
    let request = post_json("/v1/search", json!({"image": b64(&png_header(2000, 1000))}));
    assert_error!(app, request.to_request(), 413, "too_large", "1000000");

    // Not base64 at all.
    let request = post_json("/v1/classify", json!({"image": "%%%"}));
    assert_error!(app, request.to_request(), 400, "invalid_body", "base64");

    // A browser data URL is accepted.
    let url = format!("data:image/png;base64,{}", b64(&png_header(2, 2)));
    let request = post_json("/v1/classify", json!({"image": url}));
    let (status, body) = json_of(test::call_service(&app, request.to_request()).await).await;
    assert_eq!(
        (status, body["labels"][0]["label"].as_str()),
        (200, Some("cat")),
        "{body}"
    );
}

#[actix_web::test]
async fn conflicts_and_unknown_labels() {
    let app = app!(FakeBackend::new(), keyed());
    let request = post_json("/v1/items", json!({"id": "x", "title": "t"}));
    assert_eq!(
        test::call_service(&app, request.to_request())
            .await
            .status(),
        201
    );
    let request = post_json("/v1/items", json!({"id": "x", "title": "t"}));
    assert_error!(app, request.to_request(), 409, "conflict", "'x'");

    let request = post_json("/v1/items", json!({"title": "t", "label": "zebra"}));
    assert_error!(app, request.to_request(), 422, "unknown_label", "zebra");
    let request = post_json(
        "/v1/classify",
        json!({"title": "a dog", "claimed": "zebra"}),
    );
    assert_error!(app, request.to_request(), 422, "unknown_label", "zebra");

    // An id that could not be addressed in a URL.
    let request = post_json("/v1/items", json!({"id": "a/b", "title": "t"}));
    assert_error!(app, request.to_request(), 400, "invalid_argument", "id");
    // Nothing to embed.
    let request = post_json("/v1/items", json!({"tags": ["x"]}));
    assert_error!(app, request.to_request(), 400, "missing_input", "title");
}

#[actix_web::test]
async fn classify_answers_top_k_and_checks_claims() {
    let app = app!(FakeBackend::new(), keyed());
    let request = post_json(
        "/v1/items",
        json!({"id": "d1", "title": "good dog", "label": "dog"}),
    );
    assert_eq!(
        test::call_service(&app, request.to_request())
            .await
            .status(),
        201
    );

    let request = TestRequest::post()
        .uri("/v1/classify")
        .set_json(
            json!({"title": "a dog", "description": "dog on a lawn", "top_k": 3, "claimed": "cat"}),
        )
        .to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200, "{body}");
    let labels = body["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 3);
    assert_eq!(labels[0]["label"], "dog");
    let claimed = &body["claimed"];
    assert_eq!(claimed["label"], "cat");
    assert_eq!(claimed["agrees"], false);
    assert_eq!(claimed["model_choice"], "dog");
    assert_eq!(claimed["evidence"][0]["id"], "d1");

    // Default top_k is 5; multipart works too.
    let body = multipart(&[
        ("image", Some("x.png"), Some("image/png"), &png_header(8, 8)),
        ("title", None, None, b"fish"),
    ]);
    let request = TestRequest::post()
        .uri("/v1/classify")
        .insert_header((header::CONTENT_TYPE, multipart_content_type()))
        .set_payload(body)
        .to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["labels"].as_array().unwrap().len(), 5);
    assert_eq!(body["claimed"], Value::Null);

    let body = multipart(&[
        ("title", None, None, b"fish"),
        ("top_k", None, None, b"many"),
    ]);
    let request = TestRequest::post()
        .uri("/v1/classify")
        .insert_header((header::CONTENT_TYPE, multipart_content_type()))
        .set_payload(body)
        .to_request();
    assert_error!(app, request, 400, "invalid_argument", "top_k");

    let request = TestRequest::post()
        .uri("/v1/classify")
        .set_json(json!({"top_k": 2}))
        .to_request();
    assert_error!(app, request, 400, "missing_input", "image");
    let request = TestRequest::post()
        .uri("/v1/classify")
        .set_json(json!({"title": "x", "top_k": 0}))
        .to_request();
    assert_error!(app, request, 400, "invalid_argument", "top_k");
}

#[actix_web::test]
async fn search_by_text_image_and_id_with_filters() {
    let app = app!(FakeBackend::new(), keyed());
    for (id, title, label, image) in [
        ("a", "red car", "car", false),
        ("b", "red bird", "bird", true),
        ("c", "blue car", "car", true),
    ] {
        let mut item = json!({"id": id, "title": title, "label": label, "tags": [label]});
        if image {
            item["image"] = json!(b64(&png_header(2, 2)));
        }
        let request = post_json("/v1/items", item);
        assert_eq!(
            test::call_service(&app, request.to_request())
                .await
                .status(),
            201
        );
    }
    let search = |body: Value| {
        TestRequest::post()
            .uri("/v1/search")
            .set_json(body)
            .to_request()
    };

    let (status, body) =
        json_of(test::call_service(&app, search(json!({"text": "red car"}))).await).await;
    assert_eq!(status, 200, "{body}");
    let ids: Vec<&str> = body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b", "c"]);
    assert_eq!(body["hits"][0]["score"], 1.0);

    let (_, body) = json_of(
        test::call_service(
            &app,
            search(json!({"text": "red car", "filters": {"label": "car"}, "k": 1, "offset": 1})),
        )
        .await,
    )
    .await;
    assert_eq!(
        body["hits"],
        json!([{"id": "c", "score": 0.5, "title": "blue car", "label": "car", "has_image": true}])
    );

    let (_, body) = json_of(
        test::call_service(
            &app,
            search(json!({"image": b64(&png_header(3, 3)), "space": "image"})),
        )
        .await,
    )
    .await;
    let ids: Vec<&str> = body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b", "c"]);

    let (_, body) = json_of(
        test::call_service(&app, search(json!({"id": "a", "filters": {"tag": "car"}}))).await,
    )
    .await;
    assert_eq!(body["hits"][0]["id"], "c");

    assert_error!(app, search(json!({"id": "nope"})), 404, "not_found", "nope");
    assert_error!(
        app,
        search(json!({"space": "text"})),
        400,
        "missing_query",
        "text"
    );
    assert_error!(app, search(json!({})), 400, "missing_query", "");
    assert_error!(
        app,
        search(json!({"text": "x", "id": "a"})),
        400,
        "invalid_argument",
        "only one"
    );
    assert_error!(
        app,
        search(json!({"text": "x", "k": 5000})),
        400,
        "invalid_argument",
        "k"
    );
    assert_error!(
        app,
        search(json!({"text": "x", "k": 10, "offset": 995})),
        400,
        "invalid_argument",
        "offset"
    );
    assert_error!(
        app,
        search(json!({"text": "x", "space": "audio"})),
        400,
        "invalid_body",
        "audio"
    );
    // An empty body is an empty request: no query.
    let request = TestRequest::post().uri("/v1/search").to_request();
    assert_error!(app, request, 400, "missing_query", "");
}

#[actix_web::test]
async fn malformed_requests_are_400_415_413() {
    let app = app!(FakeBackend::new(), keyed());
    // 10 MB of text: under the 16 MiB body limit, over the text limit.
    let long_text = "a".repeat(10 * 1024 * 1024);
    let search = || TestRequest::post().uri("/v1/search");
    // (what is wrong, request, status, error code, a word the message must name)
    let cases = vec![
        (
            "cut-off JSON",
            search()
                .insert_header((header::CONTENT_TYPE, "application/json"))
                .set_payload("{\"text\": "),
            400,
            "invalid_json",
            "",
        ),
        (
            "unknown field",
            search().set_json(json!({"text": "cat", "bogus": 1})),
            400,
            "invalid_body",
            "bogus",
        ),
        (
            "wrong type",
            search().set_json(json!({"text": 42})),
            400,
            "invalid_body",
            "string",
        ),
        (
            "not JSON",
            search()
                .insert_header((header::CONTENT_TYPE, "text/plain"))
                .set_payload("cat"),
            415,
            "unsupported_media_type",
            "text/plain",
        ),
        (
            "query text too long",
            search().set_json(json!({ "text": long_text })),
            413,
            "text_too_long",
            "`text`",
        ),
        (
            "description too long",
            post_json(
                "/v1/items",
                json!({"title": "ok", "description": long_text}),
            ),
            413,
            "text_too_long",
            "`description`",
        ),
        (
            "limit not a number",
            TestRequest::get().uri("/v1/items?limit=lots"),
            400,
            "invalid_query",
            "limit",
        ),
        (
            "unknown query parameter",
            TestRequest::get().uri("/v1/items?bogus=1"),
            400,
            "invalid_query",
            "bogus",
        ),
        (
            "limit out of range",
            TestRequest::get().uri("/v1/items?limit=5000"),
            400,
            "invalid_argument",
            "limit",
        ),
        (
            "unknown route",
            TestRequest::get().uri("/v2/nothing"),
            404,
            "route_not_found",
            "/v2/nothing",
        ),
        (
            "unknown method",
            TestRequest::put().uri("/v1/items"),
            405,
            "method_not_allowed",
            "PUT",
        ),
    ];
    for (what, request, status, code, mentions) in cases {
        eprintln!("case: {what}");
        let response = test::call_service(&app, request.to_request()).await;
        expect_error(response, status, code, mentions).await;
    }
}

#[actix_web::test]
async fn oversized_bodies_are_413() {
    let small = ServerConfig {
        limits: Limits {
            max_body_bytes: 1024,
            ..Limits::default()
        },
        ..keyed()
    };
    let app = app!(FakeBackend::new(), small);
    let big = "x".repeat(2000);

    let request = TestRequest::post()
        .uri("/v1/search")
        .set_json(json!({ "text": big }))
        .to_request();
    assert_error!(app, request, 413, "body_too_large", "1024");

    let body = multipart(&[("title", None, None, big.as_bytes())]);
    let request = post_multipart("/v1/items", body).to_request();
    assert_error!(app, request, 413, "body_too_large", "1024");

    // Without a Content-Length the limit still holds while streaming.
    let body = multipart(&[("image", Some("a.png"), Some("image/png"), big.as_bytes())]);
    let mut request = TestRequest::post()
        .uri("/v1/classify")
        .insert_header((header::CONTENT_TYPE, multipart_content_type()))
        .set_payload(body)
        .to_request();
    request.headers_mut().remove(header::CONTENT_LENGTH);
    assert_error!(app, request, 413, "body_too_large", "1024");
}

#[actix_web::test]
async fn writes_need_the_key_and_reads_need_it_only_when_configured() {
    // No key configured: writes are disabled, reads are open.
    let app = app!(FakeBackend::new(), ServerConfig::default());
    let request = TestRequest::post()
        .uri("/v1/items")
        .set_json(json!({"title": "t"}))
        .to_request();
    assert_error!(app, request, 403, "writes_disabled", "TRIO_API_KEY");
    let request = TestRequest::get().uri("/v1/items").to_request();
    assert_eq!(test::call_service(&app, request).await.status(), 200);

    // Key configured, reads open.
    let app = app!(FakeBackend::new(), keyed());
    let cases = [
        TestRequest::post()
            .uri("/v1/items")
            .set_json(json!({"title": "t"})),
        TestRequest::delete().uri("/v1/items/x"),
        TestRequest::post().uri("/v1/train"),
        TestRequest::post().uri("/v1/models/v1/activate"),
    ];
    for request in cases {
        let response = test::call_service(&app, request.to_request()).await;
        assert_eq!(
            response.headers().get(header::WWW_AUTHENTICATE).unwrap(),
            "Bearer"
        );
        expect_error(response, 401, "unauthorized", "Bearer").await;
    }
    let request = TestRequest::post()
        .uri("/v1/items")
        .insert_header((header::AUTHORIZATION, "Bearer wrong-key"))
        .set_json(json!({"title": "t"}))
        .to_request();
    assert_error!(app, request, 401, "unauthorized", "not valid");
    // Auth is checked before the body is read: a bad body without a key is still a 401.
    let request = TestRequest::post()
        .uri("/v1/items")
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .set_payload("{not json")
        .to_request();
    assert_error!(app, request, 401, "unauthorized", "");
    let request = TestRequest::post()
        .uri("/v1/items")
        .insert_header((header::AUTHORIZATION, format!("bearer {KEY}")))
        .set_json(json!({"title": "t"}))
        .to_request();
    assert_eq!(test::call_service(&app, request).await.status(), 201);
    let request = TestRequest::get().uri("/v1/items").to_request();
    assert_eq!(test::call_service(&app, request).await.status(), 200);

    // Reads keyed.
    let app = app!(
        FakeBackend::new(),
        ServerConfig {
            read_auth: true,
            ..keyed()
        }
    );
    for path in ["/v1/items", "/v1/models", "/metrics", "/v1/stats"] {
        let request = TestRequest::get().uri(path).to_request();
        assert_error!(app, request, 401, "unauthorized", "");
        let request = TestRequest::get()
            .uri(path)
            .insert_header(bearer())
            .to_request();
        assert_eq!(
            test::call_service(&app, request).await.status(),
            200,
            "{path}"
        );
    }
    let request = TestRequest::post()
        .uri("/v1/search")
        .set_json(json!({"text": "x"}))
        .to_request();
    assert_error!(app, request, 401, "unauthorized", "");
    for path in ["/healthz", "/", "/openapi.json"] {
        let request = TestRequest::get().uri(path).to_request();
        assert_eq!(
            test::call_service(&app, request).await.status(),
            200,
            "{path}"
        );
    }
}

#[actix_web::test]
async fn training_jobs_and_models() {
    let app = app!(FakeBackend::new(), keyed());
    let request = post_json("/v1/train", json!({"epochs": 3, "seed": 7}));
    let response = test::call_service(&app, request.to_request()).await;
    assert_eq!(
        response.headers().get(header::LOCATION).unwrap(),
        "/v1/jobs/job-1"
    );
    let (status, body) = json_of(response).await;
    assert_eq!((status, body), (202, json!({"job_id": "job-1"})));

    let request = TestRequest::get().uri("/v1/jobs/job-1").to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        (body["state"].as_str(), body["progress"].as_f64()),
        (Some("running"), Some(0.5))
    );
    assert_eq!(body["message"], "epoch 1 of 3");

    // An empty body trains with defaults; a job is running, so it conflicts.
    let request = TestRequest::post()
        .uri("/v1/train")
        .insert_header(bearer())
        .to_request();
    assert_error!(app, request, 409, "conflict", "job-1");
    let request = post_json("/v1/train", json!({"epochs": 3, "epoch": 4}));
    assert_error!(app, request.to_request(), 400, "invalid_body", "epoch");
    let request = post_json("/v1/train", json!({"validation_fraction": 1.5}));
    assert_error!(
        app,
        request.to_request(),
        400,
        "invalid_argument",
        "validation_fraction"
    );

    let request = TestRequest::get().uri("/v1/jobs/job-9").to_request();
    assert_error!(app, request, 404, "not_found", "job-9");

    let request = TestRequest::get().uri("/v1/models").to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200);
    assert_eq!(body["models"][0]["version"], "v1");
    assert_eq!(body["models"][0]["active"], true);

    let request = TestRequest::post()
        .uri("/v1/models/v1/activate")
        .insert_header(bearer())
        .to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!((status, body["version"].as_str()), (200, Some("v1")));
    let request = TestRequest::post()
        .uri("/v1/models/v7/activate")
        .insert_header(bearer())
        .to_request();
    assert_error!(app, request, 404, "not_found", "v7");
}

#[actix_web::test]
async fn duplicates_noise_stats_and_health() {
    let backend = FakeBackend::new();
    let app = app!(backend.clone(), keyed());
    for (id, title, label) in [
        ("a", "Red car", "car"),
        ("b", "red car", "car"),
        ("c", "a dog", "cat"),
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
    let request = TestRequest::get()
        .uri("/v1/duplicates?threshold=0.9&space=text")
        .to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200, "{body}");
    let item =
        |id: &str, title: &str| json!({"id": id, "title": title, "label": "car", "image": null});
    assert_eq!(
        body["groups"],
        json!([{
            "kind": "near", "members": ["a", "b"],
            "pairs": [{"a": "a", "b": "b", "score": 1.0, "similarity": 1.0}],
            "id": trio_engine::catalog::group_id(&["a".into(), "b".into()]),
            "items": [item("a", "Red car"), item("b", "red car")],
        }])
    );
    assert_eq!((&body["total"], &body["offset"]), (&json!(1), &json!(0)));
    assert_eq!(body["space"], "text");
    assert_eq!(body["refused_merges"], 0);

    let request = TestRequest::post()
        .uri("/v1/duplicates")
        .set_json(json!({"limit": 1}))
        .to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(
        (status, body["groups"].as_array().map(Vec::len)),
        (200, Some(1))
    );
    let request = TestRequest::get()
        .uri("/v1/duplicates?space=audio")
        .to_request();
    assert_error!(app, request, 400, "invalid_query", "audio");

    let request = TestRequest::get().uri("/v1/noise?limit=10").to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200);
    let issues: Vec<_> = body["issues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (&i["id"], &i["given_label"], &i["suggested_label"]))
        .collect();
    assert_eq!(
        issues,
        [(&json!("c"), &json!("cat"), &json!("dog"))],
        "{body}"
    );
    assert_eq!(
        (&body["labelled_items"], &body["flagged"]),
        (&json!(3), &json!(1))
    );
    let request = TestRequest::get()
        .uri("/v1/noise?min_confidence=2")
        .to_request();
    assert_error!(app, request, 400, "invalid_argument", "min_confidence");

    let request = TestRequest::get().uri("/v1/stats").to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"items": 3, "indexes": {"fused": 3, "image": 0, "text": 3}, "active_model": "v1"})
    );

    let request = TestRequest::get().uri("/healthz").to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    backend.set_ready(false);
    let request = TestRequest::get().uri("/healthz").to_request();
    let response = test::call_service(&app, request).await;
    assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
    expect_error(response, 503, "not_ready", "loading").await;
}

#[actix_web::test]
async fn a_panicking_backend_is_a_500_with_a_json_body() {
    let app = app!(FakeBackend::new(), keyed());
    let request = TestRequest::get().uri("/v1/items/panic").to_request();
    assert_error!(app, request, 500, "internal", "server log");
    let request = TestRequest::post()
        .uri("/v1/classify")
        .set_json(json!({"title": "panic"}))
        .to_request();
    assert_error!(app, request, 500, "internal", "server log");
    // The service and the batch worker are still there.
    let request = TestRequest::post()
        .uri("/v1/classify")
        .set_json(json!({"title": "cat"}))
        .to_request();
    assert_eq!(test::call_service(&app, request).await.status(), 200);
}

#[actix_web::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = app!(FakeBackend::new(), keyed());
    for uri in ["/v1/items/a", "/v1/items/b", "/v1/items"] {
        test::call_service(&app, TestRequest::get().uri(uri).to_request()).await;
    }
    let request = TestRequest::post()
        .uri("/v1/classify")
        .set_json(json!({"title": "cat"}))
        .to_request();
    test::call_service(&app, request).await;
    test::call_service(&app, TestRequest::get().uri("/nowhere").to_request()).await;

    let response = test::call_service(&app, TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(response.status(), 200);
    assert!(response
        .headers()
        .get(header::CONTENT_TYPE)
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(test::read_body(response).await.to_vec()).unwrap();
    for line in [
        r#"trio_http_requests_total{method="GET",route="/v1/items/{id}",status="404"} 2"#,
        r#"trio_http_requests_total{method="GET",route="/v1/items",status="200"} 1"#,
        r#"trio_http_requests_total{method="POST",route="/v1/classify",status="200"} 1"#,
        r#"trio_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"trio_http_request_duration_seconds_count{method="GET",route="/v1/items/{id}",status="404"} 2"#,
        r#"trio_batch_size_count{batcher="classify"} 1"#,
        r#"trio_queue_depth{queue="blocking"} 0"#,
        r#"trio_queue_depth{queue="classify"} 0"#,
        r#"trio_index_size{space="fused"} 0"#,
        "trio_items 0",
    ] {
        assert!(text.contains(line), "metrics lack {line}:\n{text}");
    }
    assert!(text.contains("trio_http_request_duration_seconds_bucket{method=\"GET\",route=\"/v1/items/{id}\",status=\"404\",le=\"0.001\"}"));
}

#[actix_web::test]
async fn openapi_describes_exactly_the_registered_routes() {
    let app = app!(FakeBackend::new(), keyed());
    let request = TestRequest::get().uri("/openapi.json").to_request();
    let (status, doc) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));

    let registered: BTreeSet<(String, String)> = trio_server::routes()
        .into_iter()
        .map(|r| (r.method.as_str().to_lowercase(), r.path.to_string()))
        .collect();
    let mut documented = BTreeSet::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            documented.insert((method.clone(), path.clone()));
        }
    }
    assert_eq!(registered, documented);

    // Writes say they need the bearer key; the scheme exists; error bodies are described.
    let security = &doc["paths"]["/v1/items"]["post"]["security"];
    assert_eq!(security, &json!([{"bearer": []}]));
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["schemas"]["SearchRequest"]["properties"]["filters"].is_object());
    let content = &doc["paths"]["/v1/items"]["post"]["requestBody"]["content"];
    assert!(content["multipart/form-data"].is_object() && content["application/json"].is_object());

    // Every registered route answers something other than 404/405 (they are really wired).
    for route in trio_server::routes() {
        let uri = route.path.replace("{id}", "x").replace("{version}", "v1");
        let request = TestRequest::default()
            .method(route.method.clone())
            .uri(&uri)
            .insert_header(bearer())
            .to_request();
        let response = test::call_service(&app, request).await;
        let body = test::read_body(response).await;
        let code = serde_json::from_slice::<Value>(&body)
            .map(|v| v["error"]["code"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        assert!(
            code != "route_not_found" && code != "method_not_allowed",
            "{} {uri} is not wired: {code}",
            route.method
        );
    }
}

#[actix_web::test]
async fn the_page_and_its_assets_are_served() {
    let app = app!(FakeBackend::new(), keyed());
    let response = test::call_service(&app, TestRequest::get().uri("/").to_request()).await;
    assert_eq!(response.status(), 200);
    assert!(response
        .headers()
        .get(header::CONTENT_TYPE)
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = String::from_utf8(test::read_body(response).await.to_vec()).unwrap();
    for id in [
        "query",
        "search-btn",
        "results",
        "upload",
        "classify-results",
    ] {
        assert!(html.contains(&format!("id=\"{id}\"")), "page lacks #{id}");
    }
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "page must not load remote assets"
    );
    for (path, kind) in [
        ("/static/app.js", "text/javascript"),
        ("/static/style.css", "text/css"),
    ] {
        let response = test::call_service(&app, TestRequest::get().uri(path).to_request()).await;
        assert_eq!(response.status(), 200);
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(content_type.starts_with(kind), "{path}: {content_type}");
    }
}

#[actix_web::test]
async fn ids_longer_than_the_store_accepts_are_a_400_naming_the_limit() {
    let app = app!(FakeBackend::new(), keyed());
    let long = "x".repeat(1025);
    let request = post_json("/v1/items", json!({"id": long, "title": "long id"}));
    assert_error!(app, request.to_request(), 400, "invalid_argument", "1024");
    // Multibyte characters count in bytes: 513 two-byte characters are 1026 bytes.
    let request = post_json("/v1/items", json!({"id": "é".repeat(513), "title": "t"}));
    assert_error!(app, request.to_request(), 400, "invalid_argument", "1024");
    let request = post_json("/v1/items", json!({"id": "x".repeat(1024), "title": "t"}));
    assert_eq!(
        test::call_service(&app, request.to_request())
            .await
            .status(),
        201
    );
}

/// Concurrent identical report requests compute once; later ones get the stored report with its
/// age until a write moves the catalogue on.
#[actix_web::test]
async fn reports_are_computed_once_per_catalogue_state() {
    use std::sync::atomic::Ordering;
    let backend = FakeBackend::new();
    let _open = support::OpenOnDrop(backend.clone());
    let app = app!(backend.clone(), keyed());
    for (id, title) in [("a", "Red car"), ("b", "red car")] {
        let request = post_json(
            "/v1/items",
            json!({"id": id, "title": title, "label": "car"}),
        );
        assert_eq!(
            test::call_service(&app, request.to_request())
                .await
                .status(),
            201
        );
    }
    backend.hold_reports.store(true, Ordering::SeqCst);
    let requests = (0..8).map(|_| {
        let request = TestRequest::get()
            .uri("/v1/duplicates?space=text")
            .to_request();
        test::call_service(&app, request)
    });
    let opener = async {
        backend.gate.arrival().await;
        backend.gate.open();
    };
    let (responses, ()) =
        futures_util::future::join(futures_util::future::join_all(requests), opener).await;
    for response in responses {
        let (status, body) = json_of(response).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["groups"][0]["members"], json!(["a", "b"]), "{body}");
        assert_eq!(body["generation"], 2, "{body}");
        assert_eq!(body["model_version"], "v1", "{body}");
        assert!(
            body["computed_at"].as_str().unwrap().ends_with('Z'),
            "{body}"
        );
        assert!(body["age_s"].as_f64().unwrap() >= 0.0, "{body}");
    }
    assert_eq!(backend.report_calls.load(Ordering::SeqCst), 1);

    // The same options by POST: served from the store, with its age.
    let request = TestRequest::post()
        .uri("/v1/duplicates")
        .set_json(json!({"space": "text"}))
        .to_request();
    let response = test::call_service(&app, request).await;
    assert!(response.headers().contains_key(header::AGE));
    let (status, body) = json_of(response).await;
    assert_eq!((status, body["generation"].clone()), (200, json!(2)));
    assert_eq!(backend.report_calls.load(Ordering::SeqCst), 1);

    // Other options are another report; a write makes the next request compute afresh.
    let request = TestRequest::get().uri("/v1/noise").to_request();
    assert_eq!(test::call_service(&app, request).await.status(), 200);
    assert_eq!(backend.report_calls.load(Ordering::SeqCst), 2);
    let request = post_json("/v1/items", json!({"id": "c", "title": "RED CAR"}));
    assert_eq!(
        test::call_service(&app, request.to_request())
            .await
            .status(),
        201
    );
    let request = TestRequest::get()
        .uri("/v1/duplicates?space=text")
        .to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["groups"][0]["members"],
        json!(["a", "b", "c"]),
        "{body}"
    );
    assert_eq!(body["generation"], 3, "{body}");
    assert_eq!(backend.report_calls.load(Ordering::SeqCst), 3);
}

#[actix_web::test]
async fn reports_need_the_key_when_reads_do() {
    let app = app!(
        FakeBackend::new(),
        ServerConfig {
            read_auth: true,
            ..keyed()
        }
    );
    for request in [
        TestRequest::get().uri("/v1/noise"),
        TestRequest::get().uri("/v1/duplicates"),
        TestRequest::post()
            .uri("/v1/duplicates")
            .set_json(json!({})),
    ] {
        assert_error!(app, request.to_request(), 401, "unauthorized", "");
    }
    for request in [
        TestRequest::get().uri("/v1/noise"),
        TestRequest::get().uri("/v1/duplicates"),
        TestRequest::post()
            .uri("/v1/duplicates")
            .set_json(json!({})),
    ] {
        let response = test::call_service(&app, request.insert_header(bearer()).to_request()).await;
        assert_eq!(response.status(), 200);
    }
}

#[actix_web::test]
async fn training_settings_out_of_range_are_refused_before_a_job_starts() {
    let backend = FakeBackend::new();
    let app = app!(backend.clone(), keyed());
    for (body, field) in [
        (json!({"batch_size": 0}), "batch_size"),
        (json!({"batch_size": 1}), "batch_size"),
        (json!({"epochs": 0}), "epochs"),
        (json!({"learning_rate": 0.0}), "learning_rate"),
        (json!({"learning_rate": -1e-3}), "learning_rate"),
        (json!({"validation_fraction": -0.1}), "validation_fraction"),
        (json!({"validation_fraction": 0.25}), "validation_fraction"),
        (
            json!({"finetune_image": true, "finetune_blocks": 0}),
            "finetune_blocks",
        ),
        (json!({"finetune_blocks": 2}), "finetune_blocks"),
    ] {
        let request = post_json("/v1/train", body.clone());
        let message = assert_error!(app, request.to_request(), 400, "invalid_argument", field);
        assert!(!message.is_empty(), "{body}");
    }
    // Nothing started: the first valid request is the first job.
    let request = post_json(
        "/v1/train",
        json!({"batch_size": 2, "epochs": 1, "validation_fraction": 0.2}),
    );
    let (status, body) = json_of(test::call_service(&app, request.to_request()).await).await;
    assert_eq!((status, body["job_id"].clone()), (202, json!("job-1")));
}

#[actix_web::test]
async fn shed_counters_are_exported_from_start_up() {
    let app = app!(FakeBackend::new(), keyed());
    let request = TestRequest::get().uri("/metrics").to_request();
    let response = test::call_service(&app, request).await;
    let text = String::from_utf8(test::read_body(response).await.to_vec()).unwrap();
    for queue in ["blocking", "classify", "search"] {
        let line = format!("trio_requests_shed_total{{queue=\"{queue}\"}} 0");
        assert!(text.contains(&line), "{line} missing from:\n{text}");
    }
}
