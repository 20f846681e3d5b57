//! Perceptual hashes: copies stay close, unrelated pictures stay far apart.

mod quality_common;

use quality_common::{photos, synthetic_picture};
use trio_engine::quality::phash::{dhash, hamming, phash};
use trio_lab::planted::plant_copies;

/// Copies that keep the picture's layout (everything but the crop and the mirror image).
const FAITHFUL_COPIES: [&str; 3] = ["resize_50", "jpeg_q40", "brighten_20"];
/// Largest distance accepted between a picture and a faithful copy. Measured on the five
/// demo photos and twelve synthetic pictures (printed by these tests): at most 2 bits for
/// either hash.
const COPY_MAX: u32 = 6;
/// A 90% centre crop shifts and rescales the content. Measured: pHash 4–18 bits (18 for
/// coffee.png), dHash 5–14. That overlaps what unrelated pictures can reach, so crops are
/// left to image vectors; the bound only guards against a regression.
const CROP_MAX: u32 = 20;
/// Smallest distance accepted between unrelated pictures (random hashes average 32).
/// Measured: closest pair 26 bits (photos), 22 (synthetic) for pHash.
const UNRELATED_MIN: u32 = 20;

fn check_copies(name: &str, img: &image::DynamicImage, report: &mut Vec<String>) {
    let (p0, d0) = (phash(img), dhash(img));
    for (transform, copy) in plant_copies(img).expect("plant copies") {
        let (dp, dd) = (hamming(p0, phash(&copy)), hamming(d0, dhash(&copy)));
        report.push(format!(
            "{name:>20} {transform:>12}: phash {dp:>2}  dhash {dd:>2}"
        ));
        if FAITHFUL_COPIES.contains(&transform) {
            assert!(dp <= COPY_MAX, "{name} {transform}: pHash distance {dp}");
            assert!(dd <= COPY_MAX, "{name} {transform}: dHash distance {dd}");
        } else if transform == "crop_90" {
            assert!(dp <= CROP_MAX, "{name} {transform}: pHash distance {dp}");
        }
    }
}

fn check_unrelated(images: &[(String, image::DynamicImage)], report: &mut Vec<String>) {
    let hashes: Vec<(u64, u64)> = images
        .iter()
        .map(|(_, img)| (phash(img), dhash(img)))
        .collect();
    let mut closest = (64, 64);
    for i in 0..images.len() {
        for j in i + 1..images.len() {
            let dp = hamming(hashes[i].0, hashes[j].0);
            let dd = hamming(hashes[i].1, hashes[j].1);
            closest = (closest.0.min(dp), closest.1.min(dd));
            assert!(
                dp >= UNRELATED_MIN,
                "{} vs {}: pHash distance only {dp}",
                images[i].0,
                images[j].0
            );
        }
    }
    report.push(format!(
        "closest unrelated pair: phash {}  dhash {}",
        closest.0, closest.1
    ));
}

#[test]
fn synthetic_copies_are_close_and_strangers_far() {
    let images: Vec<(String, image::DynamicImage)> = (0..12)
        .map(|seed| (format!("synthetic-{seed}"), synthetic_picture(seed)))
        .collect();
    let mut report = Vec::new();
    for (name, img) in &images {
        check_copies(name, img, &mut report);
    }
    check_unrelated(&images, &mut report);
    println!("{}", report.join("\n"));
}

#[test]
fn photo_copies_are_close_and_strangers_far() {
    let images = photos();
    let mut report = Vec::new();
    for (name, img) in &images {
        check_copies(name, img, &mut report);
    }
    check_unrelated(&images, &mut report);
    println!("{}", report.join("\n"));
}

#[test]
fn hashes_are_deterministic_and_size_independent() {
    let img = synthetic_picture(99);
    assert_eq!(phash(&img), phash(&img.clone()));
    let big = img.resize_exact(1024, 1024, image::imageops::FilterType::Lanczos3);
    assert!(hamming(phash(&img), phash(&big)) <= 2);
}
