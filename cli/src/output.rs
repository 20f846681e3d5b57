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

/// A vector shortened for people: the first few values and the length.
pub fn short_vector(v: &[f32]) -> String {
    let head: Vec<String> = v.iter().take(6).map(|x| format!("{x:+.4}")).collect();
    format!("[{} … ] ({} values)", head.join(", "), v.len())
}
