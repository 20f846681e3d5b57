//! The manifest parser over the committed nasty-input corpus (`tests/fixtures/nasty/`, see its
//! README for how each file was made).

use std::path::{Path, PathBuf};

use trio_engine::ingest::manifest::{self, ManifestOptions, ManifestRow, RowError};

type Rows = Vec<Result<ManifestRow, RowError>>;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nasty")
        .join(name)
}

fn read(name: &str) -> Rows {
    manifest::open(&fixture(name), &ManifestOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .collect()
}

/// `Ok(id)` or `Err(reason)` per row, for compact assertions.
fn outline(rows: &Rows) -> Vec<Result<String, String>> {
    rows.iter()
        .map(|r| match r {
            Ok(row) => Ok(row.id.clone().unwrap_or_default()),
            Err(e) => Err(e.reason.clone()),
        })
        .collect()
}

#[test]
fn invalid_utf8_rows_are_reported_and_skipped() {
    let rows = read("invalid-utf8.jsonl");
    let o = outline(&rows);
    assert_eq!(o[0], Ok("u1".into()));
    assert!(
        o[1].as_ref().is_err_and(|r| r.starts_with("invalid UTF-8")),
        "{o:?}"
    );
    assert!(
        o[2].as_ref().is_err_and(|r| r.starts_with("invalid UTF-8")),
        "{o:?}"
    );
    assert_eq!(o[3], Ok("u4".into()));
    assert_eq!(rows[2].as_ref().unwrap_err().row, 3);
}

#[test]
fn malformed_lines_are_each_one_error() {
    let rows = read("malformed.jsonl");
    let o = outline(&rows);
    assert_eq!(o.len(), 9, "{o:?}");
    assert_eq!(o[0], Ok("m1".into()));
    for (i, expected) in [
        (1, "malformed JSON"),
        (2, "malformed JSON"),
        (3, "expected a JSON object, found an array"),
        (4, "expected a JSON object, found text"),
        (5, "empty row"),
        (6, "empty row"),
        (7, "malformed JSON"),
    ] {
        let reason = o[i].as_ref().unwrap_err();
        assert!(reason.starts_with(expected), "row {}: {reason}", i + 1);
    }
    assert_eq!(o[8], Ok("m9".into()));
}

#[test]
fn wrong_types_are_coerced_or_rejected() {
    let rows = read("wrong-types.jsonl");
    let first = rows[0].as_ref().unwrap();
    assert_eq!(
        (
            first.id.as_deref(),
            first.title.as_deref(),
            first.description.as_deref()
        ),
        (Some("1"), Some("42"), Some("true"))
    );
    let o = outline(&rows);
    assert_eq!(
        o[1],
        Err("field `title` must be text, found an object".into())
    );
    assert_eq!(
        o[2],
        Err("field `description` must be text, found an array".into())
    );
    assert_eq!(
        o[3],
        Err("field `image` must be a file path (text), found a number".into())
    );
    assert!(o[4].as_ref().is_err_and(|r| r.contains("`tags`")));
    assert_eq!(rows[5].as_ref().unwrap().tags, ["a", "b", "c"]);
    assert_eq!(
        o[6],
        Err("has neither an image nor any text (title or description)".into())
    );
    assert_eq!(rows[6].as_ref().unwrap_err().id.as_deref(), Some("w7"));
}

#[test]
fn long_text_is_truncated_with_warnings() {
    let rows = read("long-text.jsonl");
    let desc = rows[0].as_ref().unwrap();
    assert_eq!(
        desc.description.as_ref().unwrap().chars().count(),
        manifest::DEFAULT_MAX_TEXT_CHARS
    );
    assert_eq!(desc.warnings.len(), 1);
    let title = rows[1].as_ref().unwrap();
    assert_eq!(
        title.title.as_ref().unwrap().chars().count(),
        manifest::DEFAULT_MAX_TEXT_CHARS
    );
    assert!(title.warnings[0].contains("from 5000"));
}

#[test]
fn later_duplicate_ids_are_errors() {
    let o = outline(&read("duplicate-ids.jsonl"));
    assert_eq!(o[0], Ok("d1".into()));
    assert_eq!(o[1], Ok("d2".into()));
    assert_eq!(o[2], Err("duplicate id (first used at row 1)".into()));
    assert_eq!(o[3], Err("duplicate id (first used at row 1)".into()));
}

#[test]
fn ragged_csv_rows_are_per_row() {
    let rows = read("ragged.csv");
    let o = outline(&rows);
    assert_eq!(o.len(), 6, "{o:?}");
    let c1 = rows[0].as_ref().unwrap();
    assert_eq!(c1.row, 2);
    assert_eq!(c1.title.as_deref(), Some("Mug, red"));
    assert_eq!(c1.tags, ["kitchen", "cup"]);
    assert_eq!(c1.image, Some(fixture("ok.png")));
    assert_eq!(
        rows[1].as_ref().unwrap().title.as_deref(),
        Some("two\r\nlines")
    );
    assert!(o[2].as_ref().is_err_and(|r| r.contains("has 5 fields")));
    assert_eq!(rows[2].as_ref().unwrap_err().row, 4);
    assert!(o[3].as_ref().is_err_and(|r| r.contains("invalid UTF-8")));
    assert_eq!(o[4], Err("empty row".into()));
    assert_eq!(o[5], Ok("c6".into()));
}

#[test]
fn image_rows_parse_and_point_at_the_corpus() {
    let rows = read("nasty-images.jsonl");
    assert_eq!(rows.len(), 6);
    for r in &rows {
        let row = r.as_ref().unwrap();
        let image = row.image.as_ref().unwrap();
        assert!(image.is_absolute() && image.starts_with(fixture("")));
    }
}

#[test]
fn the_image_fixtures_are_what_the_readme_says() {
    let dims = |name: &str| {
        image::ImageReader::open(fixture(name))
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| e.to_string())
            .and_then(|r| r.into_dimensions().map_err(|e| e.to_string()))
    };
    assert_eq!(dims("ok.png"), Ok((8, 8)));
    // Only the header is read: the bomb's declared size, not what it can decode to.
    assert_eq!(dims("bomb.png"), Ok((60000, 60000)));
    assert!(std::fs::metadata(fixture("bomb.png")).unwrap().len() < 2048);
    assert!(image::open(fixture("ok.png")).is_ok());
    assert!(image::open(fixture("truncated.png")).is_err());
    assert!(image::open(fixture("empty.png")).is_err());
    assert!(image::open(fixture("text-named.jpg")).is_err());
}
