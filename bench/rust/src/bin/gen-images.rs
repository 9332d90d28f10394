//! `gen-images`: makes the image benchmark's input, N JPEGs cut from the real photos of
//! `$WEIR_DATA/photos` by seeded random crops, scales and re-encodings.
//!
//! Image `i` takes photo `i mod P` (so every photo is used about equally), cuts a random window of
//! 45–100 % of each side at a random position, scales it so its long side is 320–1024 px
//! (Lanczos3, so upscaled small photos stay photo-like) and encodes it as a baseline JPEG with a
//! random quality of 70–95. Grayscale photos stay grayscale (one-channel JPEGs), as in real folders.
//! The output depends only on the photos, `--count` and `--seed`; a stamp file
//! (`.generated-<count>-<seed>`) makes a second run with the same arguments a no-op.

use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Parser;
use image::codecs::jpeg::JpegEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView};
use rayon::prelude::*;
use weir_bench::prng::SplitMix64;

/// Generate benchmark JPEGs from real photos.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Number of JPEGs to write.
    #[arg(long, default_value_t = 3000)]
    count: usize,
    /// Folder of source photos (JPEG/PNG). Default `$WEIR_DATA/photos`.
    #[arg(long)]
    photos: Option<PathBuf>,
    /// Output folder (created; files `img_00000.jpg` …).
    #[arg(long, default_value = "data/generated/images")]
    out: PathBuf,
    /// PRNG seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// Shortest and longest long side of a generated image, in pixels.
const LONG_SIDE: (u32, u32) = (320, 1024);
/// JPEG quality range.
const QUALITY: (u8, u8) = (70, 95);

fn photos_dir(arg: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p);
    }
    match std::env::var_os("WEIR_DATA") {
        Some(d) => Ok(PathBuf::from(d).join("photos")),
        None => bail!(
            "WEIR_DATA is not set: run scripts/setup-models.sh and `source .weir/env.sh`, or pass --photos"
        ),
    }
}

fn list_photos(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "jpg" | "jpeg" | "png"))
        })
        .collect();
    v.sort();
    if v.is_empty() {
        bail!("no JPEG or PNG photos in {}", dir.display());
    }
    Ok(v)
}

/// Loads a photo as 8-bit RGB, or 8-bit grayscale when it has no colour.
fn load(path: &Path) -> Result<DynamicImage> {
    let img = image::open(path).with_context(|| format!("decoding {}", path.display()))?;
    Ok(if img.color().has_color() {
        DynamicImage::ImageRgb8(img.to_rgb8())
    } else {
        DynamicImage::ImageLuma8(img.to_luma8())
    })
}

/// Makes image `i` from `photo` with its own PRNG stream.
fn make(photo: &DynamicImage, seed: u64, i: usize, out: &Path) -> Result<(u32, u32, u8)> {
    let mut rng = SplitMix64::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let (w, h) = photo.dimensions();
    let frac = |rng: &mut SplitMix64| 0.45 + 0.55 * rng.unit_f64();
    let cw = ((w as f64 * frac(&mut rng)) as u32).clamp(1, w);
    let ch = ((h as f64 * frac(&mut rng)) as u32).clamp(1, h);
    let x = rng.below(u64::from(w - cw) + 1) as u32;
    let y = rng.below(u64::from(h - ch) + 1) as u32;
    let long = LONG_SIDE.0 + rng.below(u64::from(LONG_SIDE.1 - LONG_SIDE.0) + 1) as u32;
    let quality = QUALITY.0 + rng.below(u64::from(QUALITY.1 - QUALITY.0) + 1) as u8;
    let (tw, th) = if cw >= ch {
        (
            long,
            ((ch as f64 * long as f64 / cw as f64).round() as u32).max(1),
        )
    } else {
        (
            ((cw as f64 * long as f64 / ch as f64).round() as u32).max(1),
            long,
        )
    };
    let img = photo
        .crop_imm(x, y, cw, ch)
        .resize_exact(tw, th, FilterType::Lanczos3);
    let file = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let enc = JpegEncoder::new_with_quality(BufWriter::new(file), quality);
    img.write_with_encoder(enc)
        .with_context(|| format!("encoding {}", out.display()))?;
    Ok((tw, th, quality))
}

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = photos_dir(args.photos)?;
    let stamp = args
        .out
        .join(format!(".generated-{}-{}", args.count, args.seed));
    if stamp.is_file() {
        eprintln!(
            "gen-images: {} already holds {} images (seed {}); nothing to do",
            args.out.display(),
            args.count,
            args.seed
        );
        return Ok(());
    }
    let start = Instant::now();
    let paths = list_photos(&dir)?;
    let photos: Vec<DynamicImage> = paths.par_iter().map(|p| load(p)).collect::<Result<_>>()?;
    // A previous run with other arguments: start from an empty folder.
    if args.out.exists() {
        fs::remove_dir_all(&args.out)
            .with_context(|| format!("clearing {}", args.out.display()))?;
    }
    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let made: Vec<(u32, u32, u8)> = (0..args.count)
        .into_par_iter()
        .map(|i| {
            let out = args.out.join(format!("img_{i:05}.jpg"));
            make(&photos[i % photos.len()], args.seed, i, &out)
        })
        .collect::<Result<_>>()?;
    let bytes: u64 = fs::read_dir(&args.out)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    let pixels: u64 = made
        .iter()
        .map(|(w, h, _)| u64::from(*w) * u64::from(*h))
        .sum();
    fs::write(
        &stamp,
        format!("{} images from {}\n", args.count, dir.display()),
    )?;
    eprintln!(
        "gen-images: wrote {} JPEGs from {} photos to {} ({:.1} MiB, {:.2} Mpixel on average) in {:.1} s",
        args.count,
        photos.len(),
        args.out.display(),
        bytes as f64 / (1 << 20) as f64,
        pixels as f64 / made.len().max(1) as f64 / 1e6,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
