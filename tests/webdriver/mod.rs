//! A minimal W3C WebDriver client: drives headless Chromium through `chromedriver` with JSON over
//! HTTP/1.1 on std's `TcpStream`, so the page test needs no HTTP client crate.
//!
//! Only what the page tests use: a session, navigation, finding elements, typing (a file path
//! typed into an `<input type=file>` uploads that file), clicking, running a script to read
//! the page, and screenshots.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The key under which WebDriver returns an element reference.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// The browser and its driver, found on this machine.
pub struct Tools {
    pub chromedriver: PathBuf,
    pub chromium: PathBuf,
}

impl Tools {
    /// `$CHROMEDRIVER` / `$CHROME_BIN`, else the Debian packages' binaries on `PATH`
    /// (`chromium-driver` installs `chromedriver`, `chromium` installs `chromium`).
    /// `Err` says what is missing.
    pub fn find() -> std::result::Result<Tools, String> {
        let chromedriver = from_env_or_path("CHROMEDRIVER", &["chromedriver"]);
        let chromium = from_env_or_path(
            "CHROME_BIN",
            &["chromium", "chromium-browser", "google-chrome"],
        );
        match (chromedriver, chromium) {
            (Some(chromedriver), Some(chromium)) => Ok(Tools {
                chromedriver,
                chromium,
            }),
            (d, c) => {
                let mut missing = Vec::new();
                if d.is_none() {
                    missing.push("chromedriver (Debian package `chromium-driver`)");
                }
                if c.is_none() {
                    missing.push("chromium (Debian package `chromium`)");
                }
                Err(missing.join(" and "))
            }
        }
    }
}

fn from_env_or_path(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// A running `chromedriver` on a local port; killed on drop.
pub struct Driver {
    child: Child,
    addr: SocketAddr,
    dir: TempDir,
}

impl Driver {
    pub fn start(tools: &Tools) -> Result<Driver> {
        let dir = tempfile::tempdir()?;
        // Ask the OS for a free port; chromedriver binds it a moment later.
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let child = Command::new(&tools.chromedriver)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.path().join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", tools.chromedriver.display()))?;
        let mut driver = Driver {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            dir,
        };
        let started = Instant::now();
        loop {
            if let Ok(status) = driver.call("GET", "/status", None) {
                if status["ready"] == json!(true) {
                    return Ok(driver);
                }
            }
            if let Some(exit) = driver.child.try_wait()? {
                bail!("chromedriver exited with {exit}: {}", driver.log_tail());
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("chromedriver never became ready: {}", driver.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The end of chromedriver's log, for error messages.
    pub fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let start = log.len().saturating_sub(3000);
        let start = (start..log.len())
            .find(|&i| log.is_char_boundary(i))
            .unwrap_or(log.len());
        log[start..].to_string()
    }

    /// A headless Chromium session with its own throwaway profile.
    pub fn session(&self, tools: &Tools) -> Result<Session<'_>> {
        let profile = self.dir.path().join("profile");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": tools.chromium,
                "args": [
                    "--headless=new",
                    // Root in containers has no sandbox to run in.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,1024",
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let value = self
            .call("POST", "/session", Some(&caps))
            .with_context(|| {
                format!("starting Chromium; chromedriver log:\n{}", self.log_tail())
            })?;
        let id = value["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("no sessionId in {value}"))?
            .to_string();
        Ok(Session { driver: self, id })
    }

    /// One WebDriver command: the response's `value`, or its error.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let (status, mut response) = http(self.addr, method, path, body)?;
        let value = response["value"].take();
        if status >= 400 || value.get("error").is_some() {
            bail!(
                "{method} {path}: {status} {}: {}",
                value["error"].as_str().unwrap_or("?"),
                value["message"].as_str().unwrap_or_default()
            );
        }
        Ok(value)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A browser session; closed (and the browser quit) on drop.
pub struct Session<'a> {
    driver: &'a Driver,
    id: String,
}

impl Session<'_> {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
    }

    pub fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", "/url", Some(&json!({ "url": url })))
            .map(drop)
    }

    /// The element matching a CSS selector.
    pub fn find(&self, css: &str) -> Result<String> {
        let value = self
            .call(
                "POST",
                "/element",
                Some(&json!({"using": "css selector", "value": css})),
            )
            .with_context(|| format!("finding `{css}`"))?;
        value[ELEMENT_KEY]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| anyhow!("no element reference in {value}"))
    }

    /// Types `text` into the element; into a file input, `text` is the path of a file to upload.
    pub fn send_keys(&self, element: &str, text: &str) -> Result<()> {
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            Some(&json!({ "text": text })),
        )
        .map(drop)
    }

    pub fn clear(&self, element: &str) -> Result<()> {
        self.call(
            "POST",
            &format!("/element/{element}/clear"),
            Some(&json!({})),
        )
        .map(drop)
    }

    pub fn click(&self, element: &str) -> Result<()> {
        self.call(
            "POST",
            &format!("/element/{element}/click"),
            Some(&json!({})),
        )
        .map(drop)
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub fn script(&self, script: &str) -> Result<Value> {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
    }

    /// Runs `script` until it returns something other than `null`/`false`, and returns that.
    /// Gives up after `patience`, with what the page's status line says at that moment.
    pub fn wait_for(&self, what: &str, script: &str, patience: Duration) -> Result<Value> {
        let started = Instant::now();
        loop {
            let value = self.script(script)?;
            if !value.is_null() && value != json!(false) {
                return Ok(value);
            }
            if started.elapsed() > patience {
                let status = self
                    .script(
                        "return Array.from(document.querySelectorAll('[role=status]'), \
                         s => s.textContent).filter(t => t).join(' | ')",
                    )
                    .unwrap_or_default();
                bail!("gave up waiting for {what}; the page's status line says {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Session<'_> {
    /// Sets the browser window's size in CSS pixels.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        self.call(
            "POST",
            "/window/rect",
            Some(&json!({ "width": width, "height": height })),
        )
        .map(drop)
    }

    /// A PNG of what the window shows.
    pub fn screenshot(&self) -> Result<Vec<u8>> {
        use base64::Engine as _;
        let value = self.call("GET", "/screenshot", None)?;
        let data = value
            .as_str()
            .ok_or_else(|| anyhow!("no screenshot data in {value}"))?;
        Ok(base64::engine::general_purpose::STANDARD.decode(data)?)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        let _ = self
            .driver
            .call("DELETE", &format!("/session/{}", self.id), None);
    }
}

/// One HTTP/1.1 request with a JSON body: the status and the JSON answer. Reads exactly the
/// response (by `Content-Length` or chunked encoding), whether or not the peer closes.
fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
    let mut stream = TcpStream::connect(addr)?;
    // Starting a browser is the slowest command; nothing takes minutes.
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json; \
         charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("{method} {path}: bad status line {line:?}"))?;
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').unwrap_or((header, ""));
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        }
    }
    let mut bytes = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .with_context(|| format!("bad chunk size {line:?}"))?;
            let mut chunk = vec![0; size + 2]; // with its CRLF
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            bytes.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(n) = length {
        bytes.resize(n, 0);
        reader.read_exact(&mut bytes)?;
    } else {
        reader.read_to_end(&mut bytes)?;
    }
    let value = serde_json::from_slice(&bytes).with_context(|| {
        format!(
            "{method} {path}: {status} with a body that is not JSON: {}",
            String::from_utf8_lossy(&bytes)
        )
    })?;
    Ok((status, value))
}

/// `path` as an absolute path, for typing into a file input.
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
