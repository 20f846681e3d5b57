//! The text tower against an independent implementation, and its API contract.
//!
//! Needs the real all-MiniLM-L6-v2 folder at `$TRIO_HOME/models/all-MiniLM-L6-v2` (laid out by
//! `trio fetch`); fails, rather than skips, when it is missing.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use candle_core::Device;
use trio_engine::models::minilm::Backend;
use trio_engine::towers::text::TextTower;
use trio_engine::Error;

fn model_dir() -> PathBuf {
    let home = std::env::var_os("TRIO_HOME").unwrap_or_else(|| {
        panic!("TRIO_HOME is not set: run `trio fetch` and point TRIO_HOME at its cache")
    });
    let dir = PathBuf::from(home).join("models").join("all-MiniLM-L6-v2");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(
            dir.join(file).is_file(),
            "{} is missing: run `trio fetch` to get all-MiniLM-L6-v2",
            dir.join(file).display()
        );
    }
    dir
}

/// One tower per backend, shared by the tests (loading costs about a second).
fn tower(backend: Backend) -> &'static TextTower {
    static TOWERS: [OnceLock<TextTower>; 5] = [const { OnceLock::new() }; 5];
    let slot = match backend {
        Backend::Auto => 0,
        Backend::FusedPortable => 1,
        Backend::Candle => 2,
        Backend::FusedBf16 => 3,
        Backend::FusedInt8 => 4,
    };
    TOWERS[slot].get_or_init(|| {
        TextTower::load_with(&model_dir(), &Device::Cpu, backend)
            .unwrap_or_else(|e| panic!("loading the text tower ({backend:?}): {e}"))
    })
}

const BACKENDS: [Backend; 3] = [Backend::Auto, Backend::FusedPortable, Backend::Candle];

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

const LONG_TEXT_WORDS: &str = "the quick brown fox jumps over the lazy dog";

fn long_text() -> String {
    vec![LONG_TEXT_WORDS; 40].join(" ")
}

#[test]
fn text_cosine_matches_published_sentence_transformers_figure() {
    // 0.7553: the similarity sentence-transformers publishes for this pair with
    // all-MiniLM-L6-v2 (its README's example); lab/reference/text_golden.py prints 0.755337.
    for backend in BACKENDS {
        let v = tower(backend)
            .embed(&["A man is eating food.", "A man is eating a piece of bread."])
            .unwrap();
        let cos = cosine(&v[0], &v[1]);
        assert!((cos - 0.7553).abs() < 0.002, "{backend:?}: cosine {cos}");
    }
}

#[test]
fn text_vectors_match_sentence_transformers() {
    // First 8 dimensions of the normalised embeddings from sentence-transformers 6.2.0
    // (torch 2.15.0, transformers 5.24.0), produced by
    //   HF_HUB_OFFLINE=1 python lab/reference/text_golden.py $TRIO_HOME/models/all-MiniLM-L6-v2
    // The last text has 362 tokens, so it also checks truncation at 256.
    let golden: [(&str, [f32; 8]); 4] = [
        (
            "A man is eating food.",
            [
                0.033242, 0.004406, -0.006277, 0.048379, -0.138702, -0.033617, 0.101128, -0.054385,
            ],
        ),
        (
            "A man is eating a piece of bread.",
            [
                0.052518, 0.055241, -0.011188, -0.005745, -0.127208, -0.022252, 0.076879, 0.013185,
            ],
        ),
        (
            "The new movie is awesome.",
            [
                -0.086759, -0.074150, 0.005044, -0.038289, -0.013525, -0.038828, -0.023071,
                -0.014082,
            ],
        ),
        (
            "",
            [
                0.052869, -0.037107, 0.071428, 0.004931, -0.060187, -0.016994, -0.018774, -0.074810,
            ],
        ),
    ];
    let long = long_text();
    let texts: Vec<Option<&str>> = golden
        .iter()
        .map(|(t, _)| Some(if t.is_empty() { long.as_str() } else { *t }))
        .collect();
    for backend in BACKENDS {
        let report = tower(backend).embed_with_report(&texts).unwrap();
        assert_eq!(
            report.truncated,
            vec![3],
            "{backend:?}: only the long text is truncated"
        );
        for ((text, want), got) in golden.iter().zip(&report.vectors) {
            let got = got.as_ref().expect("every golden text is present");
            assert_eq!(got.len(), 384);
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-4, "{backend:?} {text:?}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn text_missing_fields_give_none_never_an_embedding_of_nothing() {
    let tower = tower(Backend::Auto);
    let v = tower
        .embed_fields(&[
            Some("red shoes"),
            None,
            Some(""),
            Some(" \t\n"),
            Some("blue hat"),
        ])
        .unwrap();
    let shape: Vec<bool> = v.iter().map(Option::is_some).collect();
    assert_eq!(shape, vec![true, false, false, false, true]);
    assert!(tower
        .embed_fields(&[None, Some("  ")])
        .unwrap()
        .iter()
        .all(Option::is_none));
    assert!(tower.embed_fields(&[]).unwrap().is_empty());

    match tower.embed(&["red shoes", "   "]) {
        Err(Error::EmptyText { index }) => assert_eq!(index, 1),
        other => panic!("expected EmptyText, got {other:?}"),
    }
}

#[test]
fn text_batches_keep_order_and_do_not_change_vectors() {
    // More texts than one internal batch, of many lengths, so sorting, chunking and padding
    // all happen; each must come back where it went in, as if embedded alone.
    let texts: Vec<String> = (0..150)
        .map(|i| {
            let words = "wooden chair with a woven seat and oak legs for the dining room";
            let n = 1 + (i * 7) % 13;
            format!(
                "item {i}: {}",
                words.split(' ').take(n).collect::<Vec<_>>().join(" ")
            )
        })
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for backend in [Backend::Auto, Backend::Candle] {
        let tower = tower(backend);
        let batch = tower.embed(&refs).unwrap();
        assert_eq!(batch.len(), texts.len());
        for i in [0, 1, 5, 77, 149] {
            let alone = tower.embed(&[refs[i]]).unwrap();
            let diff = alone[0]
                .iter()
                .zip(&batch[i])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff < 2e-5,
                "{backend:?}: text {i} differs by {diff} in a batch"
            );
        }
        for v in &batch {
            let norm = cosine(v, v).sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        }
    }
}

#[test]
fn text_tower_reports_its_shape_and_truncation() {
    let tower = tower(Backend::Auto);
    assert_eq!(tower.dim(), 384);
    // sentence_bert_config.json's max_seq_length, not tokenizer.json's 128.
    assert_eq!(tower.max_tokens(), 256);
    let long = long_text();
    let report = tower
        .embed_with_report(&[
            Some(long.as_str()),
            Some("short"),
            None,
            Some(long.as_str()),
        ])
        .unwrap();
    assert_eq!(report.truncated, vec![0, 3]);
    // A text cut at 256 tokens embeds like its first 254 word pieces plus the special tokens:
    // the 40 copies of 9 words are cut after 28 full copies and 2 words.
    let cut = format!("{} the quick", vec![LONG_TEXT_WORDS; 28].join(" "));
    let cut_vec = tower.embed(&[cut.as_str()]).unwrap();
    let same = cosine(&cut_vec[0], report.vectors[0].as_ref().unwrap());
    assert!(same > 0.99999, "cosine with the hand-cut text: {same}");
}

#[test]
fn text_tower_is_shared_across_threads() {
    let tower = Arc::new(
        TextTower::load(&model_dir(), &Device::Cpu).unwrap_or_else(|e| panic!("loading: {e}")),
    );
    let want = tower.embed(&["a lamp", "a desk with two drawers"]).unwrap();
    let handles: Vec<_> = (0..3)
        .map(|_| {
            let tower = Arc::clone(&tower);
            std::thread::spawn(move || tower.embed(&["a lamp", "a desk with two drawers"]).unwrap())
        })
        .collect();
    for h in handles {
        let got = h.join().unwrap();
        for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((g - w).abs() < 1e-6);
        }
    }
}

#[test]
fn text_tower_names_a_missing_model_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        model_dir().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let err = TextTower::load(dir.path(), &Device::Cpu)
        .err()
        .expect("no weights, no tower");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
}

/// The bf16 encoder (where the CPU has AVX512_BF16) against the f32 one on the catalogue
/// sentences of the text bench and the golden pairs: every vector within cosine 0.999 (the bar
/// for turning it on by default), and the published pair's similarity within 0.005. On a CPU
/// without the instructions, loading it must fail and say why.
#[test]
fn bf16_encoder_keeps_the_f32_vectors_direction() {
    let texts: Vec<&str> = include_str!("../../benches/text_sentences.txt")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .chain(["A man is eating food.", "A man is eating a piece of bread."])
        .collect();
    let bf16 = match TextTower::load_with(&model_dir(), &Device::Cpu, Backend::FusedBf16) {
        Ok(tower) => tower,
        Err(e) => {
            assert!(
                !std::arch::is_x86_feature_detected!("avx512bf16"),
                "this CPU has AVX512_BF16, yet the bf16 encoder did not load: {e}"
            );
            assert!(e.to_string().contains("AVX512_BF16"), "{e}");
            return;
        }
    };
    let want = tower(Backend::Auto).embed(&texts).unwrap();
    let got = bf16.embed(&texts).unwrap();
    let mut worst = 1f32;
    for (text, (g, w)) in texts.iter().zip(got.iter().zip(&want)) {
        let cos = cosine(g, w);
        worst = worst.min(cos);
        assert!(cos > 0.999, "{text:?}: bf16 cosine {cos} to f32");
    }
    let n = texts.len();
    let pair = cosine(&got[n - 2], &got[n - 1]);
    eprintln!("bf16 vs f32: worst cosine {worst:.5}; published pair {pair:.4}");
    assert!((pair - 0.7553).abs() < 0.005, "bf16 pair cosine {pair}");
}

/// The int8 encoder against the f32 one on catalogue text: the text bench's sentences and the
/// demo catalogue's titles and descriptions (Google's emoji). Every vector within cosine 0.97 of f32's, the mean above 0.99, and the published
/// pair's similarity within 0.02; the figures print with `--nocapture`. The int8 kernel is the
/// one this CPU runs (VNNI or portable: the same integers, `kernels::quantized`'s tests).
#[test]
fn int8_encoder_keeps_the_f32_vectors_direction() {
    let home = PathBuf::from(std::env::var_os("TRIO_HOME").expect("TRIO_HOME"));
    let catalogue = trio_engine::ingest::demo::load(
        &home.join("data").join("emoji"),
        &[trio_engine::ingest::demo::Vendor::Google],
    )
    .unwrap_or_else(|e| panic!("the demo catalogue (run `trio fetch`): {e}"))
    .into_iter()
    .flat_map(|r| [r.title, r.description])
    .flatten()
    .filter(|t| !t.trim().is_empty())
    .collect::<Vec<_>>();
    let texts: Vec<&str> = include_str!("../../benches/text_sentences.txt")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .chain(catalogue.iter().map(String::as_str))
        .chain(["A man is eating food.", "A man is eating a piece of bread."])
        .collect();
    let want = tower(Backend::Auto).embed(&texts).unwrap();
    let got = tower(Backend::FusedInt8).embed(&texts).unwrap();
    let mut worst = 1f32;
    let mut sum = 0f64;
    for (text, (g, w)) in texts.iter().zip(got.iter().zip(&want)) {
        let cos = cosine(g, w);
        worst = worst.min(cos);
        sum += f64::from(cos);
        assert!(cos > 0.97, "{text:?}: int8 cosine {cos} to f32");
    }
    let n = texts.len();
    let mean = sum / n as f64;
    let pair = cosine(&got[n - 2], &got[n - 1]);
    eprintln!("int8 vs f32 on {n} texts: worst cosine {worst:.4}, mean {mean:.4}; pair {pair:.4}");
    assert!(mean > 0.99, "int8 mean cosine {mean}");
    assert!((pair - 0.7553).abs() < 0.02, "int8 pair cosine {pair}");
}
