//! The networks. One file per network; each takes a `VarBuilder`, never a path.

pub mod efficientnet_lite;
pub mod imagenet_classes;

mod conv_cpu;
