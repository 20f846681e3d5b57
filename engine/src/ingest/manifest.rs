//! Manifests: JSONL (or a JSON array) or CSV/TSV files listing items, one row each.
//!
//! Reading is streaming and forgiving per row: [`ManifestReader`] yields one
//! `Result<ManifestRow, RowError>` per line (JSONL), record (CSV) or element (JSON array), so a
//! bad row is reported with its number and never stops the good ones. Only problems with the
//! file as a whole (cannot open it, a CSV header that is not UTF-8) are [`Error`]s.
//!
//! Field rules, the same for every format:
//! - Known fields: `id`, `image`, `title`, `description`, `tags`, `label` (names are matched
//!   ignoring case and surrounding spaces); every other field goes to `metadata` unchanged.
//! - Empty or whitespace-only strings and `null` count as missing. Text is trimmed.
//! - Numbers and booleans in text fields are turned into text; arrays and objects there are
//!   errors. `image` must be text (a path), not a URL.
//! - `tags` is a JSON array of scalars or a string split on `,` and `;`.
//! - `title`, `description` and `label` longer than `max_text_chars` characters are truncated,
//!   with a warning on the row (not an error).
//! - A row needs an image or some text (`title` or `description`); tags alone are not enough,
//!   as the text tower reads only those two fields.
//! - A repeated `id` is an error for the later row (ids of rejected rows do not count).
//!
//! One file, past 600 lines: JSONL and CSV rows go through the same field rules and errors, which
//! must read the same for both.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Text longer than this many characters is truncated. Far beyond what the text tower reads
/// (256 tokens), small enough that one runaway field cannot bloat the store.
pub const DEFAULT_MAX_TEXT_CHARS: usize = 4096;
/// A JSONL line longer than this is rejected without being held in memory.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 << 20;

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// The manifest encodings Trio reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifestFormat {
    /// One JSON object per line.
    Jsonl,
    /// One JSON array of objects (read whole, not streamed).
    JsonArray,
    /// Comma-separated with a header row.
    Csv,
    /// Tab-separated with a header row.
    Tsv,
}

/// How to read a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestOptions {
    /// Folder that relative image paths are resolved against; the manifest's folder if unset.
    pub images_root: Option<PathBuf>,
    pub max_text_chars: usize,
    pub max_line_bytes: usize,
    /// Forces a format; otherwise chosen by extension, then by sniffing the first bytes.
    pub format: Option<ManifestFormat>,
}

impl Default for ManifestOptions {
    fn default() -> Self {
        ManifestOptions {
            images_root: None,
            max_text_chars: DEFAULT_MAX_TEXT_CHARS,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            format: None,
        }
    }
}

/// One item as the manifest describes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ManifestRow {
    /// 1-based: the line for JSONL; the record for CSV/TSV, counting the header as row 1 (as
    /// a spreadsheet numbers rows, even when a quoted field spans lines); the element for a
    /// JSON array.
    pub row: usize,
    pub id: Option<String>,
    /// Absolute, or resolved against `images_root` / the manifest's folder.
    pub image: Option<PathBuf>,
    pub title: Option<String>,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub label: Option<String>,
    /// Every field that is not one of the above.
    pub metadata: Map<String, Value>,
    /// Non-fatal problems (truncated text), for the caller to report.
    pub warnings: Vec<String>,
}

/// Why one row was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("row {row}{}: {reason}", .id.as_ref().map(|i| format!(" (id `{i}`)")).unwrap_or_default())]
pub struct RowError {
    pub row: usize,
    pub id: Option<String>,
    pub reason: String,
}

impl RowError {
    fn new(row: usize, id: Option<String>, reason: impl Into<String>) -> Self {
        RowError {
            row,
            id,
            reason: reason.into(),
        }
    }
}

/// Opens a manifest and returns its rows as a stream.
pub fn open(path: &Path, opts: &ManifestOptions) -> Result<ManifestReader> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let base = if base.as_os_str().is_empty() {
        Path::new(".")
    } else {
        base
    };
    let format = opts.format.or_else(|| format_from_extension(path));
    ManifestReader::new(Box::new(file), format, base, opts).map_err(|reason| Error::Manifest {
        path: path.to_path_buf(),
        reason,
    })
}

fn format_from_extension(path: &Path) -> Option<ManifestFormat> {
    let ext = path.extension()?.to_string_lossy().to_ascii_lowercase();
    match ext.as_str() {
        "jsonl" | "ndjson" => Some(ManifestFormat::Jsonl),
        "csv" => Some(ManifestFormat::Csv),
        "tsv" | "tab" => Some(ManifestFormat::Tsv),
        // `.json` may be JSONL or an array: sniff.
        _ => None,
    }
}

/// Chooses a format from the first bytes: `[` is a JSON array, `{` JSONL, anything else CSV.
fn sniff(head: &[u8]) -> ManifestFormat {
    let head = head.strip_prefix(UTF8_BOM).unwrap_or(head);
    match head.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => ManifestFormat::JsonArray,
        Some(b'{') | None => ManifestFormat::Jsonl,
        Some(_) => {
            let first_line = head.split(|&b| b == b'\n').next().unwrap_or(head);
            if first_line.contains(&b'\t') && !first_line.contains(&b',') {
                ManifestFormat::Tsv
            } else {
                ManifestFormat::Csv
            }
        }
    }
}

/// A row's fields before the rules are applied.
type RawFields = Vec<(String, Value)>;

enum Source {
    Jsonl(LineReader),
    JsonArray(std::iter::Enumerate<std::vec::IntoIter<Value>>),
    Csv {
        reader: csv::Reader<Box<dyn BufRead + Send>>,
        headers: Vec<String>,
        last_row: usize,
        done: bool,
    },
}

/// Streams a manifest's rows; see the module docs for the rules.
pub struct ManifestReader {
    source: Source,
    images_root: PathBuf,
    max_text_chars: usize,
    seen_ids: HashMap<String, usize>,
}

impl ManifestReader {
    /// Reads a manifest from any byte stream. `base_dir` is the folder relative image paths are
    /// resolved against when `opts.images_root` is unset. `format: None` sniffs.
    pub fn from_reader(
        reader: impl Read + Send + 'static,
        format: Option<ManifestFormat>,
        base_dir: &Path,
        opts: &ManifestOptions,
    ) -> Result<ManifestReader> {
        ManifestReader::new(Box::new(reader), format.or(opts.format), base_dir, opts).map_err(
            |reason| Error::Manifest {
                path: PathBuf::from("<stream>"),
                reason,
            },
        )
    }

    fn new(
        reader: Box<dyn Read + Send>,
        format: Option<ManifestFormat>,
        base_dir: &Path,
        opts: &ManifestOptions,
    ) -> std::result::Result<ManifestReader, String> {
        let mut reader: Box<dyn BufRead + Send> = Box::new(BufReader::new(reader));
        let format = match format {
            Some(f) => f,
            None => sniff(reader.fill_buf().map_err(|e| format!("cannot read: {e}"))?),
        };
        let source = match format {
            ManifestFormat::Jsonl => Source::Jsonl(LineReader::new(reader, opts.max_line_bytes)),
            ManifestFormat::JsonArray => {
                let values: Vec<Value> = serde_json::from_reader(SkipBom::new(reader))
                    .map_err(|e| format!("not a JSON array of objects: {e}"))?;
                Source::JsonArray(values.into_iter().enumerate())
            }
            ManifestFormat::Csv | ManifestFormat::Tsv => {
                let mut csv = csv::ReaderBuilder::new()
                    .delimiter(if format == ManifestFormat::Tsv {
                        b'\t'
                    } else {
                        b','
                    })
                    .flexible(true)
                    .has_headers(true)
                    .from_reader(reader);
                let header = csv
                    .byte_headers()
                    .map_err(|e| format!("cannot read the header row: {e}"))?
                    .clone();
                let mut headers = Vec::with_capacity(header.len());
                for (i, h) in header.iter().enumerate() {
                    let h = if i == 0 {
                        h.strip_prefix(UTF8_BOM).unwrap_or(h)
                    } else {
                        h
                    };
                    let name = std::str::from_utf8(h)
                        .map_err(|_| format!("header column {} is not valid UTF-8", i + 1))?
                        .trim()
                        .to_string();
                    if !name.is_empty() && headers.iter().any(|o: &String| o == &name) {
                        return Err(format!("header has column `{name}` twice"));
                    }
                    headers.push(name);
                }
                Source::Csv {
                    reader: csv,
                    headers,
                    last_row: 1,
                    done: false,
                }
            }
        };
        let images_root = opts
            .images_root
            .clone()
            .unwrap_or_else(|| base_dir.to_path_buf());
        let images_root = std::path::absolute(&images_root).unwrap_or(images_root);
        Ok(ManifestReader {
            source,
            images_root,
            max_text_chars: opts.max_text_chars,
            seen_ids: HashMap::new(),
        })
    }

    /// The next row's raw fields, or why they could not be read.
    fn next_raw(&mut self) -> Option<(usize, std::result::Result<RawFields, RowError>)> {
        match &mut self.source {
            Source::Jsonl(lines) => {
                let line = match lines.next_line()? {
                    Ok(line) => line,
                    Err((row, e)) => {
                        return Some((
                            row,
                            Err(RowError::new(row, None, format!("read error: {e}"))),
                        ))
                    }
                };
                let row = line.number;
                Some((row, parse_json_line(line)))
            }
            Source::JsonArray(values) => {
                let (i, value) = values.next()?;
                let row = i + 1;
                Some((row, object_fields(row, value)))
            }
            Source::Csv {
                reader,
                headers,
                last_row,
                done,
            } => {
                if *done {
                    return None;
                }
                let mut record = csv::ByteRecord::new();
                match reader.read_byte_record(&mut record) {
                    Ok(false) => {
                        *done = true;
                        None
                    }
                    Ok(true) => {
                        let row = record
                            .position()
                            .map_or(*last_row + 1, |p| p.record() as usize + 1);
                        *last_row = row;
                        Some((row, csv_fields(row, headers, &record)))
                    }
                    Err(e) => {
                        let row = e.position().map_or(*last_row + 1, |p| p.line() as usize);
                        *last_row = row;
                        if matches!(e.kind(), csv::ErrorKind::Io(_)) {
                            *done = true;
                        }
                        Some((
                            row,
                            Err(RowError::new(row, None, format!("malformed CSV: {e}"))),
                        ))
                    }
                }
            }
        }
    }

    /// Applies the field rules to one row's raw fields.
    fn normalize(
        &mut self,
        row: usize,
        fields: RawFields,
    ) -> std::result::Result<ManifestRow, RowError> {
        let mut out = ManifestRow {
            row,
            id: None,
            image: None,
            title: None,
            description: None,
            tags: Vec::new(),
            label: None,
            metadata: Map::new(),
            warnings: Vec::new(),
        };
        if fields.iter().all(|(_, v)| is_blank(v)) {
            return Err(RowError::new(row, None, "empty row"));
        }
        // The id first, so every later error can name it.
        let mut known: HashMap<&'static str, Value> = HashMap::new();
        let mut id_error = None;
        for (key, value) in fields {
            let name = key.trim().to_ascii_lowercase();
            let field = KNOWN_FIELDS.iter().find(|f| **f == name);
            match field {
                Some(f) => {
                    if known.insert(*f, value).is_some() {
                        id_error.get_or_insert(format!("field `{f}` is given twice"));
                    }
                }
                None => {
                    out.metadata.insert(key, value);
                }
            }
        }
        if let Some(v) = known.remove("id") {
            match text(&v, "id") {
                Ok(id) => out.id = id,
                Err(reason) => return Err(RowError::new(row, None, reason)),
            }
        }
        let id = out.id.clone();
        let err = |reason: String| RowError::new(row, id.clone(), reason);
        if let Some(reason) = id_error {
            return Err(err(reason));
        }

        if let Some(v) = known.remove("image") {
            out.image = self.image_path(&v).map_err(err)?;
        }
        for (name, slot) in [
            ("title", &mut out.title),
            ("description", &mut out.description),
            ("label", &mut out.label),
        ] {
            if let Some(v) = known.remove(name) {
                *slot = text(&v, name).map_err(err)?;
                if let Some(s) = slot.as_mut() {
                    if let Some(original) = truncate_chars(s, self.max_text_chars) {
                        out.warnings.push(format!(
                            "`{name}` truncated from {original} to {} characters",
                            self.max_text_chars
                        ));
                    }
                }
            }
        }
        if let Some(v) = known.remove("tags") {
            out.tags = tags(&v).map_err(err)?;
        }

        if out.image.is_none() && out.title.is_none() && out.description.is_none() {
            return Err(err(
                "has neither an image nor any text (title or description)".into(),
            ));
        }
        if let Some(id) = &out.id {
            if let Some(first) = self.seen_ids.get(id) {
                return Err(err(format!("duplicate id (first used at row {first})")));
            }
            self.seen_ids.insert(id.clone(), row);
        }
        Ok(out)
    }

    fn image_path(&self, value: &Value) -> std::result::Result<Option<PathBuf>, String> {
        let path = match value {
            Value::Null => return Ok(None),
            Value::String(s) => s.trim(),
            other => {
                return Err(format!(
                    "field `image` must be a file path (text), found {}",
                    kind(other)
                ))
            }
        };
        if path.is_empty() {
            return Ok(None);
        }
        if path.contains('\0') {
            return Err("field `image` contains a NUL character".into());
        }
        if let Some((scheme, _)) = path.split_once("://") {
            if !scheme.is_empty() && scheme.chars().all(|c| c.is_ascii_alphabetic()) {
                return Err(format!(
                    "field `image` is a URL ({scheme}://…); Trio reads local files: download the \
                     images first"
                ));
            }
        }
        let path = Path::new(path);
        Ok(Some(if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.images_root.join(path)
        }))
    }
}

impl Iterator for ManifestReader {
    type Item = std::result::Result<ManifestRow, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        let (row, raw) = self.next_raw()?;
        Some(raw.and_then(|fields| self.normalize(row, fields)))
    }
}

const KNOWN_FIELDS: [&str; 6] = ["id", "image", "title", "description", "tags", "label"];

fn is_blank(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        _ => false,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A text field: scalars become text, blanks are missing, arrays and objects are errors.
fn text(v: &Value, field: &str) -> std::result::Result<Option<String>, String> {
    let s = match v {
        Value::Null => return Ok(None),
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => {
            return Err(format!(
                "field `{field}` must be text, found {}",
                kind(other)
            ))
        }
    };
    Ok(if s.is_empty() { None } else { Some(s) })
}

fn tags(v: &Value) -> std::result::Result<Vec<String>, String> {
    match v {
        Value::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::Array(_) | Value::Object(_) => {
                        return Err(format!(
                            "field `tags` must hold text, but item {} is {}",
                            i + 1,
                            kind(item)
                        ))
                    }
                    _ => out.extend(text(item, "tags")?),
                }
            }
            Ok(out)
        }
        Value::String(s) => Ok(s
            .split([',', ';'])
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect()),
        Value::Object(_) => Err("field `tags` must be a list or text, found an object".into()),
        scalar => Ok(text(scalar, "tags")?.into_iter().collect()),
    }
}

/// Cuts `s` to `max` characters; returns the original length in characters if it was cut.
fn truncate_chars(s: &mut String, max: usize) -> Option<usize> {
    let (cut, _) = s.char_indices().nth(max)?;
    let original = s.chars().count();
    s.truncate(cut);
    Some(original)
}

fn parse_json_line(line: Line) -> std::result::Result<RawFields, RowError> {
    let row = line.number;
    if line.too_long {
        return Err(RowError::new(
            row,
            None,
            format!("line is longer than {} bytes; skipped", line.limit),
        ));
    }
    let text = std::str::from_utf8(&line.bytes).map_err(|e| {
        RowError::new(
            row,
            None,
            format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1),
        )
    })?;
    if text.trim().is_empty() {
        return Err(RowError::new(row, None, "empty row"));
    }
    let value: Value = serde_json::from_str(text)
        .map_err(|e| RowError::new(row, None, format!("malformed JSON: {e}")))?;
    object_fields(row, value)
}

fn object_fields(row: usize, value: Value) -> std::result::Result<RawFields, RowError> {
    match value {
        Value::Object(map) => Ok(map.into_iter().collect()),
        other => Err(RowError::new(
            row,
            None,
            format!("expected a JSON object, found {}", kind(&other)),
        )),
    }
}

fn csv_fields(
    row: usize,
    headers: &[String],
    record: &csv::ByteRecord,
) -> std::result::Result<RawFields, RowError> {
    if record.len() > headers.len() && record.iter().skip(headers.len()).any(|f| !f.is_empty()) {
        return Err(RowError::new(
            row,
            None,
            format!(
                "has {} fields but the header has {}",
                record.len(),
                headers.len()
            ),
        ));
    }
    let mut fields = Vec::with_capacity(headers.len());
    for (i, (name, cell)) in headers.iter().zip(record.iter()).enumerate() {
        let cell = std::str::from_utf8(cell).map_err(|e| {
            RowError::new(
                row,
                None,
                format!(
                    "invalid UTF-8 in column {} at byte {}",
                    if name.is_empty() {
                        (i + 1).to_string()
                    } else {
                        format!("`{name}`")
                    },
                    e.valid_up_to() + 1
                ),
            )
        })?;
        if name.is_empty() || cell.trim().is_empty() {
            continue;
        }
        fields.push((name.clone(), Value::String(cell.to_string())));
    }
    Ok(fields)
}

/// One JSONL line as bytes (without the line ending).
struct Line {
    number: usize,
    bytes: Vec<u8>,
    too_long: bool,
    limit: usize,
}

/// Reads lines as bytes (so invalid UTF-8 is a row error, not a stream error), never holding
/// more than `max` bytes of one line.
struct LineReader {
    inner: Box<dyn BufRead + Send>,
    number: usize,
    max: usize,
    done: bool,
}

impl LineReader {
    fn new(inner: Box<dyn BufRead + Send>, max: usize) -> Self {
        LineReader {
            inner,
            number: 0,
            max,
            done: false,
        }
    }

    fn next_line(&mut self) -> Option<std::result::Result<Line, (usize, io::Error)>> {
        if self.done {
            return None;
        }
        let mut bytes = Vec::new();
        let mut too_long = false;
        let mut saw_any = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.done = true;
                    return Some(Err((self.number + 1, e)));
                }
            };
            if available.is_empty() {
                self.done = true;
                if !saw_any {
                    return None;
                }
                break;
            }
            saw_any = true;
            let newline = available.iter().position(|&b| b == b'\n');
            let chunk = &available[..newline.unwrap_or(available.len())];
            if !too_long {
                if bytes.len() + chunk.len() > self.max {
                    too_long = true;
                    bytes = Vec::new();
                } else {
                    bytes.extend_from_slice(chunk);
                }
            }
            let used = newline.map_or(available.len(), |i| i + 1);
            self.inner.consume(used);
            if newline.is_some() {
                break;
            }
        }
        self.number += 1;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        if self.number == 1 && bytes.starts_with(UTF8_BOM) {
            bytes.drain(..UTF8_BOM.len());
        }
        Some(Ok(Line {
            number: self.number,
            bytes,
            too_long,
            limit: self.max,
        }))
    }
}

/// Skips a leading UTF-8 byte-order mark (serde_json rejects it).
struct SkipBom<R> {
    inner: R,
    checked: bool,
}

impl<R: BufRead> SkipBom<R> {
    fn new(inner: R) -> Self {
        SkipBom {
            inner,
            checked: false,
        }
    }
}

impl<R: BufRead> Read for SkipBom<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.checked {
            self.checked = true;
            if self.inner.fill_buf()?.starts_with(UTF8_BOM) {
                self.inner.consume(UTF8_BOM.len());
            }
        }
        self.inner.read(buf)
    }
}

#[cfg(test)]
mod tests;
