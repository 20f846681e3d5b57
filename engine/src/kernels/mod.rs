//! Every hand-written CPU kernel, behind small safe functions. Models, the index and the query
//! paths call these; a kernel never imports a model. Each module picks its instruction set at
//! run time (AVX-512, AVX-512 VNNI, AVX512_BF16 when bf16 is asked for, VNNI's int8 products
//! when int8 is, AVX2, or portable code), so one binary runs on any x86-64 and still uses the
//! CPU it lands on.

/// Buffers and weights that start on a cache line, so no vector access straddles two.
pub(crate) mod aligned;
/// Fused channels-last 1x1 convolutions, the stem's patches and the instruction-set choice.
pub(crate) mod conv;
/// Depthwise channels-last convolutions: inference (f32 and bf16) and fine-tuning's gradient.
pub(crate) mod depthwise;
/// The erf GELU, panel lane masks and the shared output pointer of the encoder's products.
pub(crate) mod elementwise;
/// The fused transformer encoder's packed matrix products, attention, layer norm, activations.
pub(crate) mod encoder;
/// MobileNet-style network bodies on plain slices, each inverted-residual block fused.
pub(crate) mod mbconv;
/// Int8 matrix products (weights per output channel, inputs per row) for the text encoder.
pub(crate) mod quantized;
/// Dot products and normalisation of vectors, the inner loop of every search.
pub(crate) mod vector;
