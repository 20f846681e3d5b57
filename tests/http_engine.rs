//! Bad input over HTTP against the real engine backend (the towers and a small demo catalogue),
//! not the fake: truncated multipart, a non-image sent as an image, a decompression bomb, 10 MB
//! of text, invalid JSON, unknown fields, concurrent deletes of one id. Each gets its error, and
//! afterwards the server still answers health checks and searches.
#![allow(clippy::unwrap_used)]

mod engine_support;
mod support;

use std::io::Write;
use std::sync::OnceLock;

use actix_web::http::header;
use actix_web::test::{self, TestRequest};
use engine_support::{engine_catalogue, EngineCatalogue, PER_LABEL};
use serde_json::{json, Value};
use support::{b64, bearer, json_of, keyed, multipart, post_json, post_multipart};
use trio_server::ServerConfig;

/// One catalogue for the whole binary: loading the towers and embedding the items is the slow
/// part. Tests add and delete only items of their own.
fn catalogue() -> &'static EngineCatalogue {
    static CATALOGUE: OnceLock<EngineCatalogue> = OnceLock::new();
    CATALOGUE.get_or_init(|| engine_catalogue(false))
}

fn multipart_item(parts: &[support::Part<'_>]) -> TestRequest {
    post_multipart("/v1/items", multipart(parts))
}

/// The server still answers: `/healthz` is 200 and a text search finds catalogue items.
macro_rules! assert_healthy {
    ($app:expr) => {{
        let request = TestRequest::get().uri("/healthz").to_request();
        assert_eq!(test::call_service(&$app, request).await.status(), 200);
        let request = post_json("/v1/search", json!({"text": "a cat", "space": "text", "k": 3}));
        let (status, body) = json_of(test::call_service(&$app, request.to_request()).await).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["hits"].as_array().unwrap().len(), 3, "{body}");
    }};
}

/// A valid PNG of `width` x `height` black 1-bit pixels: a few kilobytes that decode to
/// `width * height` pixels (three bytes each once converted to RGB).
fn png_bomb(width: u32, height: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[1, 0, 0, 0, 0]); // 1-bit greyscale, deflate, no filter, no interlace
    let row = vec![0u8; 1 + (width as usize).div_ceil(8)]; // filter byte + packed pixels
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    for _ in 0..height {
        z.write_all(&row).unwrap();
    }
    let idat = z.finish().unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &idat);
    chunk(&mut png, b"IEND", &[]);
    png
}

/// CRC-32 (IEEE), as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn the_bomb_is_a_valid_png() {
    // The decoder agrees with the header: the bomb is a real image, not a malformed file.
    let small = png_bomb(33, 5);
    let img = image::load_from_memory(&small).unwrap();
    assert_eq!((img.width(), img.height()), (33, 5));
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926); // the standard check value
}

#[actix_web::test]
async fn truncated_multipart_is_a_400() {
    let app = app!(catalogue().backend(), keyed());
    let image = std::fs::read(catalogue().rows.unseen[0].image.as_ref().unwrap()).unwrap();
    let mut body = multipart(&[
        ("id", None, None, b"truncated"),
        ("image", Some("e.png"), Some("image/png"), &image),
    ]);
    // Cut inside the image part: no closing boundary ever arrives.
    body.truncate(body.len() - 100);
    let request = post_multipart("/v1/items", body).to_request();
    assert_error!(app, request, 400, "invalid_multipart", "");
    let request = TestRequest::get().uri("/v1/items/truncated").to_request();
    assert_error!(app, request, 404, "not_found", "truncated");
    assert_healthy!(app);
}

#[actix_web::test]
async fn a_non_image_with_an_image_content_type_is_415() {
    let app = app!(catalogue().backend(), keyed());
    let text = b"this is a text file, whatever its content type says";
    let request = multipart_item(&[
        ("id", None, None, b"not-an-image"),
        ("title", None, None, b"fake"),
        ("image", Some("cat.png"), Some("image/png"), text),
    ]);
    assert_error!(app, request.to_request(), 415, "not_an_image", "");
    let request = TestRequest::get()
        .uri("/v1/items/not-an-image")
        .to_request();
    assert_eq!(test::call_service(&app, request).await.status(), 404);

    for path in ["/v1/classify", "/v1/search"] {
        let request = post_json(path, json!({ "image": b64(text) }));
        assert_error!(app, request.to_request(), 415, "not_an_image", "");
    }
    // A PNG signature with nothing after it.
    let request = post_json(
        "/v1/classify",
        json!({ "image": b64(b"\x89PNG\r\n\x1a\n") }),
    );
    assert_error!(app, request.to_request(), 415, "not_an_image", "");
    assert_healthy!(app);
}

#[actix_web::test]
async fn a_decompression_bomb_is_413_before_it_is_decoded() {
    let app = app!(catalogue().backend(), keyed());
    let max_pixels = ServerConfig::default().limits.max_pixels;
    // 10 000 x 10 000 = 100 M pixels (300 MB as RGB) in about 20 KB.
    let bomb = png_bomb(10_000, 10_000);
    assert!(bomb.len() < 100_000, "{} bytes", bomb.len());
    assert!(100_000_000 > max_pixels);
    let limit = max_pixels.to_string();

    let request = multipart_item(&[
        ("id", None, None, b"bomb"),
        ("image", Some("bomb.png"), Some("image/png"), &bomb),
    ]);
    assert_error!(app, request.to_request(), 413, "too_large", &limit);
    let request = post_json("/v1/items", json!({"id": "bomb", "image": b64(&bomb)}));
    assert_error!(app, request.to_request(), 413, "too_large", &limit);
    for path in ["/v1/classify", "/v1/search"] {
        let request = post_json(path, json!({ "image": b64(&bomb) }));
        assert_error!(app, request.to_request(), 413, "too_large", &limit);
    }
    let request = TestRequest::get().uri("/v1/items/bomb").to_request();
    assert_eq!(test::call_service(&app, request).await.status(), 404);
    assert_healthy!(app);
}

#[actix_web::test]
async fn ten_megabytes_of_text_is_413() {
    let app = app!(catalogue().backend(), keyed());
    let text = "a".repeat(10 * 1024 * 1024);
    let request = post_json("/v1/search", json!({ "text": text }));
    assert_error!(app, request.to_request(), 413, "text_too_long", "`text`");
    let request = post_json("/v1/classify", json!({ "title": text }));
    assert_error!(app, request.to_request(), 413, "text_too_long", "`title`");
    let request = post_json(
        "/v1/items",
        json!({"id": "long", "title": "ok", "description": text}),
    );
    assert_error!(
        app,
        request.to_request(),
        413,
        "text_too_long",
        "`description`"
    );
    let request = multipart_item(&[
        ("id", None, None, b"long"),
        ("description", None, None, text.as_bytes()),
    ]);
    assert_error!(
        app,
        request.to_request(),
        413,
        "text_too_long",
        "`description`"
    );
    let request = TestRequest::get().uri("/v1/items/long").to_request();
    assert_eq!(test::call_service(&app, request).await.status(), 404);
    assert_healthy!(app);
}

#[actix_web::test]
async fn invalid_json_and_unknown_fields_are_400() {
    let app = app!(catalogue().backend(), keyed());
    for path in ["/v1/search", "/v1/classify", "/v1/items"] {
        let request = TestRequest::post()
            .uri(path)
            .insert_header(bearer())
            .insert_header((header::CONTENT_TYPE, "application/json"))
            .set_payload("{\"ti")
            .to_request();
        assert_error!(app, request, 400, "invalid_json", "");
    }
    for (path, body) in [
        ("/v1/search", json!({"text": "cat", "bogus": 1})),
        ("/v1/classify", json!({"title": "cat", "topk": 3})),
        ("/v1/items", json!({"title": "cat", "lable": "x"})),
    ] {
        let field = body
            .as_object()
            .unwrap()
            .keys()
            .find(|k| !["text", "title"].contains(&k.as_str()))
            .unwrap()
            .clone();
        let request = post_json(path, body);
        assert_error!(app, request.to_request(), 400, "invalid_body", &field);
    }
    // An unknown part of a multipart form, and an unknown field inside its `fields` part.
    let request = multipart_item(&[
        ("title", None, None, b"cat"),
        ("colour", None, None, b"red"),
    ]);
    assert_error!(
        app,
        request.to_request(),
        400,
        "invalid_multipart",
        "colour"
    );
    let request = multipart_item(&[("fields", None, None, br#"{"title": "cat", "size": 3}"#)]);
    assert_error!(app, request.to_request(), 400, "invalid_body", "size");
    // Nothing was stored by any of them.
    let request = TestRequest::get().uri("/v1/items?limit=1").to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200);
    assert!(body["total"].as_u64().unwrap() >= (4 * PER_LABEL) as u64);
    assert_healthy!(app);
}

#[actix_web::test]
async fn concurrent_deletes_of_one_id_succeed_exactly_once() {
    let app = app!(catalogue().backend(), keyed());
    let image = std::fs::read(catalogue().rows.unseen[1].image.as_ref().unwrap()).unwrap();
    for round in 0..3 {
        let id = format!("doomed-{round}");
        let request = post_json(
            "/v1/items",
            json!({"id": id, "title": "a doomed purple kangaroo", "image": b64(&image)}),
        );
        let (status, body) = json_of(test::call_service(&app, request.to_request()).await).await;
        assert_eq!(status, 201, "{body}");
        let search = || {
            post_json(
                "/v1/search",
                json!({"text": "a doomed purple kangaroo", "space": "text", "k": 5}),
            )
            .to_request()
        };
        let (_, hits) = json_of(test::call_service(&app, search()).await).await;
        assert_eq!(hits["hits"][0]["id"], id.as_str(), "{hits}");

        assert_delete_race!(app, id, bearer());
        // Gone from the store and from the index.
        let request = TestRequest::get()
            .uri(&format!("/v1/items/{id}"))
            .to_request();
        assert_eq!(test::call_service(&app, request).await.status(), 404);
        let (_, hits) = json_of(test::call_service(&app, search()).await).await;
        assert!(
            hits["hits"]
                .as_array()
                .unwrap()
                .iter()
                .all(|h| h["id"] != id.as_str()),
            "{hits}"
        );
    }
    assert_healthy!(app);
}

/// `POST /v1/train` with `"activate": false` stores a new model and leaves the one in use
/// active (a candidate to compare before switching); the job says so. The run also fine-tunes
/// the image tower's top block (`finetune_image`), which the stored model then carries.
#[actix_web::test]
async fn training_without_activating_keeps_the_model_in_use() {
    let catalogue = catalogue();
    let store = catalogue.catalog.store();
    let active_before = store.active_version().unwrap();
    let stored_before = store.list_models().unwrap().len();
    let app = app!(catalogue.backend(), keyed());
    let request = post_json(
        "/v1/train",
        json!({"epochs": 3, "seed": 1, "activate": false, "finetune_image": true, "finetune_blocks": 1}),
    );
    let (status, body) = json_of(test::call_service(&app, request.to_request()).await).await;
    assert_eq!(status, 202, "{body}");
    let job = body["job_id"].as_str().unwrap().to_string();
    let mut last = Value::Null;
    for _ in 0..600 {
        let request = TestRequest::get()
            .uri(&format!("/v1/jobs/{job}"))
            .to_request();
        let (_, body) = json_of(test::call_service(&app, request).await).await;
        let state = body["state"].as_str().unwrap_or_default().to_string();
        last = body;
        if state != "queued" && state != "running" {
            break;
        }
        actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(last["state"], "succeeded", "{last}");
    assert!(
        last["message"].as_str().unwrap().contains("not active"),
        "{last}"
    );
    assert_eq!(store.active_version().unwrap(), active_before);
    let models = store.list_models().unwrap();
    assert_eq!(models.len(), stored_before + 1);
    let newest = models.iter().map(|m| m.version).max().unwrap();
    let stored = store.get_model(newest).unwrap().unwrap();
    let trained = trio_engine::train::TrainedModel::from_bytes(&stored.safetensors).unwrap();
    let tower = trained.image_tower.expect("a fine-tuned image tower");
    assert_eq!(tower.report.blocks, 1);

    // `finetune_blocks` means nothing without `finetune_image`.
    let request = post_json("/v1/train", json!({"finetune_blocks": 2}));
    let (status, body) = json_of(test::call_service(&app, request.to_request()).await).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("finetune_blocks"), "{body}");
    assert_healthy!(app);
}

/// A PNG no other test uses: `seed` picks its pixels, so its upload file is this test's own.
fn unique_png(seed: u64) -> Vec<u8> {
    let image = image::RgbImage::from_fn(24, 24, |x, y| {
        let v = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(u64::from(x * 31 + y * 17));
        image::Rgb([(v >> 8) as u8, (v >> 24) as u8, (v >> 40) as u8])
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    png
}

/// Where the backend keeps the upload of `bytes`.
fn upload_path(bytes: &[u8], ext: &str) -> std::path::PathBuf {
    use sha2::Digest;
    catalogue().dir.path().join("uploads").join(format!(
        "{}.{ext}",
        hex::encode(sha2::Sha256::digest(bytes))
    ))
}

/// Bytes that start like an image but do not decode: the first half of a real PNG, and a GIF
/// header with a 16x16 screen followed by noise.
fn undecodable() -> [(&'static str, Vec<u8>); 2] {
    let png = std::fs::read(catalogue().rows.unseen[2].image.as_ref().unwrap()).unwrap();
    let half = png[..png.len() / 2].to_vec();
    let mut gif = b"GIF89a\x10\x00\x10\x00".to_vec();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..200 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        gif.push(state as u8);
    }
    [("half png", half), ("gif noise", gif)]
}

#[actix_web::test]
async fn undecodable_images_are_415_on_every_route() {
    let app = app!(catalogue().backend(), keyed());
    for (what, bytes) in undecodable() {
        let request = post_json(
            "/v1/items",
            json!({"id": "undecodable", "title": what, "image": b64(&bytes)}),
        );
        assert_error!(app, request.to_request(), 415, "not_an_image", "");
        for (path, body) in [
            ("/v1/classify", json!({ "image": b64(&bytes) })),
            ("/v1/search", json!({ "image": b64(&bytes) })),
            (
                "/v1/search",
                json!({ "image": b64(&bytes), "space": "image" }),
            ),
        ] {
            let request = post_json(path, body.clone());
            let response = test::call_service(&app, request.to_request()).await;
            let (status, reply) = json_of(response).await;
            assert_eq!(
                (status, reply["error"]["code"].as_str()),
                (415, Some("not_an_image")),
                "{what} to {path}: {reply}"
            );
        }
        // Nothing stored, and no file written for it.
        assert!(!upload_path(&bytes, "png").exists() && !upload_path(&bytes, "gif").exists());
    }
    let request = TestRequest::get().uri("/v1/items/undecodable").to_request();
    assert_eq!(test::call_service(&app, request).await.status(), 404);
    assert_healthy!(app);
}

/// Twenty concurrent adds of one id: one 201, nineteen 409, and the stored item is the one the
/// 201 acknowledged.
#[actix_web::test]
async fn concurrent_adds_of_one_id_store_exactly_the_acknowledged_one() {
    let app = app!(catalogue().backend(), keyed());
    for round in 0..3u64 {
        let id = format!("race-{round}");
        let image = unique_png(1000 + round);
        let adds = (0..20).map(|writer| {
            let mut body = json!({"id": id, "title": format!("writer {writer} of round {round}")});
            // One round with the same image for every writer: the shared file must stay.
            if round == 2 {
                body["image"] = b64(&image).into();
            }
            test::call_service(&app, post_json("/v1/items", body).to_request())
        });
        let mut created = Vec::new();
        let mut conflicts = 0;
        for response in futures_util::future::join_all(adds).await {
            let (status, body) = json_of(response).await;
            match status {
                201 => created.push(body),
                409 => {
                    assert_eq!(body["error"]["code"], "conflict", "{body}");
                    conflicts += 1;
                }
                other => panic!("status {other}: {body}"),
            }
        }
        assert_eq!((created.len(), conflicts), (1, 19), "{created:?}");
        let request = TestRequest::get()
            .uri(&format!("/v1/items/{id}"))
            .to_request();
        let (status, stored) = json_of(test::call_service(&app, request).await).await;
        assert_eq!(status, 200);
        assert_eq!(stored["title"], created[0]["title"], "{stored}");
        if round == 2 {
            assert!(upload_path(&image, "png").is_file());
            let request = TestRequest::get()
                .uri(&format!("/v1/items/{id}/image"))
                .to_request();
            let response = test::call_service(&app, request).await;
            assert_eq!(response.status(), 200);
            assert_eq!(test::read_body(response).await.to_vec(), image);
        }
    }
}

/// An upload refused for any reason leaves no file; a file a stored item uses is never removed.
#[actix_web::test]
async fn refused_uploads_leave_no_files() {
    let app = app!(catalogue().backend(), keyed());
    let kept = unique_png(2000);
    let request = post_json(
        "/v1/items",
        json!({"id": "upload-kept", "title": "kept", "image": b64(&kept)}),
    );
    let (status, body) = json_of(test::call_service(&app, request.to_request()).await).await;
    assert_eq!(status, 201, "{body}");
    assert!(upload_path(&kept, "png").is_file());

    // An id that exists, with a new image: 409 and no file.
    let orphan = unique_png(2001);
    for _ in 0..5 {
        let request = post_json(
            "/v1/items",
            json!({"id": "upload-kept", "title": "again", "image": b64(&orphan)}),
        );
        assert_error!(app, request.to_request(), 409, "conflict", "upload-kept");
    }
    assert!(!upload_path(&orphan, "png").exists());
    // The same image as the stored item, refused: its file stays.
    let request = post_json(
        "/v1/items",
        json!({"id": "upload-kept", "title": "same image", "image": b64(&kept)}),
    );
    assert_error!(app, request.to_request(), 409, "conflict", "upload-kept");
    assert!(upload_path(&kept, "png").is_file());
    // Refused by the id check, with a decodable image: no file either.
    let request = post_json(
        "/v1/items",
        json!({"id": "upload-bad-id ", "title": "t", "image": b64(&orphan)}),
    );
    assert_error!(app, request.to_request(), 400, "invalid_argument", "id");
    assert!(!upload_path(&orphan, "png").exists());
}

/// The item's image file removed behind the server's back: a 404 that says so.
#[actix_web::test]
async fn a_missing_image_file_is_404_image_missing() {
    let app = app!(catalogue().backend(), keyed());
    let image = unique_png(3000);
    let request = post_json(
        "/v1/items",
        json!({"id": "image-gone", "title": "soon without image", "image": b64(&image)}),
    );
    assert_eq!(
        test::call_service(&app, request.to_request())
            .await
            .status(),
        201
    );
    std::fs::remove_file(upload_path(&image, "png")).unwrap();
    let request = TestRequest::get()
        .uri("/v1/items/image-gone/image")
        .to_request();
    let message = assert_error!(app, request, 404, "image_missing", "image-gone");
    assert!(
        !message.contains(".images") && !message.contains('/'),
        "{message}"
    );
    assert_healthy!(app);
}

/// No error message names a file on the server: not the uploads folder, not the catalogue's.
#[actix_web::test]
async fn error_messages_name_no_server_path() {
    let app = app!(catalogue().backend(), keyed());
    let dir = catalogue().dir.path().display().to_string();
    let [(_, half), (_, gif)] = undecodable();
    let image = unique_png(4000);
    let mut requests = vec![
        post_json(
            "/v1/items",
            json!({"id": "leak-1", "title": "t", "image": b64(&half)}),
        ),
        post_json("/v1/items", json!({"id": "leak-2", "image": b64(&gif)})),
        multipart_item(&[
            ("id", None, None, b"leak-3"),
            ("image", Some("x.png"), Some("image/png"), &half),
        ]),
        post_json("/v1/classify", json!({ "image": b64(&half) })),
        post_json(
            "/v1/search",
            json!({ "image": b64(&gif), "space": "image" }),
        ),
        post_json(
            "/v1/items",
            json!({"id": "leak-4", "title": "t", "image": b64(&image)}),
        ),
    ];
    requests.push(post_json(
        "/v1/items",
        json!({"id": "leak-4", "title": "t", "image": b64(&image)}),
    ));
    let mut errors = 0;
    for request in requests {
        let (status, body) = json_of(test::call_service(&app, request.to_request()).await).await;
        if status >= 400 {
            errors += 1;
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                !message.contains(&dir)
                    && !message.contains(".images")
                    && !message.contains("/tmp"),
                "status {status}: {message}"
            );
        }
    }
    assert_eq!(errors, 6);
    std::fs::remove_file(upload_path(&image, "png")).unwrap();
    let request = TestRequest::get()
        .uri("/v1/items/leak-4/image")
        .to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.to_string().contains(&dir), "{body}");
}

/// The sorted field names of a JSON object.
fn fields(value: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    names.sort_unstable();
    names
}

/// The reports are the engine's own report types (what `trio duplicates --json` and
/// `trio noise --json` print) with the server's freshness fields.
#[actix_web::test]
async fn reports_are_the_engines_reports_with_their_freshness() {
    let app = app!(catalogue().backend(), keyed());
    let freshness = ["age_s", "computed_at", "generation", "model_version"];

    let request = TestRequest::get().uri("/v1/duplicates").to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200, "{body}");
    // The default space is the image tower's, as for `trio duplicates`.
    assert_eq!(body["space"], "image", "{body}");

    // A re-listing: an item listed again under its title with another photo (the text space
    // groups items whose texts agree).
    let listed = &catalogue().rows.catalogue[0];
    let other_photo = catalogue().rows.catalogue[1].image.clone().unwrap();
    let request = post_json(
        "/v1/items",
        json!({"id": "listed-again", "title": listed.title, "image": b64(&std::fs::read(other_photo).unwrap())}),
    );
    let (status, body) = json_of(test::call_service(&app, request.to_request()).await).await;
    assert_eq!(status, 201, "{body}");
    let request = TestRequest::get()
        .uri("/v1/duplicates?space=text&threshold=0.5&limit=2")
        .to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200, "{body}");
    let mut expected = vec![
        "groups",
        "offset",
        "refused_merges",
        "space",
        "total",
        "without_thumbnail",
    ];
    expected.extend(freshness);
    expected.sort_unstable();
    assert_eq!(fields(&body), expected, "{body}");
    assert_eq!(body["space"], "text", "{body}");
    let groups = body["groups"].as_array().unwrap();
    assert!((1..=2).contains(&groups.len()), "{body}");
    for group in groups {
        assert_eq!(
            fields(group),
            ["id", "items", "kind", "members", "pairs"],
            "{body}"
        );
        let kind = group["kind"].as_str().unwrap();
        assert!(
            ["exact", "perceptual", "near", "relisting"].contains(&kind),
            "{body}"
        );
        assert!(group["members"].as_array().unwrap().len() >= 2, "{body}");
        let pair = &group["pairs"][0];
        assert!(pair["a"].is_string() && pair["b"].is_string(), "{body}");
        assert!(
            (0.0..=1.0).contains(&pair["score"].as_f64().unwrap()),
            "{body}"
        );
    }

    // An unseen fruit labelled as a mammal, so the noise report has an issue to show.
    let fruit = catalogue()
        .rows
        .unseen
        .iter()
        .find(|r| r.label.as_deref() == Some("food-fruit"))
        .unwrap();
    let image = std::fs::read(fruit.image.as_ref().unwrap()).unwrap();
    let request = post_json(
        "/v1/items",
        json!({"id": "mislabelled", "title": fruit.title, "label": "animal-mammal", "image": b64(&image)}),
    );
    let (status, body) = json_of(test::call_service(&app, request.to_request()).await).await;
    assert_eq!(status, 201, "{body}");
    let request = TestRequest::get().uri("/v1/noise?limit=3").to_request();
    let (status, body) = json_of(test::call_service(&app, request).await).await;
    assert_eq!(status, 200, "{body}");
    let mut expected = vec!["flagged", "issues", "labelled_items", "offset", "total"];
    expected.extend(freshness);
    expected.sort_unstable();
    assert_eq!(fields(&body), expected, "{body}");
    assert!(
        body["labelled_items"].as_u64().unwrap() >= (4 * PER_LABEL) as u64,
        "{body}"
    );
    let issues = body["issues"].as_array().unwrap();
    assert!(issues.len() <= 3, "{body}");
    for issue in issues {
        assert_eq!(
            fields(issue),
            [
                "given_label",
                "id",
                "image",
                "neighbour_agreement",
                "p_given",
                "p_suggested",
                "score",
                "suggested_label",
                "title"
            ],
            "{body}"
        );
        assert_ne!(issue["given_label"], issue["suggested_label"], "{body}");
    }
    let mango = issues.iter().find(|i| i["id"] == "mislabelled").unwrap();
    assert_eq!(
        (&mango["given_label"], &mango["suggested_label"]),
        (&json!("animal-mammal"), &json!("food-fruit")),
        "{body}"
    );
    let request = TestRequest::delete()
        .uri("/v1/items/mislabelled")
        .insert_header(bearer())
        .to_request();
    assert_eq!(test::call_service(&app, request).await.status(), 204);
}
