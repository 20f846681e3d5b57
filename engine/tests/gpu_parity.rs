//! GPU against CPU on the real towers: the same photos and sentences must give the same
//! features on both devices (max abs diff < 1e-3). Skips, saying why, where there is no GPU or
//! the build has no CUDA support (`--features cuda`), so the default build and CI never need
//! one; `trio bench --device cuda --parity` is the same check from the command line.

use std::path::PathBuf;

use trio_engine::fetch::{Home, LiteVariant};
use trio_engine::towers::image::{ImageTower, ImageTowerConfig};
use trio_engine::towers::text::TextTower;
use trio_engine::{Device, DeviceChoice};

const PHOTOS: [&str; 3] = ["chelsea.png", "coffee.png", "rocket.jpg"];
const SENTENCES: [&str; 3] = [
    "A man is eating food.",
    "red heart",
    "smiling face with open mouth and smiling eyes",
];

fn home() -> Home {
    Home::resolve(std::env::var_os("TRIO_HOME").map(PathBuf::from).as_deref())
        .expect("a TRIO_HOME to read the towers from")
}

#[test]
fn towers_agree_on_gpu_and_cpu() {
    let gpu = match DeviceChoice::Cuda.resolve() {
        Ok(device) => device,
        Err(e) => {
            println!("SKIPPED: no GPU to compare with the CPU ({e})");
            return;
        }
    };
    let home = home();
    let photos: Vec<PathBuf> = PHOTOS.iter().map(|p| home.photos_dir().join(p)).collect();
    let image = |device: &Device| {
        let tower = ImageTower::load(
            &home.image_model_path(LiteVariant::Lite0),
            &ImageTowerConfig::lite0(),
            device,
        )
        .expect("image tower");
        let pre = tower.preprocessor();
        let prepared: Vec<_> = photos
            .iter()
            .map(|p| pre.prepare_path(p).expect("photo"))
            .collect();
        tower.embed(&prepared).expect("embed images")
    };
    let text = |device: &Device| {
        TextTower::load(&home.text_model_dir(), device)
            .expect("text tower")
            .embed(&SENTENCES)
            .expect("embed texts")
    };
    let (image_gpu, image_cpu) = (image(&gpu), image(&Device::Cpu));
    let features = max_abs_diff(&image_gpu.features, &image_cpu.features).expect("shapes");
    let probabilities =
        max_abs_diff(&image_gpu.probabilities, &image_cpu.probabilities).expect("shapes");
    let sentences = max_abs_diff(&text(&gpu), &text(&Device::Cpu)).expect("shapes");
    println!("max abs diff: image features {features:e}, probabilities {probabilities:e}, text {sentences:e}");
    assert!(features < 1e-3, "image features differ by {features}");
    assert!(
        probabilities < 1e-3,
        "probabilities differ by {probabilities}"
    );
    assert!(sentences < 1e-3, "text vectors differ by {sentences}");
}

/// The largest element-wise difference between two lists of equally shaped vectors; `None`
/// when the shapes differ.
fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> Option<f32> {
    if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.len() != y.len()) {
        return None;
    }
    Some(
        a.iter()
            .zip(b)
            .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
            .fold(0.0, f32::max),
    )
}
