//! Duplicate groups: planted copies are recovered, kinds are layered, chains and dense regions
//! do not merge (complete linkage), and 100k items run in seconds.

mod quality_common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trio_engine::quality::duplicates::{
    find_duplicates, DupItem, DuplicateGroup, DuplicateKind, DuplicateOptions, DuplicatePair,
};
use trio_engine::quality::phash::phash;
use trio_engine::quality::thumbnail::{self, Thumbnail};
use trio_engine::NoProgress;
use trio_lab::planted::{pair_precision_recall, plant_copies};

fn random_unit(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    let v: Vec<f32> = (0..dim).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    normalise(v)
}

fn normalise(v: Vec<f32>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / norm).collect()
}

/// `base` moved by noise of relative size `eps` (cosine ≈ 1/√(1+ε²/3) for these draws).
fn jitter(rng: &mut StdRng, base: &[f32], eps: f32) -> Vec<f32> {
    let noise = random_unit(rng, base.len());
    normalise(base.iter().zip(&noise).map(|(b, n)| b + eps * n).collect())
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Exact k nearest neighbours by cosine, the answer a perfect vector index would give.
fn brute_force_knn<'a>(
    keys: &'a [u64],
    vectors: &'a [Vec<f32>],
) -> impl Fn(u64, usize) -> Vec<(u64, f32)> + Sync + 'a {
    let pos: HashMap<u64, usize> = keys.iter().enumerate().map(|(i, &k)| (k, i)).collect();
    move |key, k| {
        let q = &vectors[pos[&key]];
        let mut sims: Vec<(u64, f32)> = keys
            .iter()
            .zip(vectors)
            .map(|(&other, v)| (other, dot(q, v)))
            .collect();
        sims.sort_by(|a, b| b.1.total_cmp(&a.1));
        sims.truncate(k);
        sims
    }
}

fn item(key: u64, content: u8, phash: Option<u64>) -> DupItem {
    DupItem {
        key,
        content_hash: [content; 32],
        phash,
        thumbnail: None,
        texts: Vec::new(),
    }
}

/// A group's pairs as `(a, b, score)`.
fn links(pairs: &[DuplicatePair]) -> Vec<(u64, u64, f32)> {
    pairs.iter().map(|p| (p.a, p.b, p.score)).collect()
}

fn groups_of(groups: &[DuplicateGroup], kind: DuplicateKind) -> Vec<&DuplicateGroup> {
    groups.iter().filter(|g| g.kind == kind).collect()
}

#[test]
fn planted_near_copies_are_recovered() {
    let mut rng = StdRng::seed_from_u64(1);
    let dim = 64;
    let mut vectors: Vec<Vec<f32>> = (0..2000).map(|_| random_unit(&mut rng, dim)).collect();
    let mut planted = Vec::new();
    for i in 0..200 {
        let copy = jitter(&mut rng, &vectors[i * 7].clone(), 0.3);
        planted.push(((i * 7) as u64, vectors.len() as u64));
        vectors.push(copy);
    }
    let keys: Vec<u64> = (0..vectors.len() as u64).collect();
    let items: Vec<DupItem> = keys
        .iter()
        .map(|&k| item(k, (k % 251) as u8 ^ 0x5a, None))
        .collect();
    // Give every item its own content hash.
    let items: Vec<DupItem> = items
        .into_iter()
        .map(|mut it| {
            it.content_hash[..8].copy_from_slice(&it.key.to_le_bytes());
            it
        })
        .collect();
    let knn = brute_force_knn(&keys, &vectors);
    let report = find_duplicates(&items, &knn, &DuplicateOptions::default(), &NoProgress)
        .expect("find duplicates");
    let near = groups_of(&report.groups, DuplicateKind::Near);
    assert_eq!(
        near.len(),
        report.groups.len(),
        "no exact or perceptual groups expected"
    );
    let near: Vec<DuplicateGroup> = near.into_iter().cloned().collect();
    let scores = pair_precision_recall(&near, &planted);
    println!(
        "planted near copies: {scores:?}, refused merges {}",
        report.refused_merges
    );
    assert_eq!(scores.recall, 1.0, "{scores:?}");
    assert_eq!(scores.precision, 1.0, "{scores:?}");
    assert!(near
        .iter()
        .all(|g| g.members.len() == 2 && g.pairs.len() == 1));
}

#[test]
fn kinds_are_layered_without_repeating_links() {
    let mut rng = StdRng::seed_from_u64(2);
    let v = random_unit(&mut rng, 32);
    let near_v = jitter(&mut rng, &v, 0.25);
    let stranger = random_unit(&mut rng, 32);
    let h: u64 = 0xF0F0_1234_ABCD_0F0F;
    let items = vec![
        item(1, 1, Some(h)),
        item(2, 1, Some(h)),         // byte-identical to 1
        item(3, 3, Some(h ^ 0b111)), // 3 bits from 1: a re-encoded copy
        item(4, 4, Some(!h)),        // looks different, but its vector is close to 1–3
        item(5, 5, Some(h ^ 0xFFFF_0000)),
    ];
    let keys = [1, 2, 3, 4, 5];
    let vectors = vec![v.clone(), v.clone(), v.clone(), near_v, stranger];
    let knn = brute_force_knn(&keys, &vectors);
    let report = find_duplicates(&items, &knn, &DuplicateOptions::default(), &NoProgress)
        .expect("find duplicates");
    println!("{report:#?}");

    let exact = groups_of(&report.groups, DuplicateKind::Exact);
    assert_eq!(exact.len(), 1);
    assert_eq!(exact[0].members, vec![1, 2]);
    assert_eq!(links(&exact[0].pairs), vec![(1, 2, 1.0)]);

    let perceptual = groups_of(&report.groups, DuplicateKind::Perceptual);
    assert_eq!(perceptual.len(), 1);
    assert_eq!(perceptual[0].members, vec![1, 2, 3]);
    // Both copies of 1 are 3 bits from 3 (and neighbours in the vector space).
    assert_eq!(
        links(&perceptual[0].pairs),
        vec![(1, 3, 1.0 - 3.0 / 64.0), (2, 3, 1.0 - 3.0 / 64.0)]
    );

    let near = groups_of(&report.groups, DuplicateKind::Near);
    assert_eq!(near.len(), 1);
    assert_eq!(near[0].members, vec![1, 2, 3, 4]);
    // Only links to 4: the links among 1–3 are already explained.
    assert_eq!(near[0].pairs.len(), 3);
    assert!(near[0]
        .pairs
        .iter()
        .all(|p| p.b == 4 && p.a < 4 && p.score >= 0.95));
    assert_eq!(report.refused_merges, 0);
}

#[test]
fn chains_and_dense_regions_do_not_merge() {
    let mut rng = StdRng::seed_from_u64(3);
    let dim = 64;
    // A random walk where each step keeps cosine ≈ 1/√(1 + 0.3²) ≈ 0.958 (unit noise): steps
    // link, two steps apart (≈ 0.92) do not, so single linkage would chain all 120 items.
    let mut vectors = vec![random_unit(&mut rng, dim)];
    for _ in 1..120 {
        let next = jitter(&mut rng, &vectors[vectors.len() - 1], 0.3);
        vectors.push(next);
    }
    // A dense blob of 150 near-identical items (cosine ≈ 0.98 between all of them).
    let centre = random_unit(&mut rng, dim);
    for _ in 0..150 {
        vectors.push(jitter(&mut rng, &centre, 0.15));
    }
    let keys: Vec<u64> = (0..vectors.len() as u64).collect();
    let items: Vec<DupItem> = keys
        .iter()
        .map(|&k| {
            let mut it = item(k, 0, None);
            it.content_hash[..8].copy_from_slice(&k.to_le_bytes());
            it
        })
        .collect();
    let knn = brute_force_knn(&keys, &vectors);
    let steps_linked = (1..120)
        .filter(|&i| dot(&vectors[i - 1], &vectors[i]) >= 0.95)
        .count();
    assert!(
        steps_linked > 60,
        "the walk must offer a chain ({steps_linked} steps link)"
    );
    let opts = DuplicateOptions::default();
    let report = find_duplicates(&items, &knn, &opts, &NoProgress).expect("find duplicates");
    let sizes: Vec<usize> = report.groups.iter().map(|g| g.members.len()).collect();
    println!("sizes {sizes:?}, refused merges {}", report.refused_merges);
    // Complete linkage: every pair inside a group is a link (mutual neighbours at or above
    // the threshold), so no group reaches along the walk and none can outgrow k + 1.
    for g in &report.groups {
        for (i, &a) in g.members.iter().enumerate() {
            for &b in &g.members[i + 1..] {
                let sim = dot(&vectors[a as usize], &vectors[b as usize]);
                assert!(sim >= opts.threshold, "{a} and {b} grouped at {sim}");
            }
        }
    }
    assert!(sizes.iter().all(|&s| s <= opts.k + 1), "{sizes:?}");
    assert!(
        report.refused_merges > 0,
        "the walk and the blob offer merges to refuse"
    );
    let walk_grouped = report
        .groups
        .iter()
        .flat_map(|g| g.members.iter())
        .filter(|&&k| k < 120)
        .count();
    let blob_grouped = report.groups.iter().flat_map(|g| g.members.iter()).count() - walk_grouped;
    println!("grouped: {walk_grouped} of the walk, {blob_grouped} of the blob");
    assert!(
        walk_grouped > 0,
        "steps of the walk are still found, in pairs"
    );
    assert!(
        blob_grouped >= 75,
        "most of the blob is still grouped, in pieces"
    );

    let capped = DuplicateOptions {
        max_group_size: 2,
        ..DuplicateOptions::default()
    };
    let report = find_duplicates(&items, &knn, &capped, &NoProgress).expect("capped");
    assert!(report.groups.iter().all(|g| g.members.len() <= 2));
}

/// A ≈ B and B ≈ C with A ≉ C: single linkage would group all three.
#[test]
fn a_chain_of_two_links_is_not_one_group() {
    // Angles 0°, 14°, 28° in a plane: cos 14° ≈ 0.970, cos 28° ≈ 0.883.
    let at = |deg: f32| vec![deg.to_radians().cos(), deg.to_radians().sin(), 0.0];
    let vectors = vec![at(0.0), at(14.0), at(28.0), vec![0.0, 0.0, 1.0]];
    let keys = [10, 11, 12, 13];
    let items: Vec<DupItem> = keys.iter().map(|&k| item(k, k as u8, None)).collect();
    let knn = brute_force_knn(&keys, &vectors);
    let strict = DuplicateOptions {
        threshold: 0.95,
        ..DuplicateOptions::default()
    };
    let report = find_duplicates(&items, &knn, &strict, &NoProgress).expect("find duplicates");
    println!("{report:#?}");
    assert_eq!(report.groups.len(), 1);
    assert_eq!(report.groups[0].members.len(), 2);
    assert!(report.groups[0].members.contains(&11));
    assert_eq!(report.refused_merges, 1);
}

#[test]
fn bad_options_and_keys_are_refused() {
    let items = vec![item(1, 1, None), item(1, 2, None)];
    let knn = |_: u64, _: usize| Vec::new();
    assert!(find_duplicates(&items, &knn, &DuplicateOptions::default(), &NoProgress).is_err());
    let nan = DuplicateOptions {
        threshold: f32::NAN,
        ..DuplicateOptions::default()
    };
    assert!(find_duplicates(&items[..1], &knn, &nan, &NoProgress).is_err());
}

/// Resized, re-encoded and brightened copies must all be found by their hashes alone, and
/// nothing unrelated grouped with them. Crops and mirror images may or may not be (they
/// are the image vectors' job) but must not pull in other photos.
#[test]
fn planted_photo_copies_are_found_by_their_hashes() {
    let photos = quality_common::photos();
    let mut items = Vec::new();
    let mut faithful = Vec::new();
    let mut all_planted = Vec::new();
    for (p, (_, img)) in photos.iter().enumerate() {
        let original = (p * 10) as u64;
        items.push(item(original, p as u8 * 10, Some(phash(img))));
        for (c, (transform, copy)) in plant_copies(img).expect("copies").into_iter().enumerate() {
            let key = original + 1 + c as u64;
            items.push(item(key, key as u8, Some(phash(&copy))));
            all_planted.push((original, key));
            if !matches!(transform, "crop_90" | "flip_h") {
                faithful.push((original, key));
            }
        }
    }
    let knn = |_: u64, _: usize| Vec::new();
    let report = find_duplicates(&items, &knn, &DuplicateOptions::default(), &NoProgress)
        .expect("find duplicates");
    let recall = pair_precision_recall(&report.groups, &faithful).recall;
    let precision = pair_precision_recall(&report.groups, &all_planted).precision;
    println!("photos, perceptual only: recall of faithful copies {recall}, precision {precision}");
    assert_eq!(recall, 1.0);
    assert_eq!(precision, 1.0);
}

/// 100k items, 10% planted perceptual copies and 10% planted near copies, neighbours from
/// a precomputed table (the vector index's cost is the index's, measured with the index).
#[test]
fn hundred_thousand_items_run_in_seconds() {
    let n_blocks = 1000;
    let block = 100;
    let dim = 32;
    let mut rng = StdRng::seed_from_u64(4);
    let mut vectors: Vec<Vec<f32>> = Vec::with_capacity(n_blocks * block);
    let mut hashes: Vec<u64> = Vec::with_capacity(n_blocks * block);
    let mut planted = Vec::new();
    for b in 0..n_blocks {
        for i in 0..block {
            let key = (b * block + i) as u64;
            if i % 10 == 9 {
                // A near copy of the previous item (its picture differs).
                let prev = vectors[vectors.len() - 1].clone();
                vectors.push(jitter(&mut rng, &prev, 0.2));
                hashes.push(rng.gen());
                planted.push((key - 1, key));
            } else if i % 10 == 8 {
                // A re-encoded copy of the previous item: 0–6 bits of its hash flipped.
                let prev = vectors[vectors.len() - 1].clone();
                let mut h = hashes[hashes.len() - 1];
                for _ in 0..rng.gen_range(0..=6) {
                    h ^= 1 << rng.gen_range(0..64);
                }
                vectors.push(jitter(&mut rng, &prev, 0.9));
                hashes.push(h);
                planted.push((key - 1, key));
            } else {
                vectors.push(random_unit(&mut rng, dim));
                hashes.push(rng.gen());
            }
        }
    }
    // Neighbours: exact within each block of 100 (items of different blocks are unrelated).
    let table: Vec<Vec<(u64, f32)>> = (0..vectors.len())
        .map(|i| {
            let start = i / block * block;
            let mut sims: Vec<(u64, f32)> = (start..start + block)
                .map(|j| (j as u64, dot(&vectors[i], &vectors[j])))
                .collect();
            sims.sort_by(|a, b| b.1.total_cmp(&a.1));
            sims.truncate(11);
            sims
        })
        .collect();
    let knn = |key: u64, k: usize| table[key as usize].iter().take(k).copied().collect();
    // Thumbnails: random pictures, a planted copy sharing its original's (so every candidate
    // pair goes through the pixel check, and copies pass it).
    let mut thumbnails: Vec<Thumbnail> = Vec::with_capacity(hashes.len());
    for i in 0..hashes.len() {
        let t = if matches!(i % 10, 8 | 9) {
            thumbnails[i - 1].clone()
        } else {
            let bytes: Vec<u8> = (0..thumbnail::BYTES).map(|_| rng.gen()).collect();
            Thumbnail::from_bytes(bytes).expect("thumbnail size")
        };
        thumbnails.push(t);
    }
    let items: Vec<DupItem> = hashes
        .iter()
        .zip(thumbnails)
        .enumerate()
        .map(|(i, (&h, t))| {
            let mut it = item(i as u64, 0, Some(h));
            it.content_hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
            it.thumbnail = Some(t);
            it
        })
        .collect();

    let start = Instant::now();
    let report = find_duplicates(&items, &knn, &DuplicateOptions::default(), &NoProgress)
        .expect("find duplicates");
    let elapsed = start.elapsed();
    let scores = pair_precision_recall(&report.groups, &planted);
    println!(
        "100k items: {:.2} s, {} groups, {scores:?}",
        elapsed.as_secs_f64(),
        report.groups.len()
    );
    assert_eq!(scores.recall, 1.0, "{scores:?}");
    assert!(scores.precision >= 0.99, "{scores:?}");
}

/// Measurement, not a check: plants copies of the demo photos and of 100 emoji among 900
/// other emoji, writes them to `$TRIO_DUP_MEASURE_DIR/images` with `planted.tsv` (the input
/// of lab/reference/dup_reference.py), and prints pHash/dHash precision and recall overall and per
/// transform. Run with
/// `TRIO_DUP_MEASURE_DIR=/tmp/dup-measure cargo test --test quality_duplicates -- --ignored --nocapture`.
#[test]
#[ignore = "measurement; needs TRIO_HOME data and TRIO_DUP_MEASURE_DIR"]
fn measure_planted_copies() {
    use trio_engine::quality::phash::dhash;

    let out = PathBuf::from(
        std::env::var_os("TRIO_DUP_MEASURE_DIR")
            .expect("set TRIO_DUP_MEASURE_DIR to an output folder"),
    );
    let images_dir = out.join("images");
    std::fs::create_dir_all(&images_dir).expect("create output folder");
    let emoji_dir = quality_common::trio_home().join("data/emoji/img/google/64");
    let mut emoji: Vec<PathBuf> = std::fs::read_dir(&emoji_dir)
        .unwrap_or_else(|e| panic!("needs the emoji images in {}: {e}", emoji_dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    emoji.sort();
    let originals: Vec<(String, image::DynamicImage)> = quality_common::photos()
        .into_iter()
        .chain(emoji.iter().step_by(3).take(1000).map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, image::open(p).expect("decode emoji"))
        }))
        .collect();

    // name → (phash, dhash); planted: (original, copy, transform)
    let mut files: Vec<(String, u64, u64)> = Vec::new();
    let mut planted: Vec<(String, String, &'static str)> = Vec::new();
    for (i, (name, img)) in originals.iter().enumerate() {
        let stem = name
            .rsplit_once('.')
            .map_or(name.as_str(), |(s, _)| s)
            .to_string();
        let file = format!("{stem}.png");
        img.save(images_dir.join(&file)).expect("write original");
        files.push((file.clone(), phash(img), dhash(img)));
        // Copies of the five photos and of every tenth emoji.
        if i < 5 || i % 10 == 0 {
            for (transform, copy) in plant_copies(img).expect("plant copies") {
                let copy_file = format!("{stem}__{transform}.png");
                copy.save(images_dir.join(&copy_file)).expect("write copy");
                files.push((copy_file.clone(), phash(&copy), dhash(&copy)));
                planted.push((file.clone(), copy_file, transform));
            }
        }
    }
    let mut tsv = String::from("# original\tcopy\ttransform\n");
    for (a, b, t) in &planted {
        tsv.push_str(&format!("{a}\t{b}\t{t}\n"));
    }
    std::fs::write(out.join("planted.tsv"), tsv).expect("write planted.tsv");

    let key_of: HashMap<&str, u64> = files
        .iter()
        .enumerate()
        .map(|(i, f)| (f.0.as_str(), i as u64))
        .collect();
    let planted_keys: Vec<(u64, u64)> = planted
        .iter()
        .map(|(a, b, _)| (key_of[a.as_str()], key_of[b.as_str()]))
        .collect();
    let knn = |_: u64, _: usize| Vec::new();
    println!("{} images, {} planted pairs", files.len(), planted.len());
    for (hash_name, pick) in [("phash", 0usize), ("dhash", 1)] {
        for max_distance in [6, 10, 14] {
            let items: Vec<DupItem> = files
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    let mut it = item(i as u64, 0, Some(if pick == 0 { f.1 } else { f.2 }));
                    it.content_hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
                    it
                })
                .collect();
            let opts = DuplicateOptions {
                phash_max_distance: max_distance,
                k: 0,
                ..DuplicateOptions::default()
            };
            let start = Instant::now();
            let report = find_duplicates(&items, &knn, &opts, &NoProgress).expect("find");
            let s = pair_precision_recall(&report.groups, &planted_keys);
            println!(
                "trio {hash_name} max_distance={max_distance}: precision {:.4}  recall {:.4}  (found {} pairs, {} correct, {} true; {:.3} s)",
                s.precision, s.recall, s.found_pairs, s.correct_pairs, s.true_pairs, start.elapsed().as_secs_f64()
            );
            let found: std::collections::HashSet<(u64, u64)> = report
                .groups
                .iter()
                .flat_map(|g| {
                    let m = g.members.clone();
                    (0..m.len()).flat_map(move |i| {
                        let m = m.clone();
                        (i + 1..m.len()).map(move |j| (m[i].min(m[j]), m[i].max(m[j])))
                    })
                })
                .collect();
            for t in ["resize_50", "crop_90", "jpeg_q40", "brighten_20", "flip_h"] {
                let of_t: Vec<(u64, u64)> = planted
                    .iter()
                    .filter(|p| p.2 == t)
                    .map(|(a, b, _)| {
                        let (ka, kb) = (key_of[a.as_str()], key_of[b.as_str()]);
                        (ka.min(kb), ka.max(kb))
                    })
                    .collect();
                let hit = of_t.iter().filter(|p| found.contains(p)).count();
                println!(
                    "    recall of {t:>12}: {:.3} ({hit}/{})",
                    hit as f64 / of_t.len() as f64,
                    of_t.len()
                );
            }
        }
    }
}

/// Planted copies on REAL image-tower vectors: 20 emoji (every 150th google render) and the
/// five demo photos, each with its five planted copies, through EfficientNet-Lite0, grouped
/// with the CLI's defaults (pHash ≤ 10 bits or one of the 10 nearest neighbours at cosine ≥
/// 0.7 nominates, the colour thumbnails verify, complete linkage) and exact neighbours (what
/// the index approximates). Precision counts every reported pair. Needs the image tower and the demo data in
/// `TRIO_HOME`. The floors sit under the figures this test prints (measured: see the comment
/// at the assertions).
#[test]
fn planted_copies_are_found_in_real_image_vectors() {
    use trio_engine::fetch::{Home, LiteVariant};
    use trio_engine::towers::image::ImageTower;
    use trio_engine::towers::service::TowerSettings;

    let home = Home::new(quality_common::trio_home());
    let settings = TowerSettings::from_home(&home, LiteVariant::Lite0);
    let tower = ImageTower::load(
        &settings.image_weights,
        &settings.image_config(),
        &trio_engine::Device::Cpu,
    )
    .unwrap_or_else(|e| {
        panic!("this test needs the image tower in TRIO_HOME ({e}); run `trio fetch`")
    });
    let emoji_dir = home.emoji_dir().join("img/google/64");
    let mut emoji: Vec<PathBuf> = std::fs::read_dir(&emoji_dir)
        .unwrap_or_else(|e| panic!("needs the emoji images in {}: {e}", emoji_dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "png"))
        .collect();
    emoji.sort();
    let originals: Vec<image::DynamicImage> = emoji
        .iter()
        .step_by(150)
        .take(20)
        .map(|p| image::open(p).expect("decode emoji"))
        .chain(quality_common::photos().into_iter().map(|(_, img)| img))
        .collect();
    let mut images = Vec::new();
    let mut planted = Vec::new();
    for img in &originals {
        let original = images.len() as u64;
        images.push(img.clone());
        for (_, copy) in plant_copies(img).expect("plant copies") {
            planted.push((original, images.len() as u64));
            images.push(copy);
        }
    }
    let pre = tower.preprocessor();
    let mut vectors = Vec::with_capacity(images.len());
    for chunk in images.chunks(16) {
        let prepared: Vec<_> = chunk.iter().map(|i| pre.prepare_image(i)).collect();
        let out = tower.embed(&prepared).expect("image tower");
        vectors.extend(out.features.into_iter().map(normalise));
    }
    let keys: Vec<u64> = (0..images.len() as u64).collect();
    let items: Vec<DupItem> = images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let mut it = item(i as u64, 0, Some(phash(img)));
            it.content_hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
            it.thumbnail = Some(Thumbnail::of(img));
            it
        })
        .collect();
    let knn = brute_force_knn(&keys, &vectors);
    let report = find_duplicates(&items, &knn, &DuplicateOptions::default(), &NoProgress)
        .expect("find duplicates");
    let scores = pair_precision_recall(&report.groups, &planted);
    println!(
        "{} images ({} originals): {scores:?}",
        images.len(),
        originals.len()
    );
    assert!(scores.recall >= RECALL_FLOOR, "{scores:?}");
    assert!(scores.precision >= PRECISION_FLOOR, "{scores:?}");
}

/// Measured 0.987 (370 of 375 family pairs) on this fixed set; without the pixel check the
/// same nominations gave 0.987 at precision 0.774.
const RECALL_FLOOR: f64 = 0.95;
/// Measured 1.0 (370 of 370 reported pairs).
const PRECISION_FLOOR: f64 = 0.97;
