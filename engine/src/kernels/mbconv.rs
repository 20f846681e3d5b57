//! A MobileNet-style network body (stem, inverted-residual blocks, head with average pooling) on
//! plain NHWC slices, with each block's expand 1x1 → depthwise → project 1x1 fused.
//!
//! Run layer by layer, a block's expanded activations (up to 112 x 112 x 96 floats per image in
//! EfficientNet-Lite0) go out to memory and come back twice, and at batch 32 that traffic, not
//! arithmetic, sets the speed. Here a block walks down its output a few rows at a time: it
//! expands only the input rows under the next rows' taps into a window that stays in the core's
//! L2 cache (rows shared with the previous step are kept, not recomputed), runs the depthwise
//! convolution from that window, and projects the result (adding the residual) straight into
//! the block's output. Each image goes through the whole network on one thread, in buffers the
//! thread reuses, so nothing is allocated per layer; with fewer images than threads, every
//! layer is split into bands of output rows instead.
//!
//! The arithmetic is that of the kernels in `conv`, on the instruction set the caller picks.
//! Each step enters a trace span named after its layer kind (`stem`, `expand`, `depthwise`,
//! `project`, `head`), which `lab/examples/image_layers.rs` times.

use std::cell::RefCell;
use std::thread::LocalKey;

use rayon::prelude::*;

use super::aligned::aligned_prefix;
use super::conv::{same_padding, BlockedOut, Isa, Patches, Pointwise};
use super::depthwise::{Depthwise, DepthwiseOut};

/// The working set of one fused step: expanded window plus depthwise output. Half the L2 of
/// the development machine's cores (1 MiB), leaving room for the block's weights.
const WINDOW_BYTES: usize = 512 * 1024;
const WINDOW_FLOATS: usize = WINDOW_BYTES / std::mem::size_of::<f32>();

thread_local! {
    /// A fused step's window and depthwise rows.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// One image's activations between blocks (two halves, ping-pong).
    static ACTIVATIONS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The stem's patches for the rows a fused first block expands.
    static PATCHES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's buffer `key` (contents unspecified), or on a fresh
/// buffer if the thread's own is in use further up its stack.
fn with_buffer<R>(
    key: &'static LocalKey<RefCell<Vec<f32>>>,
    len: usize,
    f: impl FnOnce(&mut [f32]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(aligned_prefix(&mut buf, len)),
        Err(_) => f(aligned_prefix(&mut Vec::new(), len)),
    })
}

/// The stem: a `k x k` "SAME" convolution of NCHW images into NHWC, as patches times a matrix.
#[derive(Clone)]
pub(crate) struct Stem {
    patches: Patches,
    /// `(k * k * channels_in, channels_out)`, bias and ReLU6.
    conv: Pointwise,
    channels_in: usize,
}

impl Stem {
    pub(crate) fn new(kernel: usize, stride: usize, channels_in: usize, conv: Pointwise) -> Self {
        Self {
            patches: Patches { kernel, stride },
            conv,
            channels_in,
        }
    }

    fn out_shape(&self, (h, w): (usize, usize)) -> (usize, usize, usize) {
        let (k, s) = (self.patches.kernel, self.patches.stride);
        (
            same_padding(h, k, s).0,
            same_padding(w, k, s).0,
            self.conv.outputs(),
        )
    }

    /// Output rows `oy0 ..` (as many as `out` holds) of one NCHW image.
    fn rows(&self, isa: Isa, image: &[f32], (h, w): (usize, usize), oy0: usize, out: &mut [f32]) {
        let (_, ow, n) = self.out_shape((h, w));
        let cols = self.conv.inputs();
        let rows = out.len() / (ow * n);
        let chunk = (WINDOW_FLOATS / (ow * cols)).clamp(1, rows.max(1));
        with_buffer(&SCRATCH, chunk * ow * cols, |patches| {
            for a in (0..rows).step_by(chunk) {
                let b = (a + chunk).min(rows);
                let p = &mut patches[..(b - a) * ow * cols];
                let _span = tracing::trace_span!("stem").entered();
                self.patches
                    .rows(image, (self.channels_in, h, w), oy0 + a, p);
                self.conv
                    .run_tile(isa, p, None, &mut out[a * ow * n..b * ow * n]);
            }
        });
    }
}

/// What a block's expand step reads.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// The previous layer's activations, `(h, w, channels)`.
    Activations(&'a [f32]),
    /// One NCHW image of `(h, w)`: the stem stands in for the expand of a block that has
    /// none, so the stem's output rows are made in the block's window as it needs them and
    /// never written out whole (at 224 pixels, 1.6 MB that would go to memory and back).
    Image(&'a Stem, &'a [f32], (usize, usize)),
}

/// One inverted-residual block: optional expand 1x1 (ReLU6), depthwise (ReLU6), project 1x1,
/// plus the input when the shapes allow.
#[derive(Clone)]
pub(crate) struct Block {
    expand: Option<Pointwise>,
    depthwise: Depthwise,
    project: Pointwise,
    residual: bool,
}

impl Block {
    pub(crate) fn new(
        expand: Option<Pointwise>,
        depthwise: Depthwise,
        project: Pointwise,
        residual: bool,
    ) -> Self {
        Self {
            expand,
            depthwise,
            project,
            residual,
        }
    }

    fn out_shape(&self, (h, w): (usize, usize)) -> (usize, usize, usize) {
        let (k, s, _) = self.depthwise.shape();
        (
            same_padding(h, k, s).0,
            same_padding(w, k, s).0,
            self.project.outputs(),
        )
    }

    /// Output rows `oy0 ..` (as many as `out` holds) of one `(h, w, channels)` image `x`.
    fn rows(&self, isa: Isa, x: &[f32], hw: (usize, usize), oy0: usize, out: &mut [f32]) {
        self.rows_from(isa, Input::Activations(x), hw, oy0, out)
    }

    /// Whether this block can take the stem as its expand ([`Input::Image`]): it has no
    /// expand of its own, its depthwise reads the stem's channels, and the window is blocked.
    fn fuses_stem(&self, isa: Isa, stem: &Stem) -> bool {
        self.expand.is_none()
            && !self.residual
            && stem.conv.outputs() == self.depthwise.shape().2
            && stem.conv.writes_blocked(isa)
            && self.depthwise.reads_blocked(isa)
    }

    /// [`Self::rows`] from `input`; `(h, w)` is the size of the depthwise input (for an
    /// image, of the stem's output).
    fn rows_from(
        &self,
        isa: Isa,
        input: Input,
        (h, w): (usize, usize),
        oy0: usize,
        out: &mut [f32],
    ) {
        let (k, s, hidden) = self.depthwise.shape();
        let (_, pad_top, _) = same_padding(h, k, s);
        let (_, ow, cout) = self.out_shape((h, w));
        let (x, expand) = match input {
            Input::Activations(x) => (x, self.expand.as_ref()),
            Input::Image(stem, ..) => (&[][..], Some(&stem.conv)),
        };
        // Input channels per pixel (patches of the image for the stem).
        let cin = match input {
            Input::Activations(x) => x.len() / (h * w),
            Input::Image(stem, ..) => stem.conv.inputs(),
        };
        let rows = out.len() / (ow * cout);
        // On AVX-512 the window is blocked by 16 channels (each block a contiguous run of
        // `window_rows` rows), its rows zero-padded as the depthwise kernel reads them, so
        // that kernel reads each block's rows in place instead of gathering 64 bytes from
        // every pixel into a padded copy.
        let blocked =
            expand.is_some_and(|e| e.writes_blocked(isa)) && self.depthwise.reads_blocked(isa);
        // Columns per window row, and the first image column's place among them.
        let (cols, left) = if blocked {
            self.depthwise.padded_row(w)
        } else {
            (w, 0)
        };
        let row_len = cols * hidden;
        // Output rows per step: as many as keep the window and the depthwise rows in budget.
        let by_window = match expand {
            Some(_) => (WINDOW_FLOATS / row_len).saturating_sub(k) / s + 1,
            None => usize::MAX,
        };
        let by_dw = WINDOW_FLOATS / (2 * ow * hidden);
        let chunk = by_window.min(by_dw).clamp(1, rows.max(1));
        let window_rows = ((chunk - 1) * s + k).min(h);
        let window_len = if expand.is_some() {
            window_rows * row_len
        } else {
            0
        };
        let slice = window_rows * cols * 16;
        with_buffer(&SCRATCH, window_len + chunk * ow * hidden, |scratch| {
            let (window, dw) = scratch.split_at_mut(window_len);
            // Input rows `held.0 .. held.1` are expanded in `window`, the first at its start
            // (of each block of channels, when blocked).
            let mut held = (0usize, 0usize);
            for a in (oy0..oy0 + rows).step_by(chunk) {
                let b = (a + chunk).min(oy0 + rows);
                let (input, row0) = match expand {
                    None => (x, 0),
                    Some(expand) => {
                        let lo = (a * s).saturating_sub(pad_top);
                        let hi = ((b - 1) * s + k).saturating_sub(pad_top).min(h);
                        // Rows still needed move to the start; rows in floats per block of
                        // channels when blocked, per row otherwise.
                        let per_row = if blocked { cols * 16 } else { row_len };
                        if lo >= held.1 {
                            held = (lo, lo);
                        } else if lo > held.0 {
                            let keep = (lo - held.0) * per_row..(held.1 - held.0) * per_row;
                            if blocked {
                                for block in window.chunks_exact_mut(slice) {
                                    block.copy_within(keep.clone(), 0);
                                }
                            } else {
                                window.copy_within(keep, 0);
                            }
                            held.0 = lo;
                        }
                        if hi > held.1 {
                            let at = (held.1 - held.0) * per_row;
                            let _span = match input {
                                Input::Image(..) => tracing::trace_span!("stem"),
                                Input::Activations(_) => tracing::trace_span!("expand"),
                            }
                            .entered();
                            let expand_rows = |src: &[f32], window: &mut [f32]| {
                                if blocked {
                                    let layout = BlockedOut {
                                        slice,
                                        width: w,
                                        stride: cols,
                                        left,
                                    };
                                    expand.run_tile_blocked(isa, src, &mut window[at..], layout);
                                    let end = (hi - held.0) * per_row;
                                    for block in window.chunks_exact_mut(slice) {
                                        for row in block[at..end].chunks_exact_mut(per_row) {
                                            row[..left * 16].fill(0.0);
                                            row[(left + w) * 16..].fill(0.0);
                                        }
                                    }
                                } else {
                                    let dst = &mut window[at..(hi - held.0) * row_len];
                                    expand.run_tile(isa, src, None, dst);
                                }
                            };
                            match input {
                                Input::Activations(x) => {
                                    expand_rows(&x[held.1 * w * cin..hi * w * cin], window)
                                }
                                Input::Image(stem, image, hw_in) => {
                                    let len = (hi - held.1) * w * cin;
                                    with_buffer(&PATCHES, len, |patches| {
                                        let chw = (stem.channels_in, hw_in.0, hw_in.1);
                                        stem.patches.rows(image, chw, held.1, patches);
                                        expand_rows(patches, window)
                                    })
                                }
                            }
                            held.1 = hi;
                        }
                        let len = if blocked {
                            window_len
                        } else {
                            (held.1 - held.0) * row_len
                        };
                        (&window[..len], held.0)
                    }
                };
                let dw = &mut dw[..(b - a) * ow * hidden];
                // (A block fed the image has no residual: `fuses_stem`.)
                let residual = self.residual.then(|| &x[a * w * cin..b * w * cin]);
                let dst = &mut out[(a - oy0) * ow * cout..(b - oy0) * ow * cout];
                // In bf16 the depthwise kernel stores its outputs already rounded, in the
                // pairs the project reads: no rounding pass between them, half the bytes.
                #[cfg(target_arch = "x86_64")]
                if blocked && self.depthwise.writes_bf16(isa) {
                    let half = dw.len() / 2;
                    let words: &mut [u32] = bytemuck::cast_slice_mut(&mut dw[..half]);
                    let span = tracing::trace_span!("depthwise").entered();
                    let stored = DepthwiseOut::Bf16(words);
                    self.depthwise
                        .rows_blocked(isa, input, slice, row0, (h, w), a, stored);
                    drop(span);
                    let _span = tracing::trace_span!("project").entered();
                    self.project.run_tile_rounded(isa, words, residual, dst);
                    continue;
                }
                let span = tracing::trace_span!("depthwise").entered();
                if blocked {
                    let stored = DepthwiseOut::F32(dw);
                    self.depthwise
                        .rows_blocked(isa, input, slice, row0, (h, w), a, stored);
                } else {
                    self.depthwise.rows(isa, input, row0, (h, w), a, dw);
                }
                drop(span);
                let _span = tracing::trace_span!("project").entered();
                self.project.run_tile(isa, dw, residual, dst);
            }
        });
    }
}

/// Stem, blocks and a 1x1 head (ReLU6) averaged over pixels: images in, pooled features out.
#[derive(Clone)]
pub(crate) struct Network {
    stem: Stem,
    blocks: Vec<Block>,
    head: Pointwise,
}

impl Network {
    pub(crate) fn new(stem: Stem, blocks: Vec<Block>, head: Pointwise) -> Self {
        Self { stem, blocks, head }
    }

    /// Width of the pooled features.
    pub(crate) fn features_dim(&self) -> usize {
        self.head.outputs()
    }

    /// Pooled head features, `(images.len(), features_dim)` row-major, of NCHW images of
    /// `(channels_in, h, w)`, each its own slice (read in place, never gathered into a batch).
    pub(crate) fn features(&self, isa: Isa, images: &[&[f32]], hw: (usize, usize)) -> Vec<f32> {
        let n = self.head.outputs();
        let mut out = vec![0f32; images.len() * n];
        if images.len() >= rayon::current_num_threads() {
            out.par_chunks_mut(n)
                .zip(images.par_iter())
                .for_each(|(f, image)| self.image(isa, image, hw, f, false));
        } else {
            for (f, image) in out.chunks_mut(n).zip(images) {
                self.image(isa, image, hw, f, true);
            }
        }
        out
    }

    /// Floats of the largest activation between layers.
    fn largest_activation(&self, hw: (usize, usize)) -> usize {
        let (mut h, mut w, c) = self.stem.out_shape(hw);
        let mut largest = h * w * c;
        for block in &self.blocks {
            let (oh, ow, c) = block.out_shape((h, w));
            largest = largest.max(oh * ow * c);
            (h, w) = (oh, ow);
        }
        largest
    }

    /// One image's features; `split` shares each layer's rows out over the thread pool.
    fn image(
        &self,
        isa: Isa,
        image: &[f32],
        hw: (usize, usize),
        features: &mut [f32],
        split: bool,
    ) {
        let largest = self.largest_activation(hw);
        let run = |buffers: &mut [f32]| {
            let (mut src, mut dst) = buffers.split_at_mut(largest);
            let (mut h, mut w, mut c) = self.stem.out_shape(hw);
            let mut blocks = &self.blocks[..];
            match blocks.first() {
                // The stem made row by row inside the first block's window.
                Some(first) if first.fuses_stem(isa, &self.stem) => {
                    let (oh, ow, oc) = first.out_shape((h, w));
                    let input = Input::Image(&self.stem, image, hw);
                    by_rows(split, &mut src[..oh * ow * oc], ow * oc, |oy0, rows| {
                        first.rows_from(isa, input, (h, w), oy0, rows)
                    });
                    (h, w, c) = (oh, ow, oc);
                    blocks = &blocks[1..];
                }
                _ => by_rows(split, &mut src[..h * w * c], w * c, |oy0, rows| {
                    self.stem.rows(isa, image, hw, oy0, rows)
                }),
            }
            for block in blocks {
                let (oh, ow, oc) = block.out_shape((h, w));
                let x = &src[..h * w * c];
                by_rows(split, &mut dst[..oh * ow * oc], ow * oc, |oy0, rows| {
                    block.rows(isa, x, (h, w), oy0, rows)
                });
                std::mem::swap(&mut src, &mut dst);
                (h, w, c) = (oh, ow, oc);
            }
            self.pool_head(isa, &src[..h * w * c], split, features);
        };
        // With `split`, rayon may start another image on this thread while it waits for its
        // bands; that image then finds the buffer taken and gets a fresh one.
        with_buffer(&ACTIVATIONS, 2 * largest, run);
    }

    /// The head over `x`'s pixels, averaged into `features`. The sum runs in pixel order
    /// whether or not the head itself is split over threads, so an image's features do not
    /// depend on the batch it came in.
    fn pool_head(&self, isa: Isa, x: &[f32], split: bool, features: &mut [f32]) {
        let (k, n) = (self.head.inputs(), self.head.outputs());
        let pixels = x.len() / k;
        let mut sums = vec![0f32; n];
        let add_rows = |sums: &mut [f32], y: &[f32]| {
            for row in y.chunks_exact(n) {
                for (s, v) in sums.iter_mut().zip(row) {
                    *s += v;
                }
            }
        };
        if split && pixels > 1 {
            let mut y = vec![0f32; pixels * n];
            by_rows(true, &mut y, n, |p0, rows| {
                let _span = tracing::trace_span!("head").entered();
                let count = rows.len() / n;
                self.head
                    .run_tile(isa, &x[p0 * k..(p0 + count) * k], None, rows);
            });
            add_rows(&mut sums, &y);
        } else {
            let chunk = (WINDOW_FLOATS / n).clamp(1, pixels.max(1));
            with_buffer(&SCRATCH, chunk * n, |y| {
                for a in (0..pixels).step_by(chunk) {
                    let b = (a + chunk).min(pixels);
                    let y = &mut y[..(b - a) * n];
                    let _span = tracing::trace_span!("head").entered();
                    self.head.run_tile(isa, &x[a * k..b * k], None, y);
                    add_rows(&mut sums, y);
                }
            });
        }
        let scale = 1.0 / pixels.max(1) as f32;
        for (f, s) in features.iter_mut().zip(sums) {
            *f = s * scale;
        }
    }
}

/// Fills `out` (rows of `row_len` floats) by `f(first_row, rows)`, in one call or, with
/// `split`, in one band of rows per thread.
fn by_rows(split: bool, out: &mut [f32], row_len: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len() / row_len;
    let threads = rayon::current_num_threads().min(rows);
    if !split || threads <= 1 {
        f(0, out);
        return;
    }
    let per = rows.div_ceil(threads);
    out.par_chunks_mut(per * row_len)
        .enumerate()
        .for_each(|(i, band)| f(i * per, band));
}
