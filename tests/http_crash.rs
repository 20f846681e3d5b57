//! Crash consistency of the HTTP server: a real `trio serve` on 127.0.0.1 takes adds from 16
//! concurrent clients and is SIGKILLed mid-way; restarted on the same database, it must hold
//! every item it acknowledged with a 201, whole (same title and label, its image readable), and
//! none twice.
//!
//! Like `store_crash.rs`, the test runs the `trio` binary built next to this test executable
//! (`target/<profile>/trio`) with the real towers from `$TRIO_HOME`. Bounded: at most
//! `CLIENTS * PER_CLIENT` adds, and every wait has a deadline.

#![cfg(unix)]
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

mod common;

use common::items::{trio_binary, trio_home};

const KEY: &str = "crash-test-key";
const CLIENTS: usize = 16;
const PER_CLIENT: usize = 12;
/// Acknowledged adds before the kill.
const KILL_AFTER: usize = 40;

/// A free port on the loopback interface.
fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn spawn_server(db: &Path, key_file: &Path, address: SocketAddr) -> Child {
    Command::new(trio_binary())
        .arg("serve")
        .arg("--create")
        .arg("--db")
        .arg(db)
        .arg("--addr")
        .arg(address.to_string())
        .arg("--api-key-file")
        .arg(key_file)
        .args(["--device", "cpu", "--quiet"])
        .env("TRIO_HOME", trio_home())
        .env_remove("TRIO_API_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// One HTTP/1.1 exchange: status and body, or `None` when the connection failed.
fn http(
    address: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Option<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .ok()?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Authorization: Bearer {KEY}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let mut payload = response[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        payload = dechunk(&payload)?;
    }
    Some((status, payload))
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size =
            usize::from_str_radix(std::str::from_utf8(&data[..line_end]).ok()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

fn wait_healthy(address: SocketAddr, server: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if let Some(status) = server.try_wait().unwrap() {
            panic!("trio serve exited with {status} before it was healthy (run `trio fetch`?)");
        }
        if matches!(http(address, "GET", "/healthz", None), Some((200, _))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("trio serve did not become healthy within 300 s");
}

/// A small PNG whose pixels depend on `seed`.
fn png(seed: usize) -> Vec<u8> {
    let image = image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([
            (seed * 7) as u8,
            (x * 16) as u8,
            (y as usize * 16 + seed) as u8,
        ])
    });
    let mut out = Vec::new();
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// What a client sent for an item the server acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    title: String,
    label: String,
    image: Option<Vec<u8>>,
}

#[test]
fn acknowledged_adds_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.trio");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, KEY).unwrap();
    let address = free_address();
    let mut server = spawn_server(&db, &key_file, address);
    wait_healthy(address, &mut server);

    let acked: Arc<Mutex<BTreeMap<String, Acked>>> = Arc::default();
    let acks = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let acked = acked.clone();
            let acks = acks.clone();
            std::thread::spawn(move || {
                for n in 0..PER_CLIENT {
                    let id = format!("c{client}-{n}");
                    let item = Acked {
                        title: format!("item {n} of client {client}"),
                        label: ["red", "green", "blue"][(client + n) % 3].to_string(),
                        image: (n % 4 == 0).then(|| png(client * PER_CLIENT + n)),
                    };
                    let mut body = json!({"id": id, "title": item.title, "label": item.label});
                    if let Some(bytes) = &item.image {
                        body["image"] = base64::engine::general_purpose::STANDARD
                            .encode(bytes)
                            .into();
                    }
                    match http(address, "POST", "/v1/items", Some(&body)) {
                        Some((201, _)) => {
                            acked.lock().unwrap().insert(id, item);
                            acks.fetch_add(1, Ordering::SeqCst);
                        }
                        Some((status, body)) if status != 503 => {
                            panic!("add {id}: {status} {}", String::from_utf8_lossy(&body))
                        }
                        // Refused connections once the server is dead end this client.
                        None => return,
                        Some(_) => {}
                    }
                }
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs(300);
    while acks.load(Ordering::SeqCst) < KILL_AFTER && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    for client in clients {
        client.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= KILL_AFTER.min(CLIENTS * PER_CLIENT),
        "{}",
        acked.len()
    );
    assert!(
        acked.len() < CLIENTS * PER_CLIENT,
        "the kill came after every add; nothing was interrupted"
    );

    let mut server = spawn_server(&db, &key_file, address);
    wait_healthy(address, &mut server);
    let (status, body) = http(address, "GET", "/v1/items?limit=1000", None).unwrap();
    assert_eq!(status, 200);
    let page: Value = serde_json::from_slice(&body).unwrap();
    let items = page["items"].as_array().unwrap();
    let ids: BTreeSet<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), items.len(), "an id is listed twice");
    assert_eq!(page["total"].as_u64().unwrap(), items.len() as u64);
    let stored: BTreeMap<&str, &Value> = items
        .iter()
        .map(|i| (i["id"].as_str().unwrap(), i))
        .collect();
    for (id, item) in &acked {
        let found = stored
            .get(id.as_str())
            .unwrap_or_else(|| panic!("{id} was acknowledged but is gone"));
        assert_eq!(found["title"], item.title.as_str(), "{found}");
        assert_eq!(found["label"], item.label.as_str(), "{found}");
        assert_eq!(found["has_image"], item.image.is_some(), "{found}");
        if let Some(bytes) = &item.image {
            let (status, body) =
                http(address, "GET", &format!("/v1/items/{id}/image"), None).unwrap();
            assert_eq!((status, &body), (200, bytes), "{id}");
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
}
