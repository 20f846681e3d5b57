//! The networks. One file per network; each takes a `VarBuilder`, never a path.

/// EfficientNet-Lite0/1/2 (the image tower's network).
pub mod efficientnet_lite;
/// The fused network pooled with single-modality experts (late fusion).
/// The fused image + text classifier whose concatenation layer is the fused search space.
pub mod fusion;
/// ImageNet class names for the image tower's logits.
pub mod imagenet_classes;
/// MiniLM and other BERT-layout sentence encoders (the text tower's network).
pub mod minilm;

/// A linear layer on frozen features that skips the input's gradient.
pub(crate) mod frozen_input;
