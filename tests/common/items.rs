//! A small catalogue for ingest tests: generated images and texts, every item distinct.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};

/// `$TRIO_HOME`, where `trio fetch` put the towers.
pub fn trio_home() -> PathBuf {
    PathBuf::from(std::env::var_os("TRIO_HOME").expect(
        "TRIO_HOME is not set: run `trio fetch` and point TRIO_HOME at its home (scripts/test.sh)",
    ))
}

/// The `trio` binary of this build: tests live in `target/<profile>/deps/`.
pub fn trio_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable sits in target/<profile>/deps");
    let bin = dir.join(format!("trio{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build --workspace --all-targets` \
         (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// `trio ARGS --device cpu --quiet` with this build's binary and `$TRIO_HOME`, no `$TRIO_DB`
/// and no standard input.
pub fn trio_command(args: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new(trio_binary());
    cmd.args(args)
        .args(["--device", "cpu", "--quiet"])
        .env("TRIO_HOME", trio_home())
        .env_remove("TRIO_DB")
        .stdin(std::process::Stdio::null());
    cmd
}

/// Whether row `i` of [`write_manifest`] has an image (every fourth has none).
pub fn has_image(i: usize) -> bool {
    !i.is_multiple_of(4)
}

/// Whether row `i` of [`write_manifest`] has a description (every third has none).
pub fn has_description(i: usize) -> bool {
    !i.is_multiple_of(3)
}

/// Writes `manifest.jsonl` with `rows` items `item-000`, `item-001`, … into `dir`, each with its
/// own generated PNG (see [`has_image`]) and text, so every item has distinct vectors and a
/// search with an item's own vector must return it first. Labels are `group-0`..`group-3`.
pub fn write_manifest(dir: &Path, rows: usize, seed: u64) -> PathBuf {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let colours = ["red", "green", "blue", "odd"];
    let mut lines = Vec::new();
    for i in 0..rows {
        let mut row = serde_json::json!({
            "id": format!("item-{i:03}"),
            "title": format!("catalogue item number {i} of the test"),
            "label": format!("group-{}", i % 4),
            "shelf": i % 7,
        });
        if has_description(i) {
            row["description"] =
                format!("a {} thing with {i} stripes", colours[i % colours.len()]).into();
        }
        if has_image(i) {
            let (a, b): ([u8; 3], [u8; 3]) = (rng.gen(), rng.gen());
            let period = rng.gen_range(3..17u32);
            let slant = i as u32 % 5 + 1;
            let img = image::RgbImage::from_fn(48, 48, |x, y| {
                image::Rgb(if ((x * slant + y) / period).is_multiple_of(2) {
                    a
                } else {
                    b
                })
            });
            let name = format!("img-{i:03}.png");
            img.save(dir.join(&name)).expect("write fixture image");
            row["image"] = name.into();
        }
        lines.push(row.to_string());
    }
    let path = dir.join("manifest.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write manifest");
    path
}
