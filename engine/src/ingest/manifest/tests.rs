use std::path::{Path, PathBuf};

use proptest::prelude::*;

use super::*;

type Rows = Vec<std::result::Result<ManifestRow, RowError>>;

fn read(bytes: &[u8], format: Option<ManifestFormat>) -> Rows {
    read_with(bytes, format, &ManifestOptions::default())
}

fn read_with(bytes: &[u8], format: Option<ManifestFormat>, opts: &ManifestOptions) -> Rows {
    ManifestReader::from_reader(
        std::io::Cursor::new(bytes.to_vec()),
        format,
        Path::new("/data/set"),
        opts,
    )
    .unwrap()
    .collect()
}

fn ok(r: &std::result::Result<ManifestRow, RowError>) -> &ManifestRow {
    r.as_ref()
        .unwrap_or_else(|e| panic!("expected a row, got {e}"))
}

fn err(r: &std::result::Result<ManifestRow, RowError>) -> &RowError {
    match r {
        Ok(row) => panic!("expected an error, got {row:?}"),
        Err(e) => e,
    }
}

#[test]
fn jsonl_fields_tags_metadata_and_paths() {
    let rows = read(
        br#"{"id":"a","image":"img/a.png","title":" Red mug ","description":"ceramic","tags":["kitchen"," cup ",""],"label":"mug","price":12.5}
{"id":"b","image":"/abs/b.jpg","title":"Blue mug","tags":"kitchen; cup,blue"}
"#,
        None,
    );
    assert_eq!(rows.len(), 2);
    let a = ok(&rows[0]);
    assert_eq!(a.row, 1);
    assert_eq!(a.id.as_deref(), Some("a"));
    assert_eq!(a.image.as_deref(), Some(Path::new("/data/set/img/a.png")));
    assert_eq!(a.title.as_deref(), Some("Red mug"));
    assert_eq!(a.tags, ["kitchen", "cup"]);
    assert_eq!(a.label.as_deref(), Some("mug"));
    assert_eq!(a.metadata.get("price"), Some(&serde_json::json!(12.5)));
    assert!(a.warnings.is_empty());
    let b = ok(&rows[1]);
    assert_eq!(b.row, 2);
    assert_eq!(b.image.as_deref(), Some(Path::new("/abs/b.jpg")));
    assert_eq!(b.tags, ["kitchen", "cup", "blue"]);
    assert_eq!(b.description, None);
}

#[test]
fn images_root_overrides_the_manifest_folder() {
    let opts = ManifestOptions {
        images_root: Some(PathBuf::from("/photos")),
        ..ManifestOptions::default()
    };
    let rows = read_with(br#"{"image":"x/1.png"}"#, None, &opts);
    assert_eq!(
        ok(&rows[0]).image.as_deref(),
        Some(Path::new("/photos/x/1.png"))
    );
}

#[test]
fn csv_quoted_fields_and_line_numbers() {
    let rows = read(
        b"id,title,description,tags,image,extra\n\
          1,\"Mug, red\",\"two\nlines\",\"a;b\",m.png,x\n\
          2,Plate,,,,\n",
        Some(ManifestFormat::Csv),
    );
    assert_eq!(rows.len(), 2);
    let first = ok(&rows[0]);
    assert_eq!(first.row, 2);
    assert_eq!(first.title.as_deref(), Some("Mug, red"));
    assert_eq!(first.description.as_deref(), Some("two\nlines"));
    assert_eq!(first.tags, ["a", "b"]);
    assert_eq!(first.metadata.get("extra"), Some(&serde_json::json!("x")));
    // Rows are records, as a spreadsheet numbers them: the first spans two lines.
    let second = ok(&rows[1]);
    assert_eq!(second.row, 3);
    assert_eq!(second.image, None);
    assert!(second.metadata.is_empty());
}

#[test]
fn format_is_sniffed() {
    let tsv = read(b"title\timage\nMug\tm.png\n", None);
    assert_eq!(ok(&tsv[0]).title.as_deref(), Some("Mug"));
    let csv = read(b"\xEF\xBB\xBFTitle,Image\nMug,m.png\n", None);
    assert_eq!(ok(&csv[0]).title.as_deref(), Some("Mug"));
    let array = read(b"[{\"title\":\"a\"}, 3, {\"title\":\"c\"}]", None);
    assert_eq!(array.len(), 3);
    assert_eq!(ok(&array[2]).row, 3);
    assert!(err(&array[1]).reason.contains("expected a JSON object"));
    let jsonl = read(
        b"\xEF\xBB\xBF{\"title\":\"a\"}\r\n{\"title\":\"b\"}\r\n",
        None,
    );
    assert_eq!(ok(&jsonl[0]).title.as_deref(), Some("a"));
    assert_eq!(ok(&jsonl[1]).title.as_deref(), Some("b"));
}

#[test]
fn text_fields_coerce_scalars_and_reject_structures() {
    let rows = read(
        br#"{"id":7,"title":42,"description":true}
{"id":"x","title":{"en":"mug"}}
{"id":"y","title":"t","description":["a"]}
{"id":"z","title":"t","image":5}
{"id":{"k":1},"title":"t"}
{"title":"t","tags":[["nested"]]}
"#,
        None,
    );
    let first = ok(&rows[0]);
    assert_eq!(first.id.as_deref(), Some("7"));
    assert_eq!(first.title.as_deref(), Some("42"));
    assert_eq!(first.description.as_deref(), Some("true"));
    let e = err(&rows[1]);
    assert_eq!((e.row, e.id.as_deref()), (2, Some("x")));
    assert_eq!(e.reason, "field `title` must be text, found an object");
    assert!(err(&rows[2])
        .reason
        .contains("`description` must be text, found an array"));
    assert!(err(&rows[3]).reason.contains("`image` must be a file path"));
    assert!(err(&rows[4]).reason.contains("`id` must be text"));
    assert!(err(&rows[5]).reason.contains("`tags`"));
}

#[test]
fn one_bad_line_never_stops_the_good_ones() {
    let mut bytes =
        b"{\"title\":\"good 1\"}\n{\"title\":\"bad \xff\xfe\"}\n{\"title\": \n".to_vec();
    bytes.extend_from_slice(b"[1,2]\n\n   \n{}\n{\"title\":\"good 2\"}");
    let rows = read(&bytes, None);
    assert_eq!(rows.len(), 8);
    assert_eq!(ok(&rows[0]).title.as_deref(), Some("good 1"));
    assert!(
        err(&rows[1]).reason.starts_with("invalid UTF-8 at byte 15"),
        "{}",
        err(&rows[1])
    );
    assert!(err(&rows[2]).reason.starts_with("malformed JSON"));
    assert!(err(&rows[3]).reason.contains("found an array"));
    for (i, r) in rows.iter().enumerate().take(7).skip(4) {
        assert_eq!(err(r).reason, "empty row", "row {}", i + 1);
    }
    assert_eq!(ok(&rows[7]).row, 8);
}

#[test]
fn content_duplicates_and_blanks() {
    let rows = read(
        br#"{"id":"a","title":"   ","description":"","image":""}
{"id":"a","title":"first a"}
{"id":"a","title":"second a"}
{"id":"b","tags":["only","tags"],"price":3}
{"id":"c","image":"https://example.invalid/x.png","title":"t"}
"#,
        None,
    );
    // Row 1 has only an id: blank text is missing text.
    assert!(err(&rows[0])
        .reason
        .contains("neither an image nor any text"));
    // Its id does not count, so row 2 is the first `a`.
    assert_eq!(ok(&rows[1]).title.as_deref(), Some("first a"));
    let dup = err(&rows[2]);
    assert_eq!(dup.id.as_deref(), Some("a"));
    assert_eq!(dup.reason, "duplicate id (first used at row 2)");
    assert!(err(&rows[3])
        .reason
        .contains("neither an image nor any text"));
    assert!(err(&rows[4]).reason.contains("is a URL"));
    assert_eq!(
        err(&rows[4]).to_string().split(':').next(),
        Some("row 5 (id `c`)")
    );
}

#[test]
fn long_text_is_truncated_with_a_warning() {
    let opts = ManifestOptions {
        max_text_chars: 5,
        ..ManifestOptions::default()
    };
    let rows = read_with(
        "{\"title\":\"ééééééé\",\"description\":\"short\"}".as_bytes(),
        None,
        &opts,
    );
    let row = ok(&rows[0]);
    assert_eq!(row.title.as_deref(), Some("ééééé"));
    assert_eq!(row.description.as_deref(), Some("short"));
    assert_eq!(row.warnings, ["`title` truncated from 7 to 5 characters"]);
}

#[test]
fn overlong_lines_are_rejected_without_buffering() {
    let opts = ManifestOptions {
        max_line_bytes: 64,
        ..ManifestOptions::default()
    };
    let long = format!(
        "{{\"title\":\"{}\"}}\n{{\"title\":\"ok\"}}\n",
        "x".repeat(10_000)
    );
    let rows = read_with(long.as_bytes(), None, &opts);
    assert_eq!(rows.len(), 2);
    assert!(err(&rows[0]).reason.contains("longer than 64 bytes"));
    assert_eq!(ok(&rows[1]).row, 2);
}

#[test]
fn csv_row_problems_are_per_row() {
    let rows = read(
        b"title,image\nok,a.png\nbad \xff,b.png\n,,\nx,y,z\nlast,\n",
        Some(ManifestFormat::Csv),
    );
    assert_eq!(rows.len(), 5);
    assert_eq!(ok(&rows[0]).row, 2);
    let e = err(&rows[1]);
    assert_eq!(e.row, 3);
    assert!(e.reason.contains("invalid UTF-8 in column `title`"), "{e}");
    assert_eq!(err(&rows[2]).reason, "empty row");
    assert!(err(&rows[3])
        .reason
        .contains("has 3 fields but the header has 2"));
    assert_eq!(ok(&rows[4]).title.as_deref(), Some("last"));
}

#[test]
fn csv_header_problems_fail_the_whole_file() {
    let dup = ManifestReader::from_reader(
        std::io::Cursor::new(b"title,Title\n".to_vec()),
        Some(ManifestFormat::Csv),
        Path::new("/"),
        &ManifestOptions::default(),
    );
    // Case-different names are distinct columns, but map to the same field.
    let rows: Rows = dup.unwrap().collect();
    assert!(rows.is_empty());
    let rows = read(b"title,Title\na,b\n", Some(ManifestFormat::Csv));
    assert!(err(&rows[0]).reason.contains("given twice"));
    let same = ManifestReader::from_reader(
        std::io::Cursor::new(b"title,title\n".to_vec()),
        Some(ManifestFormat::Csv),
        Path::new("/"),
        &ManifestOptions::default(),
    );
    assert!(same.is_err());
}

#[test]
fn open_resolves_against_the_manifest_folder() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("items.csv");
    std::fs::write(&path, "image,title\nimgs/1.png,one\n").unwrap();
    let rows: Rows = open(&path, &ManifestOptions::default()).unwrap().collect();
    assert_eq!(ok(&rows[0]).image, Some(dir.path().join("imgs/1.png")));
    let missing = open(&dir.path().join("nope.jsonl"), &ManifestOptions::default());
    assert!(missing.is_err());
}

/// The number of JSONL lines the reader must account for: newline-separated segments, the
/// empty segment after a final newline excluded.
fn jsonl_line_count(bytes: &[u8]) -> usize {
    if bytes.is_empty() {
        return 0;
    }
    let newlines = bytes.iter().filter(|&&b| b == b'\n').count();
    if bytes.last() == Some(&b'\n') {
        newlines
    } else {
        newlines + 1
    }
}

fn arbitrary_manifest() -> impl Strategy<Value = Vec<u8>> {
    // Mix raw bytes with JSON-ish fragments so the parser sees near-valid input too.
    let fragment = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..16),
        Just(b"{\"title\":\"t\"}\n".to_vec()),
        Just(b"{\"id\":\"a\",\"image\":\"x.png\"}\n".to_vec()),
        Just(b"\"title\",\"image\"\n".to_vec()),
        Just(b"{\"tags\":[1,[2]],\"title\":{}}".to_vec()),
        Just(b"\n\r\n,;\t\"".to_vec()),
        Just(b"\xEF\xBB\xBF".to_vec()),
    ];
    proptest::collection::vec(fragment, 0..24).prop_map(|parts| parts.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn jsonl_accounts_for_every_line(bytes in arbitrary_manifest()) {
        let opts = ManifestOptions { max_line_bytes: 48, ..ManifestOptions::default() };
        let rows = read_with(&bytes, Some(ManifestFormat::Jsonl), &opts);
        prop_assert_eq!(rows.len(), jsonl_line_count(&bytes));
        for (i, r) in rows.iter().enumerate() {
            let n = match r { Ok(row) => row.row, Err(e) => e.row };
            prop_assert_eq!(n, i + 1);
        }
    }

    #[test]
    fn csv_and_sniffing_never_panic(bytes in arbitrary_manifest()) {
        for format in [Some(ManifestFormat::Csv), Some(ManifestFormat::Tsv), None] {
            let reader = ManifestReader::from_reader(
                std::io::Cursor::new(bytes.clone()), format, Path::new("/m"),
                &ManifestOptions::default(),
            );
            // A whole-file error (unreadable header, malformed array) is a fine answer too.
            let Ok(reader) = reader else { continue };
            let mut last = 0;
            for r in reader.take(10_000) {
                let n = match &r { Ok(row) => row.row, Err(e) => e.row };
                prop_assert!(n > last, "row numbers must increase: {} after {}", n, last);
                last = n;
                if let Ok(row) = r {
                    prop_assert!(row.image.is_some() || row.title.is_some() || row.description.is_some());
                }
            }
        }
    }

    #[test]
    fn valid_rows_round_trip(
        items in proptest::collection::vec(
            ("[a-z0-9]{1,8}", "\\PC{0,40}", proptest::collection::vec("[a-z]{1,6}", 0..4)),
            1..20,
        )
    ) {
        let mut jsonl = String::new();
        let mut expected = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (id, title, tags) in &items {
            jsonl.push_str(&serde_json::json!({"id": id, "title": title, "tags": tags, "image": "i.png"}).to_string());
            jsonl.push('\n');
            expected.push(seen.insert(id.clone()));
        }
        let rows = read(jsonl.as_bytes(), None);
        prop_assert_eq!(rows.len(), items.len());
        for ((r, (id, title, tags)), first) in rows.iter().zip(&items).zip(expected) {
            match r {
                Ok(row) => {
                    prop_assert!(first);
                    prop_assert_eq!(row.id.as_deref(), Some(id.as_str()));
                    let t = title.trim();
                    prop_assert_eq!(row.title.as_deref(), if t.is_empty() { None } else { Some(t) });
                    prop_assert_eq!(&row.tags, tags);
                }
                Err(e) => {
                    prop_assert!(!first);
                    prop_assert!(e.reason.starts_with("duplicate id"));
                }
            }
        }
    }
}
