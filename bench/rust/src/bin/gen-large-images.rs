//! `gen-large-images`: writes N large JPEGs (1920x1080 up to 3840x2160) made from the real photos
//! installed by `scripts/setup-models.sh`, for the memory benchmark (`bench/memory/run.sh`): each
//! is a photo scaled up to cover a random target size (fast_image_resize, bilinear), centre-cropped
//! to it, and encoded at quality 85. Deterministic for a given seed and photo folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use fast_image_resize::images::Image;
use fast_image_resize::{PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::codecs::jpeg::JpegEncoder;
use rayon::prelude::*;
use weir_bench::prng::SplitMix64;

/// Write large JPEGs made from real photos.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Folder of source photos (*.jpg, *.png).
    #[arg(long)]
    photos: PathBuf,
    /// Output folder (created; `large_*.jpg` files already there are kept: same seed, same image).
    #[arg(long)]
    out: PathBuf,
    /// Number of images.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// PRNG seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// A decoded RGB photo.
struct Photo {
    name: String,
    width: u32,
    height: u32,
    pixels: Vec<u8>,
}

fn load(dir: &Path) -> Result<Vec<Photo>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e == "jpg" || e == "png")
        })
        .collect();
    paths.sort();
    let photos: Vec<Photo> = paths
        .par_iter()
        .filter_map(|p| {
            let img = image::open(p).ok()?.to_rgb8();
            let name = p.file_name()?.to_string_lossy().to_string();
            // Skip the small ones: scaling a thumbnail to 4K makes a blur, not a photo.
            (img.width() >= 384 && img.height() >= 288).then(|| Photo {
                name,
                width: img.width(),
                height: img.height(),
                pixels: img.into_raw(),
            })
        })
        .collect();
    if photos.is_empty() {
        bail!(
            "no photos of at least 384x288 in {}: run scripts/setup-models.sh",
            dir.display()
        );
    }
    Ok(photos)
}

/// Scales `p` to cover `w`x`h` and crops the centre.
fn make(p: &Photo, w: u32, h: u32) -> Result<Vec<u8>> {
    let scale = (f64::from(w) / f64::from(p.width)).max(f64::from(h) / f64::from(p.height));
    let src = Image::from_vec_u8(p.width, p.height, p.pixels.clone(), PixelType::U8x3)?;
    let mut dst = Image::new(w, h, PixelType::U8x3);
    // The window of the source that becomes the output, centred (clamped against rounding).
    let cw = (f64::from(w) / scale).min(f64::from(p.width));
    let ch = (f64::from(h) / scale).min(f64::from(p.height));
    let left = (f64::from(p.width) - cw) / 2.0;
    let top = (f64::from(p.height) - ch) / 2.0;
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(
            fast_image_resize::FilterType::Bilinear,
        ))
        .crop(left, top, cw, ch);
    Resizer::new().resize(&src, &mut dst, &options)?;
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 85).encode(
        dst.buffer(),
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )?;
    Ok(out)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let start = Instant::now();
    let photos = load(&args.photos)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let mut rng = SplitMix64::new(args.seed);
    // Sizes drawn up front so the output does not depend on the thread count.
    let jobs: Vec<(usize, usize, u32, u32)> = (0..args.count)
        .map(|i| {
            let photo = rng.below(photos.len() as u64) as usize;
            let w = 1920 + 2 * rng.below(961) as u32; // 1920..=3840, even
            let h = (w * 9 / 16) & !1; // 1080..=2160
            (i, photo, w, h)
        })
        .collect();
    let bytes: u64 = jobs
        .par_iter()
        .map(|&(i, photo, w, h)| -> Result<u64> {
            let path = args.out.join(format!("large_{i:05}.jpg"));
            if let Ok(m) = std::fs::metadata(&path) {
                return Ok(m.len()); // made by an earlier run with the same seed
            }
            let jpeg = make(&photos[photo], w, h)
                .with_context(|| format!("making image {i} from {}", photos[photo].name))?;
            let tmp = args.out.join(format!(".large_{i:05}.jpg.tmp"));
            std::fs::write(&tmp, &jpeg).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
            Ok(jpeg.len() as u64)
        })
        .sum::<Result<u64>>()?;
    println!(
        "wrote {} images ({:.1} MB) from {} photos to {} in {:.1}s",
        args.count,
        bytes as f64 / 1e6,
        photos.len(),
        args.out.display(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
