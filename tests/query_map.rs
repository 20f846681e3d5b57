//! The 2-D map: separated clusters stay separated; the PNG and HTML are written and hold
//! what they should.
//!
//! Set `TRIO_TEST_OUTPUT_DIR` to keep the drawn files for a look.

use std::path::PathBuf;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use trio_engine::query::map::{layout, render_html, render_png};

fn output_dir() -> (PathBuf, Option<tempfile::TempDir>) {
    match std::env::var_os("TRIO_TEST_OUTPUT_DIR") {
        Some(dir) => {
            std::fs::create_dir_all(&dir).expect("create output dir");
            (PathBuf::from(dir), None)
        }
        None => {
            let tmp = tempfile::tempdir().expect("tempdir");
            (tmp.path().to_path_buf(), Some(tmp))
        }
    }
}

/// `per_cluster` points around each of `clusters` random centres in `dim` dimensions.
fn clustered(
    seed: u64,
    clusters: usize,
    per_cluster: usize,
    dim: usize,
    spread: f32,
) -> (Vec<Vec<f32>>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..dim).map(|_| rng.gen_range(-1.0..1.0)).collect())
        .collect();
    let mut vectors = Vec::new();
    let mut labels = Vec::new();
    for i in 0..clusters * per_cluster {
        let c = i % clusters;
        vectors.push(
            centres[c]
                .iter()
                .map(|&m| m + spread * rng.gen_range(-1.0..1.0))
                .collect(),
        );
        labels.push(c);
    }
    (vectors, labels)
}

fn distance(a: [f32; 2], b: [f32; 2]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt()
}

#[test]
fn separated_clusters_stay_separated() {
    let (vectors, labels) = clustered(7, 2, 100, 32, 0.15);
    let points = layout(&vectors, 7).expect("layout");
    assert_eq!(points.len(), 200);
    assert!(points.iter().all(|p| p[0].is_finite() && p[1].is_finite()));

    // Every point's nearest neighbour on the map is from its own cluster.
    for i in 0..points.len() {
        let nearest = (0..points.len())
            .filter(|&j| j != i)
            .min_by(|&a, &b| {
                distance(points[i], points[a]).total_cmp(&distance(points[i], points[b]))
            })
            .expect("other points");
        assert_eq!(labels[i], labels[nearest], "point {i}");
    }
    // And the clusters are far apart compared with their size.
    let centroid = |c: usize| {
        let members: Vec<[f32; 2]> = (0..points.len())
            .filter(|&i| labels[i] == c)
            .map(|i| points[i])
            .collect();
        let n = members.len() as f32;
        let sum = members
            .iter()
            .fold([0.0, 0.0], |s, p| [s[0] + p[0], s[1] + p[1]]);
        ([sum[0] / n, sum[1] / n], members)
    };
    let (c0, m0) = centroid(0);
    let (c1, m1) = centroid(1);
    let radius = m0
        .iter()
        .chain(&m1)
        .map(|&p| distance(p, if m0.contains(&p) { c0 } else { c1 }))
        .fold(0.0, f32::max);
    let gap = distance(c0, c1);
    println!("centroid distance {gap:.2}, largest cluster radius {radius:.2}");
    assert!(gap > 2.0 * radius, "gap {gap} vs radius {radius}");
}

/// On one thread the seed fixes the map bit for bit. (With several threads, bhtsne's
/// parallel force sums may round differently from run to run; see `layout_with`.)
#[test]
fn the_same_seed_gives_the_same_map_on_one_thread() {
    let (vectors, _) = clustered(8, 3, 30, 16, 0.3);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("thread pool");
    let a = pool.install(|| layout(&vectors, 42)).expect("layout a");
    let b = pool.install(|| layout(&vectors, 42)).expect("layout b");
    assert_eq!(a, b);
    let c = pool.install(|| layout(&vectors, 43)).expect("layout c");
    assert_ne!(a, c);
}

#[test]
fn png_map_is_drawn_with_colours_and_legend() {
    let (vectors, labels) = clustered(9, 20, 25, 24, 0.9);
    let names: Vec<String> = labels.iter().map(|c| format!("class number {c}")).collect();
    let points = layout(&vectors, 1).expect("layout");
    let (dir, _keep) = output_dir();
    let path = dir.join("map.png");
    render_png(&points, &names, &path).expect("render png");

    let img = image::open(&path).expect("decode png").to_rgb8();
    assert_eq!(img.dimensions(), (1380, 1000));
    // The plot holds many coloured (non-grey) pixels, in many colours.
    let mut colours = std::collections::HashSet::new();
    let mut coloured = 0;
    for x in 0..1000 {
        for y in 0..1000 {
            let p = img.get_pixel(x, y).0;
            let spread = p.iter().max().unwrap_or(&0) - p.iter().min().unwrap_or(&0);
            if spread > 40 {
                coloured += 1;
                colours.insert(p);
            }
        }
    }
    println!(
        "{coloured} coloured pixels, {} distinct colours",
        colours.len()
    );
    assert!(coloured > 5_000, "{coloured}");
    assert!(colours.len() > 16, "{}", colours.len());
    // The legend has text: dark pixels right of the swatches.
    let dark = (1048..1380)
        .flat_map(|x| (60..600).map(move |y| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 100))
        .count();
    assert!(dark > 2_000, "legend text pixels: {dark}");
}

#[test]
fn html_map_is_self_contained() {
    let (vectors, labels) = clustered(10, 4, 20, 8, 0.2);
    let names: Vec<String> = labels.iter().map(|c| format!("class {c}")).collect();
    let mut titles: Vec<String> = (0..labels.len()).map(|i| format!("item {i}")).collect();
    titles[3] = "tricky </script><b>title</b> & \"quotes\"".into();
    let thumb = {
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([200, 30, 30]));
        let mut bytes = Vec::new();
        img.write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .expect("encode thumbnail");
        bytes
    };
    let mut thumbnails = vec![thumb; labels.len()];
    thumbnails[5] = Vec::new(); // no thumbnail for this one
    let points = layout(&vectors, 3).expect("layout");
    let (dir, _keep) = output_dir();
    let path = dir.join("map.html");
    render_html(&points, &names, &titles, Some(&thumbnails), &path).expect("render html");

    let page = std::fs::read_to_string(&path).expect("read html");
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "no network references"
    );
    assert_eq!(
        page.matches("</script>").count(),
        2,
        "the title must not close the data block"
    );
    let start = page
        .find(r#"type="application/json">"#)
        .expect("data block")
        + 24;
    let end = start + page[start..].find("</script>").expect("end of data");
    let data: serde_json::Value = serde_json::from_str(&page[start..end]).expect("data is JSON");
    assert_eq!(data["points"].as_array().map(Vec::len), Some(80));
    assert_eq!(
        data["titles"][3],
        "tricky </script><b>title</b> & \"quotes\""
    );
    assert!(data["thumbnails"][0]
        .as_str()
        .is_some_and(|s| s.starts_with("data:image/png;base64,")));
    assert!(data["thumbnails"][5].is_null());
    assert_eq!(data["class_names"].as_array().map(Vec::len), Some(4));
}

#[test]
fn mismatched_inputs_are_refused() {
    let points = vec![[0.0, 0.0]; 3];
    let (dir, _keep) = output_dir();
    assert!(render_png(&points, &["a", "b"], &dir.join("bad.png")).is_err());
    assert!(render_html(
        &points,
        &["a", "b", "c"],
        &["t"],
        None,
        &dir.join("bad.html")
    )
    .is_err());
}
