//! The demo catalogue: emoji from two vendors as image–title–description trios.
//!
//! Sources (placed by `trio fetch`, group `demo`): `emoji.json` (emoji-datasource: names, short
//! names, categories, image file names, which vendors have an image) and `emojibase-en.json`
//! (emojibase: English CLDR labels and tags), joined on the code points with every `FE0F`
//! (variation selector 16) removed, since the two projects disagree on where it appears.
//!
//! One row per (emoji, vendor) that has an image:
//! - id `<vendor>:<unified>`, title = the emoji-datasource name, lowercased;
//! - description = the CLDR label (when it differs from the title), the tags and the short
//!   names, comma-separated; tags = the emojibase tags; label = the subcategory;
//! - metadata: `category`, `vendor`, `codepoints`, `emoji` (the character itself), and
//!   `emoji_key` — the *base* emoji's code points, equal across vendors and skin tones, so a
//!   train/test split by `emoji_key` never puts the same emoji on both sides.
//!
//! Choices: the `Component` category (bare skin-tone swatches, hair pieces) is skipped — those
//! are modifiers, not emoji. Skin-tone variants are kept by default (they are distinct images,
//! and make near-duplicates worth finding) with `metadata.skin_tone` and the base's
//! `emoji_key`; [`DemoOptions::skin_tones`] turns them off.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::manifest::ManifestRow;
use crate::error::{Error, Result};

/// Emoji-datasource file, relative to the emoji folder.
pub const EMOJI_FILE: &str = "emoji.json";
/// Emojibase English data, relative to the emoji folder.
pub const EMOJIBASE_FILE: &str = "emojibase-en.json";
/// Image size folder used (the packages ship 64 px images).
const IMAGE_SIZE_DIR: &str = "64";
/// The category of modifiers that are not emoji on their own.
const COMPONENT_CATEGORY: &str = "Component";

/// Whose artwork an image is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Google,
    Twitter,
}

impl Vendor {
    pub const ALL: [Vendor; 2] = [Vendor::Google, Vendor::Twitter];

    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Google => "google",
            Vendor::Twitter => "twitter",
        }
    }

    /// The folder holding this vendor's images.
    pub fn image_dir(self, emoji_dir: &Path) -> PathBuf {
        emoji_dir
            .join("img")
            .join(self.as_str())
            .join(IMAGE_SIZE_DIR)
    }

    fn has_image(self, flags: &ImageFlags) -> bool {
        match self {
            Vendor::Google => flags.has_img_google,
            Vendor::Twitter => flags.has_img_twitter,
        }
    }
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Vendor {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Vendor::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown emoji vendor `{s}`: expected google or twitter"
                ))
            })
    }
}

/// Which rows to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoOptions {
    /// Include skin-tone variants (about half the images).
    pub skin_tones: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions { skin_tones: true }
    }
}

#[derive(Debug, Deserialize)]
struct ImageFlags {
    #[serde(default)]
    has_img_google: bool,
    #[serde(default)]
    has_img_twitter: bool,
}

#[derive(Debug, Deserialize)]
struct DatasourceEmoji {
    name: Option<String>,
    unified: String,
    #[serde(default)]
    short_names: Vec<String>,
    category: String,
    subcategory: String,
    image: String,
    #[serde(default)]
    sort_order: u32,
    #[serde(flatten)]
    flags: ImageFlags,
    #[serde(default)]
    skin_variations: Option<BTreeMap<String, SkinVariation>>,
}

#[derive(Debug, Deserialize)]
struct SkinVariation {
    unified: String,
    image: String,
    #[serde(flatten)]
    flags: ImageFlags,
}

#[derive(Debug, Deserialize)]
struct EmojibaseEntry {
    label: String,
    hexcode: String,
    #[serde(default)]
    tags: Vec<String>,
}

/// The demo rows for `vendors`, with skin-tone variants (see the module docs).
pub fn load(emoji_dir: &Path, vendors: &[Vendor]) -> Result<Vec<ManifestRow>> {
    load_with(emoji_dir, vendors, &DemoOptions::default())
}

/// The demo rows for `vendors` with explicit options.
pub fn load_with(
    emoji_dir: &Path,
    vendors: &[Vendor],
    opts: &DemoOptions,
) -> Result<Vec<ManifestRow>> {
    let emoji_dir = std::path::absolute(emoji_dir).unwrap_or_else(|_| emoji_dir.to_path_buf());
    let mut emoji: Vec<DatasourceEmoji> = read_json(&emoji_dir.join(EMOJI_FILE))?;
    let emojibase: Vec<EmojibaseEntry> = read_json(&emoji_dir.join(EMOJIBASE_FILE))?;
    let by_key: HashMap<String, &EmojibaseEntry> = emojibase
        .iter()
        .map(|e| (match_key(&e.hexcode), e))
        .collect();

    let mut seen = HashSet::new();
    let vendors: Vec<Vendor> = vendors
        .iter()
        .copied()
        .filter(|v| seen.insert(*v))
        .collect();
    for v in &vendors {
        let dir = v.image_dir(&emoji_dir);
        if !dir.is_dir() {
            return Err(Error::DemoCatalogue {
                path: dir,
                reason: format!("no {v} images here; run `trio fetch` (group demo)"),
            });
        }
    }

    emoji.sort_by_key(|e| e.sort_order);
    let mut rows = Vec::new();
    let mut missing_images = 0usize;
    for e in emoji.iter().filter(|e| e.category != COMPONENT_CATEGORY) {
        let base = by_key.get(&match_key(&e.unified)).copied();
        let title = e
            .name
            .as_deref()
            .filter(|n| !n.trim().is_empty())
            .or(e.short_names.first().map(String::as_str))
            .unwrap_or(&e.unified)
            .to_lowercase();
        let description = describe(&title, base, &e.short_names);
        let tags = base.map(|b| b.tags.clone()).unwrap_or_default();

        let mut variants = vec![(e.unified.as_str(), e.image.as_str(), &e.flags, None)];
        if opts.skin_tones {
            for (tone, sv) in e.skin_variations.iter().flatten() {
                variants.push((
                    sv.unified.as_str(),
                    sv.image.as_str(),
                    &sv.flags,
                    Some(tone),
                ));
            }
        }
        for (unified, image, flags, tone) in variants {
            for &vendor in &vendors {
                if !vendor.has_image(flags) {
                    continue;
                }
                let path = vendor.image_dir(&emoji_dir).join(image);
                if !path.is_file() {
                    missing_images += 1;
                    continue;
                }
                let mut metadata = Map::new();
                metadata.insert("category".into(), Value::from(e.category.clone()));
                metadata.insert("vendor".into(), Value::from(vendor.as_str()));
                metadata.insert("codepoints".into(), Value::from(unified));
                metadata.insert("emoji".into(), Value::from(emoji_string(unified)));
                metadata.insert("emoji_key".into(), Value::from(e.unified.clone()));
                let title = match tone {
                    Some(t) => {
                        metadata.insert("skin_tone".into(), Value::from(t.clone()));
                        let sep = if title.contains(':') { ", " } else { ": " };
                        format!("{title}{sep}{}", tone_names(t))
                    }
                    None => title.clone(),
                };
                rows.push(ManifestRow {
                    row: rows.len() + 1,
                    id: Some(format!("{vendor}:{unified}")),
                    image: Some(path),
                    title: Some(title),
                    description: description.clone(),
                    tags: tags.clone(),
                    label: Some(e.subcategory.clone()),
                    metadata,
                    warnings: Vec::new(),
                });
            }
        }
    }
    if missing_images > 0 {
        tracing::warn!(
            missing_images,
            dir = %emoji_dir.display(),
            "emoji listed as having an image but the file is missing; skipped"
        );
    }
    Ok(rows)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(|e| Error::DemoCatalogue {
        path: path.to_path_buf(),
        reason: format!("{e}; run `trio fetch` (group demo)"),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::DemoCatalogue {
        path: path.to_path_buf(),
        reason: format!("not in the expected format: {e}"),
    })
}

/// The join key between the two sources: upper-case code points with `FE0F` removed.
fn match_key(hex: &str) -> String {
    hex.split('-')
        .map(|p| p.trim().to_ascii_uppercase())
        .filter(|p| p != "FE0F" && !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
}

/// The emoji character(s) for dash-separated hex code points.
fn emoji_string(unified: &str) -> String {
    unified
        .split('-')
        .filter_map(|h| u32::from_str_radix(h, 16).ok())
        .filter_map(char::from_u32)
        .collect()
}

/// `1F3FB-1F3FD` → `light skin tone, medium skin tone` (each tone named once).
fn tone_names(key: &str) -> String {
    let mut names: Vec<&str> = Vec::new();
    for part in key.split('-') {
        let name = match part.to_ascii_uppercase().as_str() {
            "1F3FB" => "light skin tone",
            "1F3FC" => "medium-light skin tone",
            "1F3FD" => "medium skin tone",
            "1F3FE" => "medium-dark skin tone",
            "1F3FF" => "dark skin tone",
            _ => continue,
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    if names.is_empty() {
        key.to_string()
    } else {
        names.join(", ")
    }
}

/// CLDR label (if it adds anything), tags and short names, deduplicated, comma-separated.
fn describe(title: &str, base: Option<&EmojibaseEntry>, short_names: &[String]) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut push = |s: String| {
        let s = s.trim().to_string();
        if !s.is_empty() && !parts.contains(&s) {
            parts.push(s);
        }
    };
    if let Some(b) = base {
        if b.label.to_lowercase() != title {
            push(b.label.clone());
        }
        for t in &b.tags {
            push(t.clone());
        }
    }
    for s in short_names {
        push(s.replace('_', " "));
    }
    if parts.is_empty() {
        None
    } else {
        Some(parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMOJI_JSON: &str = r#"[
      {"name":"WAVING HAND SIGN","unified":"1F44B","short_names":["wave"],"category":"People & Body",
       "subcategory":"hand-fingers-open","image":"1f44b.png","sort_order":2,
       "has_img_google":true,"has_img_twitter":true,
       "skin_variations":{"1F3FB":{"unified":"1F44B-1F3FB","image":"1f44b-1f3fb.png",
         "has_img_google":true,"has_img_twitter":false}}},
      {"name":"RED HEART","unified":"2764-FE0F","short_names":["heart"],"category":"Smileys & Emotion",
       "subcategory":"heart","image":"2764-fe0f.png","sort_order":1,
       "has_img_google":true,"has_img_twitter":true},
      {"name":"EMOJI MODIFIER FITZPATRICK TYPE-1-2","unified":"1F3FB","short_names":["skin-tone-2"],
       "category":"Component","subcategory":"skin-tone","image":"1f3fb.png","sort_order":3,
       "has_img_google":true,"has_img_twitter":true},
      {"name":"NO TWITTER ART","unified":"1F600","short_names":["grinning"],"category":"Smileys & Emotion",
       "subcategory":"face-smiling","image":"1f600.png","sort_order":4,
       "has_img_google":true,"has_img_twitter":false}
    ]"#;

    const EMOJIBASE_JSON: &str = r#"[
      {"label":"waving hand","hexcode":"1F44B","tags":["hand","wave"],
       "skins":[{"label":"waving hand: light skin tone","hexcode":"1F44B-1F3FB"}]},
      {"label":"red heart","hexcode":"2764","tags":["heart","love"]},
      {"label":"grinning face","hexcode":"1F600","tags":["face","grin"]}
    ]"#;

    fn fixture(with_images: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(EMOJI_FILE), EMOJI_JSON).unwrap();
        std::fs::write(dir.path().join(EMOJIBASE_FILE), EMOJIBASE_JSON).unwrap();
        for v in Vendor::ALL {
            let img = v.image_dir(dir.path());
            std::fs::create_dir_all(&img).unwrap();
            if with_images {
                for f in [
                    "1f44b.png",
                    "1f44b-1f3fb.png",
                    "2764-fe0f.png",
                    "1f3fb.png",
                    "1f600.png",
                ] {
                    std::fs::write(img.join(f), b"png").unwrap();
                }
            }
        }
        dir
    }

    #[test]
    fn rows_join_both_sources() {
        let dir = fixture(true);
        let rows = load(dir.path(), &Vendor::ALL).unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_deref().unwrap()).collect();
        // Sorted by sort_order; components skipped; vendors without art skipped.
        assert_eq!(
            ids,
            [
                "google:2764-FE0F",
                "twitter:2764-FE0F",
                "google:1F44B",
                "twitter:1F44B",
                "google:1F44B-1F3FB",
                "google:1F600",
            ]
        );
        let heart = &rows[1];
        assert_eq!(heart.row, 2);
        assert_eq!(heart.title.as_deref(), Some("red heart"));
        // FE0F-insensitive join found the emojibase tags.
        assert_eq!(heart.tags, ["heart", "love"]);
        assert_eq!(heart.description.as_deref(), Some("heart, love"));
        assert_eq!(heart.label.as_deref(), Some("heart"));
        assert_eq!(heart.metadata["vendor"], "twitter");
        assert_eq!(heart.metadata["emoji"], "\u{2764}\u{FE0F}");
        assert!(heart
            .image
            .as_ref()
            .unwrap()
            .ends_with("img/twitter/64/2764-fe0f.png"));

        let wave = &rows[2];
        assert_eq!(wave.title.as_deref(), Some("waving hand sign"));
        assert_eq!(wave.description.as_deref(), Some("waving hand, hand, wave"));
        let tone = &rows[4];
        assert_eq!(
            tone.title.as_deref(),
            Some("waving hand sign: light skin tone")
        );
        assert_eq!(tone.metadata["emoji_key"], "1F44B");
        assert_eq!(tone.metadata["skin_tone"], "1F3FB");
        assert_eq!(tone.metadata["codepoints"], "1F44B-1F3FB");
        assert_eq!(tone.tags, wave.tags);
    }

    #[test]
    fn options_and_vendor_selection() {
        let dir = fixture(true);
        let rows = load_with(
            dir.path(),
            &[Vendor::Twitter, Vendor::Twitter],
            &DemoOptions { skin_tones: false },
        )
        .unwrap();
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_deref().unwrap()).collect();
        assert_eq!(ids, ["twitter:2764-FE0F", "twitter:1F44B"]);
    }

    #[test]
    fn missing_files_are_skipped_or_reported() {
        let dir = fixture(false);
        assert!(load(dir.path(), &Vendor::ALL).unwrap().is_empty());
        std::fs::remove_dir_all(dir.path().join("img/google")).unwrap();
        let err = load(dir.path(), &[Vendor::Google]).unwrap_err().to_string();
        assert!(
            err.contains("no google images") && err.contains("trio fetch"),
            "{err}"
        );
        std::fs::remove_file(dir.path().join(EMOJI_FILE)).unwrap();
        let err = load(dir.path(), &[]).unwrap_err().to_string();
        assert!(err.contains(EMOJI_FILE), "{err}");
    }

    #[test]
    fn helpers() {
        assert_eq!(match_key("0023-fe0f-20E3"), "0023-20E3");
        assert_eq!(tone_names("1F3FB-1F3FB"), "light skin tone");
        assert_eq!(
            tone_names("1F3FC-1F3FF"),
            "medium-light skin tone, dark skin tone"
        );
        assert_eq!(emoji_string("1F600"), "\u{1F600}");
        assert_eq!("twitter".parse::<Vendor>().unwrap(), Vendor::Twitter);
        assert!("apple".parse::<Vendor>().is_err());
    }
}
