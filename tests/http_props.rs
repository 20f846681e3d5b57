//! Random request bodies against every JSON route: any JSON value in any field of a valid body,
//! and any JSON value as the whole body, must get an answer below 500 (a 4xx names the problem)
//! and never panic the server. Driven through `actix_web::test` over the fake backend.
#![allow(clippy::unwrap_used)]

mod support;

use actix_web::test::{self, TestRequest};
use proptest::prelude::*;
use serde_json::{json, Value};
use support::{bearer, FakeBackend};

/// Any JSON value, a few levels deep, with the awkward corners likely: huge and negative
/// numbers, floats, empty and odd strings.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::from)),
        prop_oneof![Just(0i64), Just(1), Just(-1), Just(2), Just(1025)].prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
        prop_oneof![
            Just(""),
            Just(" "),
            Just("/"),
            Just("fused"),
            Just("image"),
            Just("cat"),
            Just("data:image/png;base64,AAAA"),
            Just("iVBORw0KGgo="),
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON route, a body it accepts, and the fields a body of it may have.
struct Route {
    path: &'static str,
    valid: Value,
    fields: &'static [&'static str],
}

fn routes() -> Vec<Route> {
    vec![
        Route {
            path: "/v1/items",
            valid: json!({"title": "a red car", "label": "car"}),
            fields: &[
                "id",
                "title",
                "description",
                "tags",
                "label",
                "metadata",
                "image",
            ],
        },
        Route {
            path: "/v1/classify",
            valid: json!({"title": "a red car"}),
            fields: &["image", "title", "description", "top_k", "claimed"],
        },
        Route {
            path: "/v1/search",
            valid: json!({"text": "a red car"}),
            fields: &["text", "image", "id", "space", "k", "offset", "filters"],
        },
        Route {
            path: "/v1/train",
            valid: json!({"epochs": 1}),
            fields: &[
                "epochs",
                "learning_rate",
                "batch_size",
                "seed",
                "validation_fraction",
                "activate",
                "finetune_image",
                "finetune_blocks",
            ],
        },
        Route {
            path: "/v1/duplicates",
            valid: json!({"space": "text"}),
            fields: &["space", "threshold", "limit"],
        },
    ]
}

/// One random request.
#[derive(Debug, Clone)]
enum Case {
    /// Route index, field index, value for it.
    Field(usize, usize, Value),
    /// Route index, the whole body.
    Body(usize, Value),
    /// `GET /v1/duplicates` or `/v1/noise` with one parameter set to the value's text.
    Query(bool, usize, Value),
    /// `POST /v1/models/{version}/activate`.
    Activate(String),
}

fn any_case() -> impl Strategy<Value = Case> {
    prop_oneof![
        (0..5usize, 0..8usize, any_json()).prop_map(|(r, f, v)| Case::Field(r, f, v)),
        (0..5usize, any_json()).prop_map(|(r, v)| Case::Body(r, v)),
        (any::<bool>(), 0..3usize, any_json()).prop_map(|(n, p, v)| Case::Query(n, p, v)),
        "\\PC{0,16}".prop_map(Case::Activate),
    ]
}

/// Percent-encodes everything but unreserved characters.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn request(case: &Case, routes: &[Route]) -> TestRequest {
    let post = |path: &str, body: &Value| {
        TestRequest::post()
            .uri(path)
            .insert_header(bearer())
            .set_json(body)
    };
    match case {
        Case::Field(r, f, value) => {
            let route = &routes[*r];
            let field = route.fields[*f % route.fields.len()];
            let mut body = route.valid.clone();
            body[field] = value.clone();
            post(route.path, &body)
        }
        Case::Body(r, value) => post(routes[*r].path, value),
        Case::Query(noise, p, value) => {
            let (path, params) = if *noise {
                ("/v1/noise", ["limit", "min_confidence", "limit"])
            } else {
                ("/v1/duplicates", ["space", "threshold", "limit"])
            };
            let text = match value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            TestRequest::get().uri(&format!("{path}?{}={}", params[*p], encode(&text)))
        }
        Case::Activate(version) => TestRequest::post()
            .uri(&format!("/v1/models/{}/activate", encode(version)))
            .insert_header(bearer()),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn no_request_body_is_a_server_error(cases in prop::collection::vec(any_case(), 1..24)) {
        let routes = routes();
        let statuses = actix_web::rt::System::new().block_on(async {
            let backend = FakeBackend::new();
            let app = app!(backend, support::keyed());
            let mut statuses = Vec::new();
            for case in &cases {
                let response = test::call_service(&app, request(case, &routes).to_request()).await;
                let status = response.status().as_u16();
                let body = test::read_body(response).await;
                statuses.push((status, String::from_utf8_lossy(&body).into_owned()));
            }
            statuses
        });
        for (case, (status, body)) in cases.iter().zip(statuses) {
            prop_assert!(status < 500, "{case:?} answered {status}: {body}");
            if status >= 400 {
                let error: Value = serde_json::from_str(&body).unwrap_or_default();
                prop_assert!(
                    error["error"]["code"].is_string() && error["error"]["message"].is_string(),
                    "{case:?} answered {status} without a JSON error: {body}"
                );
            }
        }
    }
}
