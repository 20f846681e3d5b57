//! The text tower: texts in, unit-length sentence vectors out (384-d for all-MiniLM-L6-v2).
//!
//! It reproduces sentence-transformers' pipeline for a BERT-family model in a Hugging Face
//! folder (`config.json`, `model.safetensors`, `tokenizer.json`): tokenise with special tokens,
//! truncate to the model's `max_seq_length`, encode, mean-pool over the real tokens,
//! L2-normalise. Texts are sorted by length into batches, so each batch holds similar lengths
//! (little padding on devices that pad), and results come back in the caller's order.
//!
//! An empty or whitespace-only text is a *missing* field, not a text: callers get `None` for it
//! (or an error from [`TextTower::embed`]), never the embedding of "".

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::error::{Error, Result};
use crate::kernels::vector::normalize;
use crate::models::minilm::{Backend, Config, MiniLm};

/// Sequences per forward pass: large enough to keep the GEMMs efficient, small enough to bound
/// activation memory (about 25 MB for 64 texts of 256 tokens).
const BATCH_SIZE: usize = 64;

/// Texts embedded by [`TextTower::embed_with_report`], with what the caller should be told.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEmbeddings {
    /// One entry per input: `None` for a missing (absent, empty or whitespace-only) text.
    pub vectors: Vec<Option<Vec<f32>>>,
    /// Indices of the inputs cut to the model's maximum length before embedding.
    pub truncated: Vec<usize>,
}

/// A frozen sentence encoder with its tokenizer. `Send + Sync`: share it in an `Arc`.
pub struct TextTower {
    tokenizer: Tokenizer,
    model: MiniLm,
    max_tokens: usize,
    folder: PathBuf,
    device: Device,
}

impl TextTower {
    /// Loads the model in `folder` onto `device`, with the fastest backend for it.
    pub fn load(folder: &Path, device: &Device) -> Result<Self> {
        Self::load_with(folder, device, Backend::Auto)
    }

    /// Loads the model in `folder` onto `device`, run by `backend`.
    pub fn load_with(folder: &Path, device: &Device, backend: Backend) -> Result<Self> {
        let config_path = folder.join("config.json");
        let config: Config = read_json(&config_path)?;
        let weights = folder.join("model.safetensors");
        if !weights.is_file() {
            return Err(Error::io(&weights, std::io::ErrorKind::NotFound.into()));
        }
        check_pooling(folder)?;
        let max_tokens = max_tokens(folder, &config)?;

        let tokenizer_path = folder.join("tokenizer.json");
        let tokenizer_error = |reason: String| Error::Tokenizer {
            path: tokenizer_path.clone(),
            reason,
        };
        if !tokenizer_path.is_file() {
            return Err(Error::io(
                &tokenizer_path,
                std::io::ErrorKind::NotFound.into(),
            ));
        }
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| tokenizer_error(e.to_string()))?;
        // tokenizer.json may pin padding and truncation (MiniLM's pads everything to 128):
        // we pad per batch ourselves and truncate where sentence-transformers does.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_tokens,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| tokenizer_error(e.to_string()))?;

        // SAFETY: the weights file is mapped read-only; like every model loader we assume
        // nobody rewrites it while the tower is loading.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device)? };
        let model = MiniLm::load_with(vb, &config, backend)?;
        tracing::debug!(folder = %folder.display(), max_tokens, "text tower loaded");
        Ok(TextTower {
            tokenizer,
            model,
            max_tokens,
            folder: folder.to_path_buf(),
            device: device.clone(),
        })
    }

    /// Where the encoder runs.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The width of the vectors (384 for all-MiniLM-L6-v2).
    pub fn dim(&self) -> usize {
        self.model.hidden_size()
    }

    /// Tokens per text, special tokens included, beyond which texts are truncated.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// Embeds texts that must all be present; an empty or whitespace-only text is an
    /// [`Error::EmptyText`] naming its index. Truncations are logged.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        if let Some(index) = texts.iter().position(|t| is_missing(t)) {
            return Err(Error::EmptyText { index });
        }
        let fields: Vec<Option<&str>> = texts.iter().map(|&t| Some(t)).collect();
        Ok(self.embed_fields(&fields)?.into_iter().flatten().collect())
    }

    /// Embeds optional text fields: `None`, empty and whitespace-only texts give `None`.
    /// Truncations are logged; use [`TextTower::embed_with_report`] to get them.
    pub fn embed_fields(&self, texts: &[Option<&str>]) -> Result<Vec<Option<Vec<f32>>>> {
        let report = self.embed_with_report(texts)?;
        if !report.truncated.is_empty() {
            tracing::warn!(
                truncated = report.truncated.len(),
                max_tokens = self.max_tokens,
                "texts longer than the text model's limit were truncated"
            );
        }
        Ok(report.vectors)
    }

    /// Embeds optional text fields and reports which were truncated.
    pub fn embed_with_report(&self, texts: &[Option<&str>]) -> Result<TextEmbeddings> {
        let present: Vec<(usize, &str)> = texts
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.filter(|t| !is_missing(t)).map(|t| (i, t)))
            .collect();
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        let mut truncated = Vec::new();
        if present.is_empty() {
            return Ok(TextEmbeddings { vectors, truncated });
        }

        let inputs: Vec<&str> = present.iter().map(|&(_, t)| t).collect();
        let encodings = self
            .tokenizer
            .encode_batch_fast(inputs, true)
            .map_err(|e| Error::Tokenizer {
                path: self.folder.join("tokenizer.json"),
                reason: e.to_string(),
            })?;
        for (&(index, _), enc) in present.iter().zip(&encodings) {
            if !enc.get_overflowing().is_empty() {
                truncated.push(index);
            }
        }

        // Longest first, so each batch holds similar lengths; `order` maps back.
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(encodings[i].get_ids().len()));
        for batch in order.chunks(BATCH_SIZE) {
            let ids: Vec<&[u32]> = batch.iter().map(|&i| encodings[i].get_ids()).collect();
            let pooled = self.model.mean_pooled(&ids)?;
            for (&i, mut v) in batch.iter().zip(pooled) {
                normalize(&mut v);
                vectors[present[i].0] = Some(v);
            }
        }
        Ok(TextEmbeddings { vectors, truncated })
    }
}

/// Whether a text counts as a missing field.
fn is_missing(text: &str) -> bool {
    text.trim().is_empty()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        context: path.display().to_string(),
        source,
    })
}

/// sentence-transformers' `max_seq_length` (256 for MiniLM) when the folder has
/// `sentence_bert_config.json`, else the model's position limit; never more than the latter.
fn max_tokens(folder: &Path, config: &Config) -> Result<usize> {
    #[derive(serde::Deserialize)]
    struct SentenceBertConfig {
        max_seq_length: Option<usize>,
    }
    let path = folder.join("sentence_bert_config.json");
    let limit = config.max_position_embeddings;
    if !path.is_file() {
        return Ok(limit);
    }
    let st: SentenceBertConfig = read_json(&path)?;
    Ok(st.max_seq_length.map_or(limit, |m| m.clamp(1, limit)))
}

/// The tower mean-pools; refuse a folder whose `1_Pooling` asks for something else (a CLS- or
/// max-pooled model would load fine and give quietly wrong vectors).
fn check_pooling(folder: &Path) -> Result<()> {
    let path = folder.join("1_Pooling").join("config.json");
    if !path.is_file() {
        return Ok(());
    }
    let pooling: serde_json::Value = read_json(&path)?;
    let flag = |name: &str| pooling.get(name).and_then(|v| v.as_bool()).unwrap_or(false);
    let others = [
        "pooling_mode_cls_token",
        "pooling_mode_max_tokens",
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ];
    if !flag("pooling_mode_mean_tokens") || others.iter().any(|o| flag(o)) {
        return Err(Error::ModelConfig {
            model: folder.display().to_string(),
            reason: format!(
                "{} asks for pooling other than mean pooling",
                path.display()
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tower_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<TextTower>();
    }

    #[test]
    fn missing_texts_are_blank_ones() {
        assert!(is_missing(""));
        assert!(is_missing(" \t\n"));
        assert!(!is_missing(" a "));
    }
}
