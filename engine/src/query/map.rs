//! A 2-D map of the catalogue: t-SNE places items whose vectors are close next to each
//! other, then the map is drawn as a PNG (coloured by class, with a legend) or as one
//! self-contained HTML file (canvas, hover shows title, class and thumbnail; no network).
//!
//! Vectors are compared by cosine similarity, as everywhere else in Trio: they are scaled to
//! unit length, where Euclidean distance is `√(2 − 2·cos)`.

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use base64::Engine as _;
use bhtsne::{tSNE, Neighbor};
use plotters::prelude::*;
use plotters::style::FontStyle;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Knobs of the t-SNE layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayoutOptions {
    /// Effective number of neighbours each point tries to keep close (5–50 is usual;
    /// lowered automatically for tiny inputs).
    pub perplexity: f32,
    /// Gradient-descent iterations.
    pub epochs: usize,
    /// Barnes–Hut accuracy: 0.5 is the usual trade-off, smaller is slower and more exact.
    pub theta: f32,
    /// Seed of the random initial positions.
    pub seed: u64,
}

impl Default for LayoutOptions {
    fn default() -> Self {
        Self {
            perplexity: 30.0,
            epochs: 1000,
            theta: 0.5,
            seed: 0,
        }
    }
}

/// Below this many points t-SNE has nothing to optimise; they are placed on a circle.
const MIN_TSNE_POINTS: usize = 5;

/// 2-D t-SNE coordinates of `vectors`, with default options and the given seed.
pub fn layout(vectors: &[Vec<f32>], seed: u64) -> Result<Vec<[f32; 2]>> {
    layout_with(
        vectors,
        &LayoutOptions {
            seed,
            ..LayoutOptions::default()
        },
    )
}

/// 2-D t-SNE coordinates of `vectors`. Neighbours are found exactly (all pairs, in
/// parallel): fine for some tens of thousands of items; beyond that, take the neighbours
/// from the vector index and call [`layout_from_neighbours`].
///
/// The seed fixes the starting positions. bhtsne sums forces on rayon's threads, and how
/// rayon splits that work varies with load, so with several threads two runs from one seed
/// give the same picture but not the same bits; inside a one-thread rayon pool they are
/// identical.
pub fn layout_with(vectors: &[Vec<f32>], opts: &LayoutOptions) -> Result<Vec<[f32; 2]>> {
    let unit = unit_vectors(vectors)?;
    let n = unit.len();
    if n < MIN_TSNE_POINTS {
        return Ok(circle(n));
    }
    let k = neighbour_count(n, opts.perplexity);
    let neighbours: Vec<Vec<(usize, f32)>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut sims: Vec<(usize, f32)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| (j, dot(&unit[i], &unit[j])))
                .collect();
            if sims.len() > k {
                sims.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
                sims.truncate(k);
            }
            sims
        })
        .collect();
    layout_from_neighbours(&neighbours, opts)
}

/// 2-D t-SNE coordinates from each item's nearest neighbours `(index, cosine similarity)`,
/// e.g. as answered by the vector index. Only the neighbour graph matters, so this scales to
/// catalogues where comparing all pairs would not. The item itself, repeats and
/// out-of-range indices are dropped; every row is cut to the shortest row's length.
pub fn layout_from_neighbours(
    neighbours: &[Vec<(usize, f32)>],
    opts: &LayoutOptions,
) -> Result<Vec<[f32; 2]>> {
    validate_layout(opts)?;
    let n = neighbours.len();
    if n < MIN_TSNE_POINTS {
        return Ok(circle(n));
    }
    let mut rows: Vec<Vec<Neighbor<f32>>> = Vec::with_capacity(n);
    for (i, row) in neighbours.iter().enumerate() {
        let mut clean: Vec<(usize, f32)> = Vec::with_capacity(row.len());
        for &(j, sim) in row {
            if !sim.is_finite() {
                return Err(Error::InvalidItem {
                    what: "map neighbours".into(),
                    index: i,
                    reason: format!("similarity to item {j} is {sim}"),
                });
            }
            if j != i && j < n && !clean.iter().any(|c| c.0 == j) {
                clean.push((j, sim));
            }
        }
        clean.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        rows.push(
            clean
                .into_iter()
                .map(|(index, sim)| Neighbor {
                    index,
                    distance: (2.0 - 2.0 * sim.clamp(-1.0, 1.0)).max(0.0).sqrt(),
                })
                .collect(),
        );
    }
    let k = rows.iter().map(Vec::len).min().unwrap_or(0);
    if k == 0 {
        let index = rows.iter().position(Vec::is_empty).unwrap_or(0);
        return Err(Error::InvalidItem {
            what: "map neighbours".into(),
            index,
            reason: "no neighbours other than itself".into(),
        });
    }
    for row in &mut rows {
        row.truncate(k);
    }
    // bhtsne needs n − 1 ≥ 3·perplexity, and a perplexity above k/3 asks more of the
    // neighbour rows than they hold.
    let perplexity = opts.perplexity.min(k as f32 / 3.0).max(1.0);

    let mut rng = StdRng::seed_from_u64(opts.seed);
    let init: Vec<f32> = (0..n * 2).map(|_| gaussian(&mut rng) * 1e-4).collect();
    let samples = vec![(); n];
    let mut tsne: tSNE<f32, ()> = tSNE::new(&samples);
    tsne.perplexity(perplexity)
        .epochs(opts.epochs)
        .initial_embedding(init)
        .barnes_hut_with_neighbors(opts.theta, &rows);
    let flat = tsne.embedding();
    Ok(flat.chunks_exact(2).map(|p| [p[0], p[1]]).collect())
}

fn validate_layout(opts: &LayoutOptions) -> Result<()> {
    if !(opts.perplexity.is_finite() && opts.perplexity >= 1.0) {
        return Err(Error::InvalidArgument(format!(
            "t-SNE perplexity must be at least 1, got {}",
            opts.perplexity
        )));
    }
    if !(opts.theta.is_finite() && opts.theta > 0.0) {
        return Err(Error::InvalidArgument(format!(
            "t-SNE theta must be positive, got {}",
            opts.theta
        )));
    }
    Ok(())
}

/// Neighbours per point for a perplexity: t-SNE's customary three per unit of perplexity.
fn neighbour_count(n: usize, perplexity: f32) -> usize {
    ((3.0 * perplexity).ceil() as usize).clamp(1, n - 1)
}

fn unit_vectors(vectors: &[Vec<f32>]) -> Result<Vec<Vec<f32>>> {
    let dim = vectors.first().map_or(0, Vec::len);
    vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if v.len() != dim {
                return Err(Error::LengthMismatch {
                    what: format!("map vector {i}"),
                    expected: dim,
                    got: v.len(),
                });
            }
            if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                return Err(Error::InvalidItem {
                    what: "map vectors".into(),
                    index: i,
                    reason: format!("component {x} is not finite"),
                });
            }
            let norm = dot(v, v).sqrt();
            Ok(if norm > 0.0 {
                v.iter().map(|x| x / norm).collect()
            } else {
                v.clone()
            })
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn circle(n: usize) -> Vec<[f32; 2]> {
    (0..n)
        .map(|i| {
            let angle = std::f32::consts::TAU * i as f32 / n.max(1) as f32;
            [angle.cos(), angle.sin()]
        })
        .collect()
}

/// Standard normal sample (Box–Muller), enough for an initial embedding.
fn gaussian(rng: &mut StdRng) -> f32 {
    let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
    let u2: f32 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

// ---------------------------------------------------------------------------------------
// Colours and classes, shared by the PNG and the HTML.

/// Classes that get their own colour and legend entry; the rest are grey "other".
const TOP_CLASSES: usize = 16;

/// Sixteen colours distinguishable on white (Tableau 10, then lighter and darker partners).
const PALETTE: [(u8, u8, u8); TOP_CLASSES] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
    (188, 189, 34),
    (57, 59, 121),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
    (255, 152, 150),
    (197, 176, 213),
    (196, 156, 148),
];
const OTHER_COLOUR: (u8, u8, u8) = (160, 160, 160);

/// Classes by size (largest first, ties by name) and each item's position in that order.
struct ClassIndex {
    names: Vec<String>,
    counts: Vec<usize>,
    of_item: Vec<usize>,
}

impl ClassIndex {
    fn new<S: AsRef<str>>(labels: &[S]) -> Self {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for l in labels {
            *counts.entry(l.as_ref()).or_default() += 1;
        }
        let mut by_size: Vec<(&str, usize)> = counts.into_iter().collect();
        by_size.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let rank: HashMap<&str, usize> = by_size
            .iter()
            .enumerate()
            .map(|(r, &(name, _))| (name, r))
            .collect();
        Self {
            of_item: labels.iter().map(|l| rank[l.as_ref()]).collect(),
            names: by_size.iter().map(|&(name, _)| name.to_string()).collect(),
            counts: by_size.iter().map(|&(_, c)| c).collect(),
        }
    }

    fn colour(rank: usize) -> (u8, u8, u8) {
        PALETTE.get(rank).copied().unwrap_or(OTHER_COLOUR)
    }
}

fn check_lengths(what: &str, expected: usize, got: usize) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::LengthMismatch {
            what: what.into(),
            expected,
            got,
        })
    }
}

/// Affine map from layout coordinates into a `side × side` square with a margin, keeping
/// the aspect ratio (t-SNE distances mean the same in both directions).
struct Fit {
    min: [f32; 2],
    scale: f32,
    offset: [f32; 2],
}

impl Fit {
    fn new(points: &[[f32; 2]], side: f32, margin: f32) -> Self {
        let mut min = [f32::INFINITY; 2];
        let mut max = [f32::NEG_INFINITY; 2];
        for p in points {
            for a in 0..2 {
                min[a] = min[a].min(p[a]);
                max[a] = max[a].max(p[a]);
            }
        }
        if points.is_empty() {
            min = [0.0; 2];
            max = [0.0; 2];
        }
        let span = (max[0] - min[0]).max(max[1] - min[1]).max(f32::EPSILON);
        let scale = (side - 2.0 * margin) / span;
        let offset = [
            margin + ((side - 2.0 * margin) - (max[0] - min[0]) * scale) / 2.0,
            margin + ((side - 2.0 * margin) - (max[1] - min[1]) * scale) / 2.0,
        ];
        Self { min, scale, offset }
    }

    fn apply(&self, p: [f32; 2]) -> [f32; 2] {
        [
            self.offset[0] + (p[0] - self.min[0]) * self.scale,
            self.offset[1] + (p[1] - self.min[1]) * self.scale,
        ]
    }
}

// ---------------------------------------------------------------------------------------
// PNG

const PNG_PLOT_SIDE: u32 = 1000;
const PNG_LEGEND_WIDTH: u32 = 380;
const LEGEND_FONT: &str = "sans-serif";
const LEGEND_LABEL_CHARS: usize = 26;

/// Draws the map as a PNG: one dot per item coloured by class, and a legend of the
/// sixteen largest classes (the rest grey). The font is compiled in (DejaVu Sans), so no
/// system font library is needed.
pub fn render_png<S: AsRef<str>>(points: &[[f32; 2]], labels: &[S], path: &Path) -> Result<()> {
    check_lengths("map labels", points.len(), labels.len())?;
    let render_err = |e: &dyn std::fmt::Display| Error::MapRender {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    register_font().map_err(|e| render_err(&e))?;
    let classes = ClassIndex::new(labels);
    let (width, height) = (PNG_PLOT_SIDE + PNG_LEGEND_WIDTH, PNG_PLOT_SIDE);
    let mut pixels = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, (width, height)).into_drawing_area();
        let (plot, legend) = root.split_horizontally(PNG_PLOT_SIDE);
        let fit = Fit::new(points, PNG_PLOT_SIDE as f32, 24.0);
        // Smaller, lighter dots as the map fills up, so dense regions stay readable.
        let n = points.len().max(1) as f32;
        let radius = (7.0 - 1.2 * n.log10()).clamp(1.5, 5.0).round() as i32;
        let opacity = (1.1 - 0.15 * n.log10()).clamp(0.35, 0.9) as f64;

        // Grey "other" first, then the largest class, the smallest last: small classes
        // stay visible on top.
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|&i| {
            let rank = classes.of_item[i];
            (rank < TOP_CLASSES, rank)
        });
        for i in order {
            let (r, g, b) = ClassIndex::colour(classes.of_item[i]);
            let [x, y] = fit.apply(points[i]);
            // Screen y grows downwards; flip so the layout's "up" stays up.
            let centre = (x.round() as i32, (PNG_PLOT_SIDE as f32 - y).round() as i32);
            plot.draw(&Circle::new(
                centre,
                radius,
                RGBColor(r, g, b).mix(opacity).filled(),
            ))
            .map_err(|e| render_err(&e))?;
        }

        legend
            .draw(&Rectangle::new(
                [(0, 0), (2, PNG_PLOT_SIDE as i32)],
                RGBColor(220, 220, 220).filled(),
            ))
            .map_err(|e| render_err(&e))?;
        let title = format!("{} items, {} classes", points.len(), classes.names.len());
        let header = (LEGEND_FONT, 22).into_font().style(FontStyle::Normal);
        legend
            .draw(&Text::new(title, (20, 20), header.color(&BLACK)))
            .map_err(|e| render_err(&e))?;
        let mut entries: Vec<(String, (u8, u8, u8))> = classes
            .names
            .iter()
            .zip(&classes.counts)
            .take(TOP_CLASSES)
            .enumerate()
            .map(|(rank, (name, count))| {
                (
                    format!("{} ({count})", shorten(name, LEGEND_LABEL_CHARS)),
                    ClassIndex::colour(rank),
                )
            })
            .collect();
        if classes.names.len() > TOP_CLASSES {
            let rest = classes.names.len() - TOP_CLASSES;
            let items: usize = classes.counts[TOP_CLASSES..].iter().sum();
            entries.push((format!("{rest} other classes ({items})"), OTHER_COLOUR));
        }
        let font = (LEGEND_FONT, 19).into_font();
        for (row, (text, (r, g, b))) in entries.into_iter().enumerate() {
            let y = 70 + row as i32 * 32;
            legend
                .draw(&Rectangle::new(
                    [(20, y), (38, y + 18)],
                    RGBColor(r, g, b).filled(),
                ))
                .map_err(|e| render_err(&e))?;
            legend
                .draw(&Text::new(text, (48, y - 1), font.clone().color(&BLACK)))
                .map_err(|e| render_err(&e))?;
        }
        root.present().map_err(|e| render_err(&e))?;
    }
    let image = image::RgbImage::from_raw(width, height, pixels)
        .ok_or_else(|| render_err(&"pixel buffer has the wrong size"))?;
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|source| Error::ImageEncode {
            what: format!("map PNG {}", path.display()),
            source,
        })?;
    std::fs::write(path, png).map_err(|e| Error::io(path, e))
}

/// Makes DejaVu Sans the "sans-serif" font of the bitmap backend, once per process.
fn register_font() -> std::result::Result<(), &'static str> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(LEGEND_FONT, FontStyle::Normal, dejavu::sans::regular())
            .is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err("the built-in DejaVu Sans font could not be loaded")
    }
}

fn shorten(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(max_chars - 1).collect();
        short.push('…');
        short
    }
}

// ---------------------------------------------------------------------------------------
// HTML

/// Side of the square the HTML coordinates are scaled into (the page rescales to fit).
const HTML_SIDE: f32 = 1000.0;

#[derive(Serialize)]
struct HtmlData<'a> {
    /// `[x, y]` in `0..HTML_SIDE`, y upwards.
    points: Vec<[f32; 2]>,
    /// Class rank per item.
    classes: &'a [usize],
    class_names: &'a [String],
    class_counts: &'a [usize],
    /// CSS colour per class rank.
    colours: Vec<String>,
    titles: Vec<&'a str>,
    /// `data:` URI per item, or null.
    thumbnails: Option<Vec<Option<String>>>,
}

/// Writes the map as one HTML file that needs nothing else: data, script and thumbnails
/// (as `data:` URIs, format sniffed from the bytes; an empty entry means "no thumbnail")
/// are inline. Hovering shows an item's title, class and thumbnail; the wheel zooms, a drag
/// pans, clicking a legend entry highlights that class.
///
/// Thumbnails are embedded as given: keep them small (e.g. 64-pixel JPEGs), since a
/// catalogue of 100k items makes a file of 100k thumbnails.
pub fn render_html<S: AsRef<str>, T: AsRef<str>>(
    points: &[[f32; 2]],
    labels: &[S],
    titles: &[T],
    thumbnails: Option<&[Vec<u8>]>,
    path: &Path,
) -> Result<()> {
    check_lengths("map labels", points.len(), labels.len())?;
    check_lengths("map titles", points.len(), titles.len())?;
    if let Some(thumbs) = thumbnails {
        check_lengths("map thumbnails", points.len(), thumbs.len())?;
    }
    let classes = ClassIndex::new(labels);
    let fit = Fit::new(points, HTML_SIDE, 10.0);
    let thumbnails = thumbnails
        .map(|thumbs| {
            thumbs
                .iter()
                .enumerate()
                .map(|(i, bytes)| data_uri(i, bytes))
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;
    let data = HtmlData {
        points: points
            .iter()
            .map(|&p| {
                let [x, y] = fit.apply(p);
                [(x * 10.0).round() / 10.0, (y * 10.0).round() / 10.0]
            })
            .collect(),
        classes: &classes.of_item,
        class_names: &classes.names,
        class_counts: &classes.counts,
        colours: (0..classes.names.len())
            .map(|rank| {
                let (r, g, b) = ClassIndex::colour(rank);
                format!("rgb({r},{g},{b})")
            })
            .collect(),
        titles: titles.iter().map(AsRef::as_ref).collect(),
        thumbnails,
    };
    let json = serde_json::to_string(&data).map_err(|source| Error::Json {
        context: format!("map data for {}", path.display()),
        source,
    })?;
    // Inside <script>, "</" could close the element early; "<\/" means the same in JSON.
    let json = json.replace("</", "<\\/");
    let page = HTML_TEMPLATE
        .replace("__TOP_CLASSES__", &TOP_CLASSES.to_string())
        .replace("__DATA__", &json);
    std::fs::write(path, page).map_err(|e| Error::io(path, e))
}

fn data_uri(index: usize, bytes: &[u8]) -> Result<Option<String>> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let format = image::guess_format(bytes).map_err(|e| Error::InvalidItem {
        what: "map thumbnails".into(),
        index,
        reason: format!("not a recognised image: {e}"),
    })?;
    let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
    Ok(Some(format!(
        "data:{};base64,{encoded}",
        format.to_mime_type()
    )))
}

const HTML_TEMPLATE: &str = r##"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Trio map</title>
<style>
  html, body { margin: 0; height: 100%; font: 14px system-ui, sans-serif; color: #222; }
  #page { display: flex; height: 100%; }
  #map { flex: 1; min-width: 0; cursor: crosshair; background: #fff; }
  #side { width: 300px; overflow-y: auto; border-left: 1px solid #ddd; padding: 12px; box-sizing: border-box; }
  #side h1 { font-size: 16px; margin: 0 0 8px; }
  .entry { display: flex; align-items: center; gap: 8px; padding: 3px 4px; cursor: pointer; border-radius: 4px; }
  .entry:hover { background: #f0f0f0; }
  .entry.on { background: #e4ecf7; }
  .swatch { width: 14px; height: 14px; border-radius: 3px; flex: none; }
  #tip { position: fixed; pointer-events: none; display: none; background: #fff; border: 1px solid #bbb;
         border-radius: 6px; padding: 8px; max-width: 260px; box-shadow: 0 2px 8px rgba(0,0,0,.15); }
  #tip img { display: block; max-width: 128px; max-height: 128px; margin-bottom: 6px; }
  #tip .cls { color: #666; }
  .hint { color: #777; font-size: 12px; margin-top: 12px; }
</style>
</head>
<body>
<div id="page"><canvas id="map"></canvas><div id="side"><h1 id="heading"></h1><div id="legend"></div>
<p class="hint">Wheel: zoom. Drag: pan. Click a class: highlight it.</p></div></div>
<div id="tip"></div>
<script id="data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const TOP = __TOP_CLASSES__, N = D.points.length;
const canvas = document.getElementById("map"), ctx = canvas.getContext("2d");
const tip = document.getElementById("tip");
let view = { scale: 1, x: 0, y: 0 }, highlight = -1, dpr = 1;
const colourOf = c => c < TOP ? D.colours[c] : "rgb(160,160,160)";
const esc = s => String(s).replace(/[&<>"]/g, ch => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[ch]));

document.getElementById("heading").textContent = N + " items, " + D.class_names.length + " classes";
const legend = document.getElementById("legend");
function addEntry(label, colour, cls) {
  const div = document.createElement("div");
  div.className = "entry";
  div.innerHTML = '<span class="swatch" style="background:' + colour + '"></span><span>' + esc(label) + "</span>";
  div.onclick = () => {
    highlight = highlight === cls ? -1 : cls;
    for (const e of legend.children) e.classList.toggle("on", e === div && highlight !== -1);
    draw();
  };
  legend.appendChild(div);
}
D.class_names.slice(0, TOP).forEach((name, c) => addEntry(name + " (" + D.class_counts[c] + ")", D.colours[c], c));
if (D.class_names.length > TOP) {
  const rest = D.class_counts.slice(TOP).reduce((a, b) => a + b, 0);
  addEntry((D.class_names.length - TOP) + " other classes (" + rest + ")", "rgb(160,160,160)", TOP);
}
const classGroup = c => Math.min(c, TOP);

// Grey points first, then the largest class, the smallest last (on top).
const order = [...Array(N).keys()].sort((a, b) => {
  const ca = D.classes[a], cb = D.classes[b];
  return (ca < TOP) - (cb < TOP) || ca - cb;
});

function fitView() {
  const w = canvas.clientWidth, h = canvas.clientHeight;
  const s = Math.min(w, h) / 1000;
  view = { scale: s, x: (w - 1000 * s) / 2, y: (h - 1000 * s) / 2 };
}
function toScreen(p) { return [view.x + p[0] * view.scale, view.y + (1000 - p[1]) * view.scale]; }
function radius() { return Math.max(1.5, Math.min(6, 7 - 1.2 * Math.log10(Math.max(N, 1)))) * Math.sqrt(view.scale * 1.5); }

function draw() {
  dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== w * dpr || canvas.height !== h * dpr) { canvas.width = w * dpr; canvas.height = h * dpr; }
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const r = radius();
  for (const i of order) {
    const c = D.classes[i];
    const dim = highlight !== -1 && classGroup(c) !== highlight;
    ctx.globalAlpha = dim ? 0.08 : 0.8;
    ctx.fillStyle = colourOf(c);
    const [x, y] = toScreen(D.points[i]);
    ctx.beginPath(); ctx.arc(x, y, r, 0, 2 * Math.PI); ctx.fill();
  }
  ctx.globalAlpha = 1;
}

function nearest(mx, my) {
  let best = -1, bestD = Infinity;
  const r = radius() + 4;
  for (let i = 0; i < N; i++) {
    const [x, y] = toScreen(D.points[i]);
    const d = (x - mx) ** 2 + (y - my) ** 2;
    if (d < bestD && d <= r * r) { bestD = d; best = i; }
  }
  return best;
}

let drag = null;
canvas.addEventListener("mousedown", e => { drag = { x: e.clientX, y: e.clientY, vx: view.x, vy: view.y }; });
window.addEventListener("mouseup", () => { drag = null; });
canvas.addEventListener("mousemove", e => {
  if (drag) { view.x = drag.vx + e.clientX - drag.x; view.y = drag.vy + e.clientY - drag.y; draw(); return; }
  const rect = canvas.getBoundingClientRect();
  const i = nearest(e.clientX - rect.left, e.clientY - rect.top);
  if (i < 0) { tip.style.display = "none"; return; }
  const thumb = D.thumbnails && D.thumbnails[i] ? '<img alt="" src="' + D.thumbnails[i] + '">' : "";
  tip.innerHTML = thumb + "<div>" + esc(D.titles[i]) + '</div><div class="cls">' + esc(D.class_names[D.classes[i]]) + "</div>";
  tip.style.left = (e.clientX + 14) + "px"; tip.style.top = (e.clientY + 14) + "px"; tip.style.display = "block";
});
canvas.addEventListener("mouseleave", () => { tip.style.display = "none"; });
canvas.addEventListener("wheel", e => {
  e.preventDefault();
  const rect = canvas.getBoundingClientRect(), mx = e.clientX - rect.left, my = e.clientY - rect.top;
  const k = Math.exp(-e.deltaY * 0.0015);
  view.x = mx - (mx - view.x) * k; view.y = my - (my - view.y) * k; view.scale *= k;
  draw();
}, { passive: false });
window.addEventListener("resize", () => { fitView(); draw(); });
fitView(); draw();
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_inputs_are_placed_without_tsne() {
        assert!(layout(&[], 0).expect("empty").is_empty());
        let two = layout(&[vec![1.0, 0.0], vec![0.0, 1.0]], 0).expect("two points");
        assert_eq!(two.len(), 2);
        assert_ne!(two[0], two[1]);
    }

    #[test]
    fn ragged_or_broken_vectors_are_refused() {
        let ragged = vec![vec![1.0, 0.0]; 3]
            .into_iter()
            .chain([vec![1.0]])
            .collect::<Vec<_>>();
        assert!(matches!(
            layout(&ragged, 0),
            Err(Error::LengthMismatch { got: 1, .. })
        ));
        let nan = vec![vec![1.0, f32::NAN]];
        assert!(matches!(
            layout(&nan, 0),
            Err(Error::InvalidItem { index: 0, .. })
        ));
    }

    #[test]
    fn classes_are_ranked_by_size() {
        let classes = ClassIndex::new(&["b", "a", "b", "c", "b", "a"]);
        assert_eq!(classes.names, ["b", "a", "c"]);
        assert_eq!(classes.counts, [3, 2, 1]);
        assert_eq!(classes.of_item, [0, 1, 0, 2, 0, 1]);
    }

    #[test]
    fn fit_keeps_aspect_and_margin() {
        let fit = Fit::new(&[[0.0, 0.0], [2.0, 1.0]], 100.0, 10.0);
        assert_eq!(fit.apply([0.0, 0.0]), [10.0, 30.0]);
        assert_eq!(fit.apply([2.0, 1.0]), [90.0, 70.0]);
    }

    #[test]
    fn thumbnails_become_data_uris() {
        let png = b"\x89PNG\r\n\x1a\n rest";
        let uri = data_uri(0, png).expect("png").expect("some");
        assert!(uri.starts_with("data:image/png;base64,"), "{uri}");
        assert_eq!(data_uri(1, b"").expect("empty"), None);
        assert!(data_uri(2, b"not an image").is_err());
    }
}
