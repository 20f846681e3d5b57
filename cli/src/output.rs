//! Printing results: JSON on stdout under `--json`, concise text otherwise.

use serde::Serialize;

/// Prints `value` as JSON when `json` is set, else runs `human` to print it for people.
pub fn emit<T: Serialize>(json: bool, value: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        human(value);
    }
    Ok(())
}

/// Writes row errors as JSONL (one `{"row", "id", "reason"}` object a line) to `file`, synced
/// to disk: the format of `trio ingest --errors` and of `trio embed`'s errors files.
pub fn write_row_errors(
    path: &std::path::Path,
    file: std::fs::File,
    errors: &[trio_engine::ingest::manifest::RowError],
) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    let writing = || format!("writing the errors file {}", path.display());
    let mut f = std::io::BufWriter::new(file);
    for e in errors {
        serde_json::to_writer(&mut f, e).with_context(writing)?;
        writeln!(f).with_context(writing)?;
    }
    let file = f
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(writing)?;
    file.sync_all().with_context(writing)
}

/// A vector shortened for people: the first few values and the length.
pub fn short_vector(v: &[f32]) -> String {
    let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:+.4}")).collect();
    format!("[{} … ] ({} values)", head.join(", "), v.len())
}
