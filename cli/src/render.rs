//! Drawing a catalogue map (the coordinates `Catalog::map` computes): a PNG coloured by class
//! with a legend, or one self-contained HTML file (canvas; hover shows title, class and
//! thumbnail; no network).

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use plotters::prelude::*;
use plotters::style::FontStyle;
use serde::Serialize;
use trio_engine::catalog::MapPoint;

/// A 48-pixel JPEG of an image file, or nothing when it cannot be read: a map shows what it can.
pub fn thumbnail(path: &Path) -> Vec<u8> {
    let Ok(img) = image::open(path) else {
        return Vec::new();
    };
    let small = image::DynamicImage::ImageRgb8(img.thumbnail(48, 48).to_rgb8());
    let mut out = std::io::Cursor::new(Vec::new());
    match small.write_to(&mut out, image::ImageFormat::Jpeg) {
        Ok(()) => out.into_inner(),
        Err(_) => Vec::new(),
    }
}

/// Draws `points` to `out`: HTML (with thumbnails) for a `.html` name, PNG otherwise.
pub fn draw(points: &[MapPoint], out: &Path) -> Result<()> {
    let xy: Vec<[f32; 2]> = points.iter().map(|p| [p.x, p.y]).collect();
    let groups: Vec<&str> = points.iter().map(|p| p.group.as_str()).collect();
    if out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("html"))
    {
        let titles: Vec<&str> = points.iter().map(|p| p.title.as_str()).collect();
        let thumbs: Vec<Vec<u8>> = points
            .iter()
            .map(|p| {
                p.image_path
                    .as_deref()
                    .map(|i| thumbnail(Path::new(i)))
                    .unwrap_or_default()
            })
            .collect();
        render_html(&xy, &groups, &titles, Some(&thumbs), out)
    } else {
        render_png(&xy, &groups, out)
    }
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
    if expected != got {
        bail!("{what}: expected {expected} entries, got {got}");
    }
    Ok(())
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
    let render_err =
        |e: &dyn std::fmt::Display| anyhow!("cannot draw the map into {}: {e}", path.display());
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
        .with_context(|| format!("encoding the map PNG {}", path.display()))?;
    std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
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
    let json = serde_json::to_string(&data)
        .with_context(|| format!("encoding the map data for {}", path.display()))?;
    // Inside <script>, "</" could close the element early; "<\/" means the same in JSON.
    let json = json.replace("</", "<\\/");
    let page = HTML_TEMPLATE
        .replace("__TOP_CLASSES__", &TOP_CLASSES.to_string())
        .replace("__DATA__", &json);
    std::fs::write(path, page).with_context(|| format!("writing {}", path.display()))
}

fn data_uri(index: usize, bytes: &[u8]) -> Result<Option<String>> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let format = image::guess_format(bytes)
        .map_err(|e| anyhow!("map thumbnail {index}: not a recognised image: {e}"))?;
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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

    /// `per_class` points around each of `classes` centres on a circle, class by class.
    fn rings(classes: usize, per_class: usize) -> (Vec<[f32; 2]>, Vec<usize>) {
        (0..classes * per_class)
            .map(|i| {
                let c = i % classes;
                let angle = std::f32::consts::TAU * c as f32 / classes as f32;
                let (x, y) = ((i as f32 * 0.37).sin(), (i as f32 * 0.91).cos());
                ([10.0 * angle.cos() + x, 10.0 * angle.sin() + y], c)
            })
            .unzip()
    }

    fn output_dir() -> (std::path::PathBuf, Option<tempfile::TempDir>) {
        match std::env::var_os("TRIO_TEST_OUTPUT_DIR") {
            Some(dir) => {
                std::fs::create_dir_all(&dir).expect("create output dir");
                (std::path::PathBuf::from(dir), None)
            }
            None => {
                let tmp = tempfile::tempdir().expect("tempdir");
                (tmp.path().to_path_buf(), Some(tmp))
            }
        }
    }

    #[test]
    fn png_map_is_drawn_with_colours_and_legend() {
        let (points, labels) = rings(20, 25);
        let names: Vec<String> = labels.iter().map(|c| format!("class number {c}")).collect();
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
        let (points, labels) = rings(4, 20);
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
        let data: serde_json::Value =
            serde_json::from_str(&page[start..end]).expect("data is JSON");
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
}
