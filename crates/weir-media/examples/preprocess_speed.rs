//! Measures decode + resize(256) + center_crop(224) + to_tensor per image on the installed photos,
//! single-threaded, with the same kernels the operators use.
//!
//! `cargo run --release -p weir-media --example preprocess_speed` (after scripts/setup-models.sh).

use std::path::PathBuf;
use std::time::Instant;
use weir_media::center_crop::center_crop_image;
use weir_media::decode_image::decode;
use weir_media::resize::{Target, resize_image};
use weir_media::to_tensor::ToTensorSpec;
use weir_types::multimodal::ImageMode;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::var_os("WEIR_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.weir/data"))
        .join("photos");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&dir)? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "jpg") {
            files.push(std::fs::read(&p)?);
        }
    }
    let spec: ToTensorSpec =
        serde_json::from_str(r#"{"channel_order": "BGR", "mean": [104, 117, 123]}"#)?;
    let plan = spec.plan(224, 224, ImageMode::Rgb)?;
    let mut out = vec![0f32; plan.row_len()];
    let (mut t_dec, mut t_rs, mut t_crop, mut t_tensor, mut pixels) =
        (0f64, 0f64, 0f64, 0f64, 0u64);
    let rounds = 3;
    for _ in 0..rounds {
        for f in &files {
            let t = Instant::now();
            let img = decode(f, ImageMode::Rgb, 50_000_000)?;
            let t1 = Instant::now();
            let r = resize_image(&img, Target::ShorterSide(256), "bilinear")?;
            let t2 = Instant::now();
            let c = center_crop_image(&r, 224, 224)?;
            let t3 = Instant::now();
            plan.write_f32(&c.pixels, &mut out);
            let t4 = Instant::now();
            t_dec += (t1 - t).as_secs_f64();
            t_rs += (t2 - t1).as_secs_f64();
            t_crop += (t3 - t2).as_secs_f64();
            t_tensor += (t4 - t3).as_secs_f64();
            pixels += (img.width * img.height) as u64;
        }
    }
    let n = (files.len() * rounds) as f64;
    println!(
        "{} JPEGs x {rounds}, mean {:.2} MP: decode {:.2} ms, resize {:.2} ms, crop {:.3} ms, to_tensor {:.3} ms, total {:.2} ms/image (one thread)",
        files.len(),
        pixels as f64 / n / 1e6,
        t_dec / n * 1e3,
        t_rs / n * 1e3,
        t_crop / n * 1e3,
        t_tensor / n * 1e3,
        (t_dec + t_rs + t_crop + t_tensor) / n * 1e3
    );
    Ok(())
}
