//! Helpers shared by the query tests: test images and the real photos under `TRIO_HOME`.

#![allow(dead_code)]

use std::path::PathBuf;

use image::{DynamicImage, Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Where `trio fetch` puts its files: `$TRIO_HOME`, else `~/.cache/trio`.
pub fn trio_home() -> PathBuf {
    std::env::var_os("TRIO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/trio")))
        .unwrap_or_else(|| PathBuf::from(".cache/trio"))
}

pub const PHOTOS: [&str; 5] = [
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "astronaut.png",
    "motorcycle_left.png",
];

/// The demo photos, decoded; panics with instructions when they are missing.
pub fn photos() -> Vec<(String, DynamicImage)> {
    let dir = trio_home().join("data/photos");
    PHOTOS
        .iter()
        .map(|name| {
            let path = dir.join(name);
            let img = image::open(&path).unwrap_or_else(|e| {
                panic!(
                    "this test needs the demo photos: cannot read {} ({e}). Run `trio fetch` \
                     or point TRIO_HOME at a folder holding data/photos/",
                    path.display()
                )
            });
            (name.to_string(), img)
        })
        .collect()
}

/// A 256 × 256 picture of a few random soft shapes on a gradient: structure at several
/// scales, like a photo, and different for every seed.
pub fn synthetic_picture(seed: u64) -> DynamicImage {
    let mut rng = StdRng::seed_from_u64(seed);
    let (w, h) = (256u32, 256u32);
    let base: [f32; 3] = [rng.gen(), rng.gen(), rng.gen()];
    let tilt: [f32; 3] = [
        rng.gen_range(-1.0..1.0),
        rng.gen(),
        rng.gen_range(-1.0..1.0),
    ];
    let shapes: Vec<([f32; 2], f32, [f32; 3])> = (0..6)
        .map(|_| {
            (
                [rng.gen_range(0.0..w as f32), rng.gen_range(0.0..h as f32)],
                rng.gen_range(15.0..70.0),
                [rng.gen(), rng.gen(), rng.gen()],
            )
        })
        .collect();
    let img = RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let mut c: [f32; 3] =
            std::array::from_fn(|i| base[i] * 0.6 + 0.4 * (fx * tilt[i] + fy * (1.0 - tilt[i])));
        for (centre, radius, colour) in &shapes {
            let d = ((x as f32 - centre[0]).powi(2) + (y as f32 - centre[1]).powi(2)).sqrt();
            let inside = (1.0 - (d - radius).max(0.0) / 6.0).clamp(0.0, 1.0);
            for i in 0..3 {
                c[i] = c[i] * (1.0 - inside) + colour[i] * inside;
            }
        }
        Rgb(c.map(|v| (v.clamp(0.0, 1.0) * 255.0).round() as u8))
    });
    DynamicImage::ImageRgb8(img)
}
