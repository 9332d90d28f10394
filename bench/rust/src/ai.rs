//! Shared parts of the hand-written AI baselines (`images-loop`, `text-loop`): loading ONNX
//! Runtime from `ORT_DYLIB_PATH`, open-nsfw's preprocessing, MiniLM's tokenization and pooling,
//! a two-stage pipeline (prepare batches on one thread while the model runs on another) and
//! writing the results as Parquet.
//!
//! Everything here uses the crates weir's operators use (zune-jpeg, image, fast_image_resize, ort,
//! tokenizers), with the same settings, so the loops compute the same numbers as weir.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::sync_channel;

use anyhow::{Context, Result, anyhow, bail};
use arrow::array::{ArrayRef, RecordBatch};
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use ort::environment::Environment;
use ort::session::Session;
use parquet::arrow::ArrowWriter;
use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

/// open-nsfw's input side (pixels).
pub const CROP: u32 = 224;
/// The shorter side images are resized to before the centre crop.
pub const SHORTER_SIDE: u32 = 256;
/// open-nsfw's per-channel mean, in the model's channel order (B, G, R).
pub const MEAN_BGR: [f32; 3] = [104.0, 117.0, 123.0];
/// Values per preprocessed image (`224 × 224 × 3`, NHWC).
pub const IMAGE_LEN: usize = (CROP * CROP * 3) as usize;

/// The ONNX Runtime environment, loaded from the library `ORT_DYLIB_PATH` names.
pub fn ort_environment() -> Result<Environment> {
    let path = std::env::var_os("ORT_DYLIB_PATH").ok_or_else(|| {
        anyhow!("ORT_DYLIB_PATH is not set: run scripts/setup-models.sh and `source .weir/env.sh`")
    })?;
    ort::init_from(&path)
        .map_err(|e| anyhow!("cannot load onnx runtime from {path:?}: {e}"))?
        .with_name("weir-bench")
        .build()
        .map_err(|e| anyhow!("cannot create the onnx runtime environment: {e}"))
}

/// A session on `model` with `threads` intra-op threads and every other option at its default
/// (what weir's `infer` does with `cpus: threads`).
pub fn open_session(
    env: &Environment,
    model: &Path,
    threads: usize,
    spin: bool,
) -> Result<Session> {
    let err = |what: &str, e: &dyn std::fmt::Display| anyhow!("{what} ({}): {e}", model.display());
    Session::builder(env)
        .map_err(|e| err("session builder", &e))?
        .with_intra_threads(threads.max(1))
        .map_err(|e| err("intra-op threads", &e))?
        .with_intra_op_spinning(spin)
        .map_err(|e| err("intra-op spinning", &e))?
        .commit_from_file(model)
        .map_err(|e| err("loading the model", &e))
}

/// Decodes an image file to 8-bit RGB: JPEG with zune-jpeg (the options weir's `decode_image`
/// uses), anything else with the `image` crate. Returns `(width, height, pixels)`.
pub fn decode_rgb(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>)> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        let options = DecoderOptions::default()
            .set_max_width(u16::MAX as usize)
            .set_max_height(u16::MAX as usize)
            .set_strict_mode(true)
            .jpeg_set_out_colorspace(ColorSpace::RGB);
        let mut dec = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
        let pixels = dec.decode().map_err(|e| anyhow!("jpeg: {e}"))?;
        let (w, h) = dec
            .dimensions()
            .ok_or_else(|| anyhow!("jpeg without dimensions"))?;
        // a grayscale file may come out as one channel: replicate it, as weir's decoder does
        let pixels = if pixels.len() == w * h {
            pixels.iter().flat_map(|v| [*v, *v, *v]).collect()
        } else {
            pixels
        };
        if pixels.len() != w * h * 3 {
            bail!("jpeg decoded to {} bytes for {w}x{h} RGB", pixels.len());
        }
        return Ok((w as u32, h as u32, pixels));
    }
    let img = image::load_from_memory(bytes)?.to_rgb8();
    Ok((img.width(), img.height(), img.into_raw()))
}

/// The size an image of `w × h` is resized to so its shorter side is `side` (weir's rounding).
pub fn shorter_side_size(w: u32, h: u32, side: u32) -> (u32, u32) {
    let scale = |len: u32, num: u32, den: u32| -> u32 {
        ((u64::from(len) * u64::from(num) + u64::from(den) / 2) / u64::from(den.max(1))).max(1)
            as u32
    };
    if w <= h {
        (side, scale(h, side, w))
    } else {
        (scale(w, side, h), side)
    }
}

/// open-nsfw's preprocessing of one RGB image into `out` (`IMAGE_LEN` values): bilinear resize of
/// the shorter side to 256 (fast_image_resize convolution), centre crop 224 (offsets rounded
/// down), channels to B, G, R, minus the mean, NHWC float32.
pub fn preprocess_nsfw(
    resizer: &mut Resizer,
    w: u32,
    h: u32,
    rgb: &[u8],
    out: &mut [f32],
) -> Result<()> {
    let (tw, th) = shorter_side_size(w, h, SHORTER_SIDE);
    let src = ImageRef::new(w, h, rgb, PixelType::U8x3)?;
    let mut dst = Image::new(tw, th, PixelType::U8x3);
    resizer.resize(
        &src,
        &mut dst,
        &ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)),
    )?;
    let pixels = dst.buffer();
    let (left, top) = (((tw - CROP) / 2) as usize, ((th - CROP) / 2) as usize);
    let (crop, stride) = (CROP as usize, tw as usize * 3);
    for y in 0..crop {
        let row = &pixels[(top + y) * stride + left * 3..][..crop * 3];
        let dst_row = &mut out[y * crop * 3..][..crop * 3];
        for (o, p) in dst_row.chunks_exact_mut(3).zip(row.chunks_exact(3)) {
            o[0] = f32::from(p[2]) - MEAN_BGR[0];
            o[1] = f32::from(p[1]) - MEAN_BGR[1];
            o[2] = f32::from(p[0]) - MEAN_BGR[2];
        }
    }
    Ok(())
}

/// MiniLM's tokenizer from `tokenizer.json` with the file's fixed padding to 128 turned off and
/// truncation at `max_length` (what weir's `tokenize` sets: longest-first, stride 0).
pub fn minilm_tokenizer(path: &Path, max_length: usize) -> Result<tokenizers::Tokenizer> {
    let mut tok = tokenizers::Tokenizer::from_file(path)
        .map_err(|e| anyhow!("loading {}: {e}", path.display()))?;
    tok.with_padding(None);
    tok.with_truncation(Some(tokenizers::TruncationParams {
        max_length,
        ..Default::default()
    }))
    .map_err(|e| anyhow!("truncation: {e}"))?;
    Ok(tok)
}

/// Masked mean over the `s` rows of `hidden` (`[s, d]`), then L2-normalised, appended to `out`.
pub fn pool_normalize(hidden: &[f32], mask: &[i64], d: usize, out: &mut Vec<f32>) {
    let start = out.len();
    out.resize(start + d, 0.0);
    let acc = &mut out[start..];
    let mut n = 0f32;
    for (row, m) in hidden.chunks_exact(d).zip(mask) {
        if *m != 0 {
            n += 1.0;
            for (a, v) in acc.iter_mut().zip(row) {
                *a += *v;
            }
        }
    }
    let n = n.max(1.0);
    for a in acc.iter_mut() {
        *a /= n;
    }
    let norm = acc.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for a in acc.iter_mut() {
            *a /= norm;
        }
    }
}

/// Runs `prepare` over `jobs` on a helper thread, at most `depth` prepared items ahead, and
/// `consume` over the prepared items in order on the calling thread: the next batch is decoded
/// (or tokenized) while the model runs on the current one.
pub fn pipelined<J, T, P, C>(jobs: Vec<J>, depth: usize, prepare: P, mut consume: C) -> Result<()>
where
    J: Send,
    T: Send,
    P: Fn(J) -> Result<T> + Send,
    C: FnMut(T) -> Result<()>,
{
    std::thread::scope(|s| {
        let (tx, rx) = sync_channel::<Result<T>>(depth.max(1));
        let producer = s.spawn(move || {
            for job in jobs {
                let item = prepare(job);
                let failed = item.is_err();
                if tx.send(item).is_err() || failed {
                    break;
                }
            }
        });
        for item in rx {
            consume(item?)?;
        }
        producer
            .join()
            .map_err(|_| anyhow!("the preparing thread panicked"))
    })
}

/// Writes `columns` as one Parquet file at `path` (snappy, parquet-rs defaults otherwise).
pub fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let batch = RecordBatch::try_from_iter(columns)?;
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w = ArrowWriter::try_new(file, batch.schema(), Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(())
}

/// A list of `f32` vectors of dimension `d` as a `FixedSizeList<Float32>` column.
pub fn vectors(values: Vec<f32>, d: usize) -> Result<ArrayRef> {
    let item = Arc::new(arrow::datatypes::Field::new_list_field(
        arrow::datatypes::DataType::Float32,
        false,
    ));
    let values = arrow::array::Float32Array::from(values);
    Ok(Arc::new(arrow::array::FixedSizeListArray::try_new(
        item,
        i32::try_from(d)?,
        Arc::new(values),
        None,
    )?))
}
