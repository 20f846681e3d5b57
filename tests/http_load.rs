//! Behaviour under concurrency: dynamic batching, load shedding, timeouts, concurrent deletes
//! and graceful shutdown. No assertion depends on how long anything takes: the fake backend
//! holds a call at its gate until the test opens it, and says when a call has arrived.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::test::{self, TestRequest};
use serde_json::json;
use support::{expect_error, json_of, FakeBackend, OpenOnDrop, HOLD};
use trio_server::{ApiKey, AppState, BatchConfig, ServerConfig};

const KEY: &str = "load-key";

fn config(batch: BatchConfig, max_in_flight: usize) -> ServerConfig {
    ServerConfig {
        api_key: Some(ApiKey::new(KEY).unwrap()),
        batch,
        max_in_flight,
        ..ServerConfig::default()
    }
}

fn classify(title: &str) -> TestRequest {
    TestRequest::post()
        .uri("/v1/classify")
        .set_json(json!({ "title": title }))
}

/// Scrapes /metrics until `line` appears: the way to wait for spawned requests to reach a
/// queue without sleeping. Each scrape yields to the spawned requests.
macro_rules! wait_for_metric {
    ($app:expr, $line:expr) => {{
        let mut seen = String::new();
        for _ in 0..10_000 {
            actix_web::rt::task::yield_now().await;
            let response =
                test::call_service(&*$app, TestRequest::get().uri("/metrics").to_request()).await;
            seen = String::from_utf8(test::read_body(response).await.to_vec()).unwrap();
            if seen.contains($line) {
                break;
            }
        }
        assert!(seen.contains($line), "never saw {}:\n{seen}", $line);
    }};
}

#[actix_web::test]
async fn concurrent_classifications_are_batched() {
    let backend = FakeBackend::new();
    let _open = OpenOnDrop(backend.clone());
    let batch = BatchConfig {
        max_batch: 16,
        max_wait: Duration::ZERO,
        queue_capacity: 64,
    };
    let app = Rc::new(app!(backend.clone(), config(batch, 8)));

    // The first request occupies the batch worker at the gate...
    let first = {
        let app = app.clone();
        actix_web::rt::spawn(
            async move { test::call_service(&*app, classify(HOLD).to_request()).await },
        )
    };
    backend.gate.arrival().await;
    // ...while six more queue up behind it.
    let rest: Vec<_> = ["dog", "cat", "fish", "bird", "car", "tree"]
        .into_iter()
        .map(|title| {
            let app = app.clone();
            actix_web::rt::spawn(async move {
                test::call_service(&*app, classify(title).to_request()).await
            })
        })
        .collect();
    wait_for_metric!(app, r#"trio_queue_depth{queue="classify"} 6"#);
    backend.gate.open();

    assert_eq!(first.await.unwrap().status(), 200);
    for (handle, title) in rest
        .into_iter()
        .zip(["dog", "cat", "fish", "bird", "car", "tree"])
    {
        let (status, body) = json_of(handle.await.unwrap()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["labels"][0]["label"], title,
            "answers reach their own requests"
        );
    }
    assert_eq!(backend.batch_sizes("classify"), vec![1, 6]);
    wait_for_metric!(app, r#"trio_batch_size_sum{batcher="classify"} 7"#);
    wait_for_metric!(app, r#"trio_batch_size_count{batcher="classify"} 2"#);
}

#[actix_web::test]
async fn a_full_batch_queue_sheds_with_503() {
    let backend = FakeBackend::new();
    let _open = OpenOnDrop(backend.clone());
    let batch = BatchConfig {
        max_batch: 1,
        max_wait: Duration::ZERO,
        queue_capacity: 2,
    };
    let app = Rc::new(app!(backend.clone(), config(batch, 8)));
    let search = |text: &str| {
        TestRequest::post()
            .uri("/v1/search")
            .set_json(json!({ "text": text }))
            .to_request()
    };

    let busy = {
        let app = app.clone();
        let request = search(HOLD);
        actix_web::rt::spawn(async move { test::call_service(&*app, request).await })
    };
    backend.gate.arrival().await;
    let queued: Vec<_> = (0..2)
        .map(|_| {
            let app = app.clone();
            let request = search("cat");
            actix_web::rt::spawn(async move { test::call_service(&*app, request).await })
        })
        .collect();
    wait_for_metric!(app, r#"trio_queue_depth{queue="search"} 2"#);

    let response = test::call_service(&*app, search("cat")).await;
    assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "1");
    expect_error(response, 503, "overloaded", "search").await;
    wait_for_metric!(app, r#"trio_requests_shed_total{queue="search"} 1"#);

    backend.gate.open();
    assert_eq!(busy.await.unwrap().status(), 200);
    for handle in queued {
        assert_eq!(handle.await.unwrap().status(), 200);
    }
    // Capacity is back.
    assert_eq!(test::call_service(&*app, search("cat")).await.status(), 200);
}

#[actix_web::test]
async fn a_full_work_queue_sheds_with_503_but_health_still_answers() {
    let backend = FakeBackend::new();
    let _open = OpenOnDrop(backend.clone());
    let app = Rc::new(app!(backend.clone(), config(BatchConfig::default(), 1)));

    let busy = {
        let app = app.clone();
        let request = TestRequest::get().uri("/v1/items/hold").to_request();
        actix_web::rt::spawn(async move { test::call_service(&*app, request).await })
    };
    backend.gate.arrival().await;

    let request = TestRequest::get().uri("/v1/items/other").to_request();
    expect_error(
        test::call_service(&*app, request).await,
        503,
        "overloaded",
        "work queue",
    )
    .await;
    let request = TestRequest::get().uri("/healthz").to_request();
    assert_eq!(test::call_service(&*app, request).await.status(), 200);
    wait_for_metric!(app, r#"trio_queue_depth{queue="blocking"} 1"#);
    wait_for_metric!(app, r#"trio_requests_shed_total{queue="blocking"} 1"#);

    backend.gate.open();
    expect_error(busy.await.unwrap(), 404, "not_found", "hold").await;
    let request = TestRequest::get().uri("/v1/items/other").to_request();
    expect_error(
        test::call_service(&*app, request).await,
        404,
        "not_found",
        "other",
    )
    .await;
}

#[actix_web::test]
async fn slow_backend_calls_time_out_with_504() {
    let backend = FakeBackend::new();
    let _open = OpenOnDrop(backend.clone());
    let app = app!(
        backend.clone(),
        ServerConfig {
            request_timeout: Duration::from_millis(50),
            ..config(BatchConfig::default(), 4)
        }
    );
    // The gate stays closed: these calls cannot finish until the test ends.
    let request = TestRequest::get().uri("/v1/items/hold").to_request();
    assert_error!(app, request, 504, "timeout", "50 ms");
    assert_error!(
        app,
        classify(HOLD).to_request(),
        504,
        "timeout",
        "classification"
    );
}

#[actix_web::test]
async fn concurrent_deletes_of_one_item_succeed_exactly_once() {
    let backend = FakeBackend::new();
    let app = app!(backend, config(BatchConfig::default(), 64));
    let bearer = (header::AUTHORIZATION, format!("Bearer {KEY}"));
    for round in 0..5 {
        let id = format!("doomed-{round}");
        let request = TestRequest::post()
            .uri("/v1/items")
            .insert_header(bearer.clone())
            .set_json(json!({ "id": id, "title": "doomed" }))
            .to_request();
        assert_eq!(test::call_service(&app, request).await.status(), 201);

        assert_delete_race!(app, id, bearer.clone());
    }
}

/// Sends one HTTP/1.1 request over a real socket and returns the whole response.
fn raw_request(address: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// A real server on a free loopback port: its address, its handle and the task serving it.
fn serve_on_loopback(
    backend: std::sync::Arc<FakeBackend>,
    config: ServerConfig,
) -> (
    std::net::SocketAddr,
    actix_web::dev::ServerHandle,
    actix_web::rt::task::JoinHandle<std::io::Result<()>>,
) {
    let state = AppState::new(backend, config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let server = trio_server::serve(state, listener).unwrap();
    let handle = server.handle();
    (address, handle, actix_web::rt::spawn(server))
}

#[actix_web::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let backend = FakeBackend::new();
    let _open = OpenOnDrop(backend.clone());
    let (address, handle, serving) = serve_on_loopback(
        backend.clone(),
        ServerConfig {
            workers: 1,
            ..config(BatchConfig::default(), 4)
        },
    );

    let client = std::thread::spawn(move || raw_request(address, "/v1/items/hold"));
    backend.gate.arrival().await;
    // Stop while the request is held in the backend; stopping waits for it.
    let stopping = actix_web::rt::spawn(async move { handle.stop(true).await });
    actix_web::rt::task::yield_now().await;
    backend.gate.open();
    stopping.await.unwrap();
    serving.await.unwrap().unwrap();

    let response = client.join().unwrap();
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(response.contains(r#""code":"not_found""#), "{response}");
}

/// Sends `head` and then `body` one byte at a time, a byte every 50 ms, until the server
/// answers or closes; returns what it answered. Bounded: 30 s of reading at most.
fn trickle(address: std::net::SocketAddr, head: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let mut response = Vec::new();
    let mut unsent = body.iter();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        let mut buffer = [0u8; 4096];
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buffer[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if !response.is_empty() {
                    continue;
                }
                if let Some(byte) = unsent.next() {
                    // The server may already have closed; the answer is what matters.
                    let _ = stream.write_all(&[*byte]);
                }
            }
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

#[actix_web::test]
async fn slow_bodies_and_headers_are_answered_408() {
    let backend = FakeBackend::new();
    let (address, handle, serving) = serve_on_loopback(
        backend,
        ServerConfig {
            workers: 1,
            header_timeout: Duration::from_millis(500),
            body_timeout: Duration::from_millis(500),
            ..config(BatchConfig::default(), 4)
        },
    );

    // A declared 100-byte body sent a byte at a time takes 5 s; the server stops waiting.
    let head = format!(
        "POST /v1/items HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    );
    let slow_body = std::thread::spawn(move || trickle(address, &head, &[b' '; 100]));
    // Headers that never end.
    let slow_head = std::thread::spawn(move || {
        trickle(
            address,
            "POST /v1/items HTTP/1.1\r\nHost: localhost\r\n",
            &[b'x'; 100],
        )
    });
    let (body, head) = actix_web::rt::task::spawn_blocking(move || {
        (slow_body.join().unwrap(), slow_head.join().unwrap())
    })
    .await
    .unwrap();
    assert!(body.starts_with("HTTP/1.1 408"), "{body}");
    assert!(body.contains(r#""code":"body_timeout""#), "{body}");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");

    handle.stop(true).await;
    serving.await.unwrap().unwrap();
}
