//! The web page end to end: the real server (engine backend, a small trained demo catalogue) on
//! a local port, driven in headless Chromium through chromedriver. Types a query and checks the
//! result cards; uploads an image through the file input and checks the classify panel. What the
//! page shows is held to what the backend answers for the same request.
//!
//! The review views too: dismiss a duplicate group, relabel an item, reload, and the page and the
//! backend's reports both show the decisions. With `TRIO_SCREENSHOTS=<folder>` the review test
//! saves the views it passes through there as PNGs (the README's `docs/review-*.png`).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them); without them the
//! tests say so and pass without running.
#![allow(clippy::unwrap_used)]

mod engine_support;
mod webdriver;

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use engine_support::{engine_catalogue, LABELS};
use serde_json::Value;
use trio_server::api::{
    ClassifyRequest, DuplicatesQuery, NewItem, NoiseQuery, Query, Search, Space,
};
use trio_server::{ApiKey, AppState, Backend, ImageLimits, ServerConfig};
use webdriver::{absolute, Driver, Tools};

/// How long the page may take to show an answer (the first request in a debug build included).
const PATIENCE: Duration = Duration::from_secs(60);

/// `trio_server::serve` on its own thread and actix system, as `trio serve` runs it.
struct RunningServer {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    fn start(backend: Arc<dyn Backend>, config: ServerConfig) -> RunningServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let server = trio_server::serve(AppState::new(backend, config)?, listener)?;
                let _ = tx.send(server.handle());
                server.await
            })
        });
        let handle = rx.recv().expect("the server thread failed before serving");
        RunningServer {
            addr,
            handle,
            thread: Some(thread),
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        actix_web::rt::System::new().block_on(self.handle.stop(true));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[test]
fn the_page_searches_and_classifies_in_headless_chromium() -> anyhow::Result<()> {
    let tools = match Tools::find() {
        Ok(tools) => tools,
        Err(missing) => {
            eprintln!(
                "SKIPPED the_page_searches_and_classifies_in_headless_chromium: {missing} not \
                 found. Install with `apt-get install -y chromium chromium-driver` (`.ci/run` \
                 does), or set CHROMEDRIVER and CHROME_BIN."
            );
            return Ok(());
        }
    };
    let catalogue = engine_catalogue(true);
    let backend = catalogue.backend();
    let config = ServerConfig {
        workers: 2,
        ..ServerConfig::default()
    };
    let server = RunningServer::start(backend.clone(), config);
    let driver = Driver::start(&tools)?;
    let page = driver.session(&tools)?;
    page.goto(&format!("http://{}/", server.addr))?;
    assert_eq!(page.script("return document.title")?, "Trio");

    // ---- type a query, see the result cards -----------------------------------------------
    let text = "fruit";
    let query = page.find("#query")?;
    page.send_keys(&query, text)?;
    page.click(&page.find("#search-btn")?)?;
    let cards = page.wait_for(
        "result cards",
        "const cards = document.querySelectorAll('#results .card');
         if (!cards.length) return null;
         return Array.from(cards, c => ({
           id: c.dataset.id,
           title: c.querySelector('.title').textContent,
           label: c.querySelector('.label').textContent,
           score: c.querySelector('.score').textContent,
         }));",
        PATIENCE,
    )?;
    let cards = cards.as_array().unwrap();
    // The page asks for the fused space's 24 best; the backend, asked the same, agrees.
    let limits = ImageLimits {
        max_pixels: ServerConfig::default().limits.max_pixels,
    };
    let expected = backend.search(
        Search {
            query: Query::Text(text.into()),
            space: Space::Fused,
            k: 24,
            offset: 0,
            filters: BTreeMap::new(),
        },
        &limits,
    )?;
    assert_eq!(cards.len(), expected.hits.len());
    assert_eq!(expected.hits.len(), 24, "the catalogue holds 32 items");
    for (card, hit) in cards.iter().zip(&expected.hits) {
        assert_eq!(card["id"], hit.id.as_str(), "{cards:?}");
        assert_eq!(card["title"], hit.title.as_deref().unwrap_or(&hit.id));
        assert_eq!(card["label"], hit.label.as_deref().unwrap_or_default());
        assert_eq!(card["score"], format!("score {:.3}", hit.score));
    }
    assert_eq!(
        page.script("return document.getElementById('status').textContent")?,
        "24 results"
    );
    // The thumbnails come from GET /v1/items/{id}/image: the first card's shows.
    page.wait_for(
        "the first thumbnail",
        "const img = document.querySelector('#results .card img');
         return img && img.complete && img.naturalWidth > 0;",
        PATIENCE,
    )?;

    // ---- upload an image, see its class ---------------------------------------------------
    // An emoji the catalogue does not hold: the next fruit after the ones it does.
    let unseen = catalogue
        .rows
        .unseen
        .iter()
        .find(|r| r.label.as_deref() == Some("food-fruit"))
        .unwrap();
    let image = unseen.image.clone().unwrap();
    page.clear(&query)?; // classify the image alone, not the image with a title
    page.send_keys(&page.find("#upload")?, &absolute(&image).to_string_lossy())?;
    page.wait_for(
        "the preview of the chosen image",
        "return !document.getElementById('preview').hidden;",
        PATIENCE,
    )?;
    page.click(&page.find("#classify-btn")?)?;
    let shown = page.wait_for(
        "the classify panel",
        "const rows = document.querySelectorAll('#classify-results li');
         if (!rows.length) return null;
         return Array.from(rows, r => [
           r.querySelector('.label-name').textContent,
           r.querySelector('.probability').textContent,
         ]);",
        PATIENCE,
    )?;
    let shown: Vec<(String, f64)> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            let percent = row[1].as_str().unwrap().trim_end_matches('%');
            (
                row[0].as_str().unwrap().to_string(),
                percent.parse().unwrap(),
            )
        })
        .collect();
    let expected = backend.classify(
        ClassifyRequest {
            image: Some(std::fs::read(&image)?),
            ..ClassifyRequest::default()
        },
        &limits,
    )?;
    // The model knows four labels, so the panel shows four, most probable first, as the
    // backend ranks them for the same bytes.
    assert_eq!(shown.len(), LABELS.len(), "{shown:?}");
    for ((label, percent), want) in shown.iter().zip(&expected.labels) {
        assert_eq!(label, &want.label, "{shown:?}");
        assert!(
            (percent - f64::from(want.probability) * 100.0).abs() <= 0.06,
            "{label}: page {percent}%, backend {}",
            want.probability
        );
    }
    let total: f64 = shown.iter().map(|(_, p)| p).sum();
    assert!((total - 100.0).abs() < 0.3, "probabilities sum to {total}%");
    // An unseen fruit is classified as a fruit.
    assert_eq!(shown[0].0, "food-fruit", "{shown:?}");
    let status: Value = page.script("return document.getElementById('status').className")?;
    assert_eq!(status, "", "the page reports an error");
    Ok(())
}

/// Where `TRIO_SCREENSHOTS` asks for screenshots, if it does.
fn screenshots() -> Option<std::path::PathBuf> {
    std::env::var_os("TRIO_SCREENSHOTS").map(std::path::PathBuf::from)
}

#[test]
fn the_review_page_dismisses_relabels_and_remembers() -> anyhow::Result<()> {
    let tools = match Tools::find() {
        Ok(tools) => tools,
        Err(missing) => {
            eprintln!(
                "SKIPPED the_review_page_dismisses_relabels_and_remembers: {missing} not found. \
                 Install with `apt-get install -y chromium chromium-driver` (`.ci/run` does), \
                 or set CHROMEDRIVER and CHROME_BIN."
            );
            return Ok(());
        }
    };
    let catalogue = engine_catalogue(false);
    let backend = catalogue.backend();
    let limits = ImageLimits {
        max_pixels: ServerConfig::default().limits.max_pixels,
    };
    // A second copy of a catalogue image (a duplicate group), and an unseen fruit labelled as a
    // mammal (a label issue).
    let original = &catalogue.rows.catalogue[0];
    let original_id = original.id.clone().unwrap();
    let fruit = catalogue
        .rows
        .unseen
        .iter()
        .find(|r| r.label.as_deref() == Some("food-fruit"))
        .unwrap();
    for (id, row, label) in [
        ("copy", original, original.label.clone()),
        ("mislabelled", fruit, Some("animal-mammal".to_string())),
    ] {
        let item = NewItem {
            id: Some(id.into()),
            title: row.title.clone(),
            label,
            image: Some(std::fs::read(row.image.as_ref().unwrap())?),
            ..NewItem::default()
        };
        backend.add_item(item, &limits)?;
    }
    let key = "review-key-0123";
    let config = ServerConfig {
        workers: 2,
        api_key: Some(ApiKey::new(key)?),
        ..ServerConfig::default()
    };
    let server = RunningServer::start(backend.clone(), config);
    let base = format!("http://{}/", server.addr);
    let driver = Driver::start(&tools)?;
    let page = driver.session(&tools)?;
    page.resize(1100, 900)?;
    page.goto(&base)?;
    page.script(&format!(
        "localStorage.setItem('trio-api-key', '{key}'); return true;"
    ))?;

    // ---- duplicates: the copy and its original side by side, with their evidence ----------
    // Filtered by the copy's label, from the address as a shared link would give it.
    let label = original.label.clone().unwrap();
    let query: String = label
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => char::from(b).into(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    page.goto(&format!("{base}?view=duplicates&label={query}"))?;
    // The group showing the copy beside its original (the id in a JSON string is a JS string).
    let group_with_copy = format!(
        "const g = Array.from(document.querySelectorAll('#dup-groups .group')).find(g =>
           g.querySelector('.member[data-id=\"copy\"]') &&
           Array.from(g.querySelectorAll('.member'), m => m.dataset.id).includes({}));",
        Value::from(original_id.as_str())
    );
    let shown = page.wait_for(
        "the group holding the copy",
        &format!(
            "{group_with_copy}
             if (!g) return null;
             return {{
               id: g.dataset.group,
               members: Array.from(g.querySelectorAll('.member'), m => m.dataset.id),
               evidence: Array.from(g.querySelectorAll('.evidence td'), td => td.textContent),
               filter: document.getElementById('dup-label').value,
               labels: Array.from(document.querySelectorAll('#dup-groups .group'),
                 g => Array.from(g.querySelectorAll('.member .label'), l => l.textContent)),
             }};"
        ),
        PATIENCE,
    )?;
    let members: Vec<&str> = shown["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert!(members.contains(&original_id.as_str()), "{shown}");
    assert_eq!(shown["filter"], label.as_str(), "{shown}");
    for labels in shown["labels"].as_array().unwrap() {
        assert!(
            labels
                .as_array()
                .unwrap()
                .contains(&Value::from(label.as_str())),
            "{shown}"
        );
    }
    // Same picture: the evidence shows the measurements (hash distance, pixel difference).
    let evidence = shown["evidence"].to_string();
    assert!(
        evidence.contains("hash distance 0") && evidence.contains("pixel difference 0"),
        "{evidence}"
    );
    page.wait_for(
        "the copy's thumbnail",
        "const img = document.querySelector('.member[data-id=\"copy\"] img');
         return img && img.complete && img.naturalWidth > 0;",
        PATIENCE,
    )?;
    if let Some(dir) = screenshots() {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("review-duplicates.png"), page.screenshot()?)?;
    }
    page.click(&page.find(&format!(
        ".group[data-group=\"{}\"] .dismiss",
        shown["id"].as_str().unwrap()
    ))?)?;
    page.wait_for(
        "the dismissed group to go",
        &format!(
            "{group_with_copy}
             const status = document.getElementById('dup-status').textContent;
             return !g && status.startsWith('dismissed');"
        ),
        PATIENCE,
    )?;

    // ---- label issues: accept the suggestion -------------------------------------------------
    page.goto(&format!("{base}?view=labels"))?;
    let row = page.wait_for(
        "the mislabelled item's row",
        "const r = document.querySelector('#noise-rows tr[data-id=\"mislabelled\"]');
         if (!r) return null;
         return {
           given: r.querySelector('.given').textContent,
           suggested: r.querySelector('.suggested .label').textContent,
           probability: r.querySelector('.suggested .probability').textContent,
         };",
        PATIENCE,
    )?;
    assert_eq!(row["given"], "animal-mammal", "{row}");
    assert_eq!(row["suggested"], "food-fruit", "{row}");
    assert!(row["probability"].as_str().unwrap().ends_with('%'), "{row}");
    if let Some(dir) = screenshots() {
        page.resize(1100, 520)?;
        std::fs::write(dir.join("review-labels.png"), page.screenshot()?)?;
    }
    page.click(&page.find("#noise-rows tr[data-id=\"mislabelled\"] .accept")?)?;
    page.wait_for(
        "the relabel to be acknowledged",
        "const r = document.querySelector('#noise-rows tr[data-id=\"mislabelled\"]');
         return r && r.classList.contains('done');",
        PATIENCE,
    )?;

    // ---- reload: the decisions persisted, in the page and in the reports -------------------
    page.goto(&format!("{base}?view=duplicates"))?;
    page.wait_for(
        "the duplicates report after the reload",
        "return /\\d+ groups?$/.test(document.getElementById('dup-status').textContent);",
        PATIENCE,
    )?;
    let together: Value = page.script(&format!("{group_with_copy} return !!g;"))?;
    assert_eq!(together, false, "the dismissed pair is shown again");
    page.goto(&format!("{base}?view=labels&label=animal-mammal"))?;
    let after = page.wait_for(
        "the label report after the reload",
        "const status = document.getElementById('noise-status').textContent;
         if (!status.includes('labelled items')) return null;
         return {
           filter: document.getElementById('noise-label').value,
           rows: Array.from(document.querySelectorAll('#noise-rows tr'), r => [
             r.dataset.id, r.querySelector('.given').textContent,
             r.querySelector('.suggested .label').textContent,
           ]),
         };",
        PATIENCE,
    )?;
    assert_eq!(after["filter"], "animal-mammal", "{after}");
    for row in after["rows"].as_array().unwrap() {
        assert_ne!(row[0], "mislabelled", "{after}");
        assert!(
            row[1] == "animal-mammal" || row[2] == "animal-mammal",
            "{after}"
        );
    }
    let item = backend.get_item("mislabelled")?;
    assert_eq!(item.label.as_deref(), Some("food-fruit"));
    let duplicates = backend.duplicates(DuplicatesQuery::default())?;
    assert!(
        !duplicates
            .groups
            .iter()
            .any(|g| g.members.contains(&"copy".to_string()) && g.members.contains(&original_id)),
        "{duplicates:?}"
    );
    let noise = backend.noise(NoiseQuery::default())?;
    assert!(
        noise.issues.iter().all(|i| i.id != "mislabelled"),
        "{noise:?}"
    );
    Ok(())
}
