//! Reading weight files (safetensors, legacy PyTorch `.pth`) and handing out `VarBuilder`s.
//!
//! This is the only module that opens weight files; models receive a `VarBuilder`. The format
//! is told from the file's first bytes rather than its extension, so a renamed file still
//! loads and a wrong file is named as such.

mod pth;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Error, Result};

/// The weight-file formats Trio reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    Safetensors,
    /// PyTorch's zip framing (`torch.save` since 1.6).
    PthZip,
    /// PyTorch's legacy framing (before 1.6, or `_use_new_zipfile_serialization=False`).
    PthLegacy,
}

/// File names tried, in order, when a folder is given instead of a file.
const FOLDER_CANDIDATES: &[&str] = &["model.safetensors", "pytorch_model.bin"];
/// Extensions that mark a weights file when a folder holds a single one.
const WEIGHT_EXTENSIONS: &[&str] = &["safetensors", "pth", "pt", "bin"];

/// Tells a weight file's format from its first bytes.
pub fn detect_format(path: &Path) -> Result<WeightsFormat> {
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(path)
        .and_then(|f| f.take(16).read_to_end(&mut head))
        .map_err(|e| Error::io(path, e))?;
    if let Some(framing) = pth::sniff(&head) {
        return Ok(match framing {
            pth::PthFraming::Legacy => WeightsFormat::PthLegacy,
            pth::PthFraming::Zip => WeightsFormat::PthZip,
        });
    }
    // safetensors: a little-endian u64 header length, then a JSON object.
    if head.len() >= 9 && head[8] == b'{' {
        return Ok(WeightsFormat::Safetensors);
    }
    Err(Error::NotWeightsFile {
        path: path.to_path_buf(),
        reason: if head.is_empty() {
            "the file is empty".into()
        } else {
            "neither safetensors nor a PyTorch checkpoint".into()
        },
    })
}

/// Reads every tensor of a weight file onto the CPU, keyed by name.
pub fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let tensors =
        match detect_format(path)? {
            WeightsFormat::Safetensors => candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| Error::MalformedWeights {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                })?,
            WeightsFormat::PthZip | WeightsFormat::PthLegacy => {
                pth::read_pth(path)?.into_iter().collect()
            }
        };
    tracing::debug!(path = %path.display(), tensors = tensors.len(), "loaded weights");
    Ok(tensors)
}

/// A `VarBuilder` over a weight file, or over the one weight file in a folder. Tensors are
/// moved to `device` and converted to `dtype` as the model asks for them.
pub fn var_builder(path: &Path, dtype: DType, device: &Device) -> Result<VarBuilder<'static>> {
    let file = resolve_weights_file(path)?;
    let tensors = load_tensors(&file)?;
    Ok(VarBuilder::from_tensors(tensors, dtype, device))
}

/// The weight file a path stands for: the path itself, or the single weight file in a folder.
pub fn resolve_weights_file(path: &Path) -> Result<PathBuf> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such weights file"),
            ));
        }
        return Ok(path.to_path_buf());
    }
    for name in FOLDER_CANDIDATES {
        let candidate = path.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    let entries = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(path, e))?;
        let p = entry.path();
        let is_weights = p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| WEIGHT_EXTENSIONS.contains(&e));
        if is_weights && p.is_file() {
            found.push(p);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(Error::NotWeightsFile {
            path: path.to_path_buf(),
            reason: "a folder with no .safetensors/.pth/.pt/.bin file".into(),
        }),
        n => Err(Error::NotWeightsFile {
            path: path.to_path_buf(),
            reason: format!("a folder with {n} weight files; name one"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_empty_and_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pth");
        std::fs::write(&empty, b"").unwrap();
        let err = load_tensors(&empty).unwrap_err().to_string();
        assert!(err.contains("empty.pth") && err.contains("empty"), "{err}");

        let text = dir.path().join("notes.pth");
        std::fs::write(&text, b"hello, these are not weights").unwrap();
        let err = load_tensors(&text).unwrap_err().to_string();
        assert!(err.contains("not a weights file"), "{err}");
    }

    #[test]
    fn round_trips_safetensors_and_finds_it_in_a_folder() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::arange(0f32, 6., &Device::Cpu)
            .unwrap()
            .reshape((2, 3))
            .unwrap();
        let file = dir.path().join("model.safetensors");
        candle_core::safetensors::save(&HashMap::from([("w".to_string(), t)]), &file).unwrap();
        assert_eq!(detect_format(&file).unwrap(), WeightsFormat::Safetensors);
        let vb = var_builder(dir.path(), DType::F32, &Device::Cpu).unwrap();
        let w = vb.get((2, 3), "w").unwrap();
        assert_eq!(w.to_vec2::<f32>().unwrap(), [[0., 1., 2.], [3., 4., 5.]]);
    }

    #[test]
    fn a_folder_with_two_weight_files_is_ambiguous() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.pth"), b"x").unwrap();
        std::fs::write(dir.path().join("b.pth"), b"x").unwrap();
        let err = resolve_weights_file(dir.path()).unwrap_err().to_string();
        assert!(err.contains("2 weight files"), "{err}");
    }
}
