//! The fused CPU encoder: BERT on packed token rows.
//!
//! The sequences of a batch are laid end to end, one row per token, with no padding: the linear
//! layers (about 95% of the work) run once over all real tokens, and attention runs per
//! sequence and head, so no token ever attends to padding and no mask is needed. This is the
//! same arithmetic as a padded, masked batch, minus the padding's wasted work.

use std::cell::Cell;

use crate::error::{Error, Result};
use crate::kernels::encoder::{self as kernels, Activation, Epilogue, Isa, PackedLinear};

/// A forward pass's activations, kept per thread between calls so that encoding one short text
/// after another does not fault in fresh pages for every buffer.
#[derive(Default)]
struct Buffers {
    x: Vec<f32>,
    tmp: Vec<f32>,
    ctx: Vec<f32>,
    qkv: Vec<f32>,
    inter: Vec<f32>,
}

impl Buffers {
    fn bytes(&self) -> usize {
        let all = [&self.x, &self.tmp, &self.ctx, &self.qkv, &self.inter];
        all.iter().map(|v| v.capacity()).sum::<usize>() * std::mem::size_of::<f32>()
    }
}

thread_local! {
    /// Taken for a pass and put back after it: a pass that starts on this thread while another
    /// waits in a join (rayon may run it there) finds it empty and allocates its own.
    static BUFFERS: Cell<Buffers> = Cell::new(Buffers::default());
}

/// `v` as `len` zeros, reusing its allocation.
fn zeroed(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    v.clear();
    v.resize(len, 0.0);
    v
}

pub(super) struct Norm {
    pub gamma: Vec<f32>,
    pub beta: Vec<f32>,
}

pub(super) struct FusedLayer {
    /// Query, key and value projections as one `[3·hidden, hidden]` layer.
    pub qkv: PackedLinear,
    pub attention_out: PackedLinear,
    pub attention_norm: Norm,
    pub intermediate: PackedLinear,
    pub output: PackedLinear,
    pub output_norm: Norm,
}

pub(super) struct FusedEncoder {
    pub isa: Isa,
    pub hidden: usize,
    pub heads: usize,
    pub eps: f32,
    pub act: Activation,
    pub vocab: usize,
    pub max_positions: usize,
    /// `[vocab, hidden]` word embeddings.
    pub word: Vec<f32>,
    /// `[max_positions, hidden]` position embeddings plus token type 0's embedding, pre-added.
    pub position: Vec<f32>,
    pub embedding_norm: Norm,
    pub layers: Vec<FusedLayer>,
}

impl FusedEncoder {
    /// The mean of each sequence's last hidden states (one `hidden`-vector per sequence).
    pub(super) fn mean_pooled(&self, sequences: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        // From outside the pool, run the whole pass on a pool worker: the many small parallel
        // steps then fork locally instead of each being injected into the pool from outside.
        if rayon::current_thread_index().is_none() {
            return rayon::join(|| self.mean_pooled(sequences), || ()).0;
        }
        let h = self.hidden;
        let mut spans = Vec::with_capacity(sequences.len());
        let mut rows = 0;
        for (i, seq) in sequences.iter().enumerate() {
            if seq.is_empty() || seq.len() > self.max_positions {
                return Err(Error::InvalidArgument(format!(
                    "sequence #{i} has {} tokens; the model takes 1 to {}",
                    seq.len(),
                    self.max_positions
                )));
            }
            if let Some(&bad) = seq.iter().find(|&&t| t as usize >= self.vocab) {
                return Err(Error::InvalidArgument(format!(
                    "sequence #{i} has token id {bad}, outside the model's vocabulary of {}",
                    self.vocab
                )));
            }
            spans.push((rows, seq.len()));
            rows += seq.len();
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        let intermediate = self.layers.first().map_or(0, |l| l.intermediate.outputs());
        let mut buffers = BUFFERS.with(Cell::take);
        let Buffers {
            x,
            tmp,
            ctx,
            qkv,
            inter,
        } = &mut buffers;
        let (x, tmp) = (zeroed(x, rows * h), zeroed(tmp, rows * h));
        let (ctx, qkv) = (zeroed(ctx, rows * h), zeroed(qkv, rows * 3 * h));
        let inter = zeroed(inter, rows * intermediate);

        let _span =
            tracing::trace_span!("minilm_fused", rows, sequences = sequences.len()).entered();
        for (seq, &(start, _)) in sequences.iter().zip(&spans) {
            for (pos, &token) in seq.iter().enumerate() {
                let word = &self.word[token as usize * h..][..h];
                let position = &self.position[pos * h..][..h];
                for ((t, w), p) in tmp[(start + pos) * h..][..h]
                    .iter_mut()
                    .zip(word)
                    .zip(position)
                {
                    *t = w + p;
                }
            }
        }
        let norm = &self.embedding_norm;
        kernels::layer_norm(self.isa, tmp, x, &norm.gamma, &norm.beta, self.eps);

        for layer in &self.layers {
            layer.qkv.forward(x, rows, qkv, Epilogue::Bias);
            kernels::attention(self.isa, qkv, &spans, h, self.heads, ctx);
            layer
                .attention_out
                .forward(ctx, rows, tmp, Epilogue::BiasResidual(x));
            let norm = &layer.attention_norm;
            kernels::layer_norm(self.isa, tmp, x, &norm.gamma, &norm.beta, self.eps);

            if self.act == Activation::GeluErf {
                layer
                    .intermediate
                    .forward(x, rows, inter, Epilogue::BiasGelu);
            } else {
                layer.intermediate.forward(x, rows, inter, Epilogue::Bias);
                kernels::activate(self.isa, inter, intermediate, self.act);
            }
            layer
                .output
                .forward(inter, rows, tmp, Epilogue::BiasResidual(x));
            let norm = &layer.output_norm;
            kernels::layer_norm(self.isa, tmp, x, &norm.gamma, &norm.beta, self.eps);
        }

        let pooled = spans
            .iter()
            .map(|&(start, len)| {
                let mut mean = vec![0.0f32; h];
                for row in x[start * h..(start + len) * h].chunks_exact(h) {
                    for (m, v) in mean.iter_mut().zip(row) {
                        *m += v;
                    }
                }
                let inv = 1.0 / len as f32;
                mean.iter_mut().for_each(|m| *m *= inv);
                mean
            })
            .collect();
        if buffers.bytes() <= kernels::KEEP_SCRATCH_BYTES {
            BUFFERS.with(|b| b.set(buffers));
        }
        Ok(pooled)
    }
}
