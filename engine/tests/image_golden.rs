//! The image tower against the real EfficientNet-Lite checkpoints and demo photos.
//!
//! Reference values live in `tests/fixtures/image_golden.json`, written by
//! `lab/reference/image_reference.py`: the `efficientnet_lite_pytorch` package (the PyTorch port the
//! `.pth` files were published with) run on the same checkpoints, with the preprocessing
//! written in PIL. The script's docstring has the command.
//!
//! These tests need `$TRIO_HOME` (default `~/.cache/trio`) laid out by `trio fetch`:
//! `models/efficientnet-lite{0,1,2}/efficientnet-lite{N}.pth` and `data/photos/*`. They fail,
//! naming the missing file, when it is absent.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use trio_engine::models::efficientnet_lite::{Config, CpuIsa, EfficientNetLite};
use trio_engine::towers::image::{top_k, ImageTower, ImageTowerConfig};

fn trio_home() -> PathBuf {
    std::env::var_os("TRIO_HOME")
        .map(PathBuf::from)
        .or_else(|| dirs::home_dir().map(|h| h.join(".cache").join("trio")))
        .expect("set TRIO_HOME: no home directory to find ~/.cache/trio in")
}

fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "missing {}: run `trio fetch` or point TRIO_HOME at a folder that has it",
        path.display()
    );
    path
}

fn weights(variant: &str) -> PathBuf {
    require(
        trio_home()
            .join("models")
            .join(format!("efficientnet-{variant}"))
            .join(format!("efficientnet-{variant}.pth")),
    )
}

fn photo(name: &str) -> PathBuf {
    require(trio_home().join("data").join("photos").join(name))
}

fn golden() -> &'static Value {
    static GOLDEN: OnceLock<Value> = OnceLock::new();
    GOLDEN.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/image_golden.json");
        let text = std::fs::read_to_string(&path).expect("read image_golden.json");
        serde_json::from_str(&text).expect("parse image_golden.json")
    })
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn lite0() -> &'static ImageTower {
    static TOWER: OnceLock<ImageTower> = OnceLock::new();
    TOWER.get_or_init(|| {
        ImageTower::load(&weights("lite0"), &ImageTowerConfig::lite0(), &Device::Cpu)
            .expect("load lite0")
    })
}

/// The synthetic batch of `lab/reference/image_reference.py`:
/// `x[b, c, y, x] = sin(0.05 (y+1) + 0.3 c + b) cos(0.07 x)`, computed in f64 as numpy does.
fn synthetic(size: usize, batch: usize) -> Tensor {
    let mut data = Vec::with_capacity(batch * 3 * size * size);
    for b in 0..batch {
        for c in 0..3 {
            for y in 0..size {
                for x in 0..size {
                    let v = (0.05 * (y as f64 + 1.0) + 0.3 * c as f64 + b as f64).sin()
                        * (0.07 * x as f64).cos();
                    data.push(v as f32);
                }
            }
        }
    }
    Tensor::from_vec(data, (batch, 3, size, size), &Device::Cpu).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (na * nb)
}

fn norm(a: &[f32]) -> f32 {
    a.iter().map(|x| x * x).sum::<f32>().sqrt()
}

/// The network alone, on identical input: features agree with PyTorch to float rounding.
fn check_synthetic(variant: &str, model: &EfficientNetLite) {
    let size = model.config().image_size;
    let (features, logits) = model.forward(&synthetic(size, 2)).unwrap();
    let features = features.to_vec2::<f32>().unwrap();
    let probs = EfficientNetLite::probabilities(&logits)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let expected = golden()[variant]["synthetic"].as_array().unwrap();
    assert_eq!(expected.len(), 2);
    for (i, want) in expected.iter().enumerate() {
        let want_features = floats(&want["features"]);
        assert_eq!(want_features.len(), 1280);
        let max_diff = features[i]
            .iter()
            .zip(&want_features)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            max_diff < 5e-5,
            "{variant} image {i}: features differ from PyTorch by up to {max_diff}"
        );
        let cos = cosine(&features[i], &want_features);
        eprintln!("{variant} synthetic {i}: max |diff| {max_diff:.2e}, cosine {cos:.7}");
        assert!(cos > 0.99999, "{variant} image {i}: cosine {cos}");
        let want_top = want["top5"].as_array().unwrap();
        let got_top = top_k(&probs[i], 5);
        for (rank, w) in want_top.iter().take(2).enumerate() {
            let (class, p) = (
                w[0].as_u64().unwrap() as usize,
                w[1].as_f64().unwrap() as f32,
            );
            assert_eq!(
                got_top[rank].index, class,
                "{variant} image {i} rank {rank}"
            );
            assert!((got_top[rank].probability - p).abs() < 1e-3);
        }
    }
}

#[test]
fn lite0_network_matches_pytorch() {
    check_synthetic("lite0", lite0().model());
}

#[test]
fn lite1_and_lite2_networks_match_pytorch() {
    for (variant, config) in [("lite1", Config::lite1()), ("lite2", Config::lite2())] {
        let vb =
            trio_engine::weights::var_builder(&weights(variant), DType::F32, &Device::Cpu).unwrap();
        let model = EfficientNetLite::load(vb, &config).unwrap();
        check_synthetic(variant, &model);
    }
}

/// Every instruction set this CPU runs the fused network with, against the device-generic
/// tensor operations on the real weights: the synthetic input at batch 1 (each layer split into
/// bands over the threads) and the five photos at batch 5 (one image per thread). Tolerance:
/// 1e-3 absolute on features of norm ~10-20, the f32 rounding of a different summation order.
#[test]
fn every_cpu_path_matches_the_device_generic_ops() {
    let vb =
        trio_engine::weights::var_builder(&weights("lite0"), DType::F32, &Device::Cpu).unwrap();
    let mut model = EfficientNetLite::load(vb, &Config::lite0()).unwrap();
    let pre = lite0().preprocessor();
    let photos: Vec<f32> = [
        "chelsea.png",
        "coffee.png",
        "rocket.jpg",
        "astronaut.png",
        "motorcycle_left.png",
    ]
    .iter()
    .flat_map(|n| pre.prepare_path(&photo(n)).unwrap().pixels().to_vec())
    .collect();
    let photos = Tensor::from_vec(photos, (5, 3, 224, 224), &Device::Cpu).unwrap();
    let inputs = [synthetic(224, 1), photos];
    model.set_cpu_kernels(false);
    let generic: Vec<Tensor> = inputs.iter().map(|x| model.forward(x).unwrap().0).collect();
    model.set_cpu_kernels(true);
    let isas = EfficientNetLite::cpu_isas();
    assert!(isas.contains(&CpuIsa::Portable));
    for isa in isas {
        model.set_cpu_isa(isa).unwrap();
        for (x, want) in inputs.iter().zip(&generic) {
            let (fast, _) = model.forward(x).unwrap();
            if isa == CpuIsa::Avx512Bf16 {
                // bf16 rounding: direction kept to the bar, not every digit.
                let (a, b) = (
                    fast.to_vec2::<f32>().unwrap(),
                    want.to_vec2::<f32>().unwrap(),
                );
                for (i, (a, b)) in a.iter().zip(&b).enumerate() {
                    let cos = cosine(a, b);
                    eprintln!("bf16 image {i} of {}: cosine {cos:.6}", a.len());
                    assert!(cos > 0.999, "bf16, image {i}: cosine {cos} to f32");
                }
                continue;
            }
            let diff = (fast - want)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                diff < 1e-3,
                "{isa:?} kernels and tensor ops differ by {diff} at batch {}",
                x.dim(0).unwrap()
            );
        }
    }
}

#[test]
fn lite0_classifies_the_demo_photos() {
    let tower = lite0();
    let pre = tower.preprocessor();
    let names = [
        "chelsea.png",
        "coffee.png",
        "rocket.jpg",
        "motorcycle_left.png",
        "astronaut.png",
    ];
    let prepared: Vec<_> = names
        .iter()
        .map(|n| pre.prepare_path(&photo(n)).unwrap())
        .collect();
    let out = tower.embed(&prepared).unwrap();
    let top: Vec<_> = out.probabilities.iter().map(|p| top_k(p, 5)).collect();
    let classes = |i: usize| top[i].iter().map(|c| c.index).collect::<Vec<_>>();

    // A cat: tabby (281), tiger cat (282) or Egyptian cat (285).
    assert!(
        [281, 282, 285].contains(&top[0][0].index),
        "chelsea: {:?}",
        top[0]
    );
    // Espresso, confidently.
    assert_eq!(top[1][0].index, 967, "coffee: {:?}", top[1]);
    assert!(top[1][0].probability > 0.8, "coffee: {:?}", top[1]);
    // Missile (657) and moped (665) among the top five.
    assert!(classes(2).contains(&657), "rocket: {:?}", top[2]);
    assert!(classes(3).contains(&665), "motorcycle: {:?}", top[3]);

    // Against the PyTorch pipeline, whose resizing differs in rounding only: same top class,
    // features pointing the same way.
    for (i, name) in names.iter().enumerate() {
        let want = &golden()["lite0"]["photos"][*name];
        let want_top1 = want["top5"][0][0].as_u64().unwrap() as usize;
        assert_eq!(top[i][0].index, want_top1, "{name}: {:?}", top[i]);
        let want_norm = want["norm"].as_f64().unwrap() as f32;
        let got_norm = norm(&out.features[i]);
        assert!(
            (got_norm - want_norm).abs() / want_norm < 0.015,
            "{name}: feature norm {got_norm}, PyTorch {want_norm}"
        );
        let want8 = floats(&want["features"]);
        let cos8 = cosine(&out.features[i][..8], &want8);
        eprintln!(
            "{name}: top {:?}, norm {got_norm:.3} vs {want_norm:.3}, first-8 cosine {cos8:.4}",
            top[i]
                .iter()
                .map(|c| (c.index, c.probability))
                .collect::<Vec<_>>()
        );
        assert!(
            cos8 > 0.99,
            "{name}: first features {:?} vs {want8:?}",
            &out.features[i][..8]
        );
    }
}

#[test]
fn batching_does_not_change_results() {
    let tower = lite0();
    let pre = tower.preprocessor();
    let images: Vec<_> = ["chelsea.png", "coffee.png", "rocket.jpg"]
        .iter()
        .map(|n| pre.prepare_path(&photo(n)).unwrap())
        .collect();
    let together = tower.embed(&images).unwrap();
    for (i, image) in images.iter().enumerate() {
        let alone = tower.embed(std::slice::from_ref(image)).unwrap();
        let diff = alone.features[0]
            .iter()
            .zip(&together.features[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-4, "image {i}: batch of 1 vs 3 differ by {diff}");
    }
}
