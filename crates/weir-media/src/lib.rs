//! weir's multimodal operators: `fetch` (materialise objects by URI), `decode_image`, `resize`,
//! `center_crop`, `to_tensor` (the image preprocessing chain) and `decode_audio`.
//!
//! Each operator has a spec (`FooSpec`, deserialised from the pipeline file with unknown fields
//! refused) with the three calls the planner makes: `output_schema` (plan-time checks), `create`
//! (one running instance) and `describe`. Column types are the multimodal extension types of
//! [`weir_types::multimodal`]. CPU work (decoding, resizing, tensor conversion) runs in one
//! `spawn_cpu` call per batch, parallel over the batch's rows with rayon; rows that cannot be
//! processed go through `ctx.bad_row` (failing the job or becoming dead letters).
//!
//! The per-image functions ([`decode_image::decode`], [`resize::resize_image`],
//! [`center_crop::center_crop_image`], [`to_tensor::ToTensorSpec::plan`]) are public too, so
//! benchmarks can compare the operators with a hand-written loop over the same kernels.

#![warn(missing_docs)]

pub mod center_crop;
mod common;
pub mod decode_audio;
pub mod decode_image;
pub mod fetch;
pub mod resize;
pub mod to_tensor;

pub use center_crop::CenterCropSpec;
pub use common::ImageBuf;
pub use decode_audio::{AudioBuf, DecodeAudioSpec};
pub use decode_image::{DecodeImageSpec, FusedDecodeSpec};
pub use fetch::FetchSpec;
pub use resize::ResizeSpec;
pub use to_tensor::ToTensorSpec;
