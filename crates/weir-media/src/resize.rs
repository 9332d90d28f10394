//! `resize`: scales decoded images with fast_image_resize (SIMD convolution), either so the shorter
//! side has a given length (aspect kept) or to a given width and/or height.

use crate::common::{
    DecodedColumn, ImageBuf, ImageView, MadeImages, check_decoded_image, column_index,
    decoded_image_field, images_into_buffer, schema_with,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rayon::prelude::*;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::multimodal::ImageMode;
use weir_types::{Error, Result};

fn default_image() -> String {
    "image".into()
}
fn default_filter() -> String {
    "bilinear".into()
}

/// Options of a `resize` operator. Exactly one of `shorter_side` or (`width` and/or `height`) is
/// set; with only one of `width`/`height` the other follows the aspect ratio.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeSpec {
    /// The decoded `weir.image` column, resized in place. Default `image`.
    #[serde(default = "default_image")]
    pub column: String,
    /// Scale so the shorter side has this many pixels, keeping the aspect ratio. Default none.
    #[serde(default)]
    pub shorter_side: Option<u32>,
    /// Target width in pixels. Default none.
    #[serde(default)]
    pub width: Option<u32>,
    /// Target height in pixels. Default none.
    #[serde(default)]
    pub height: Option<u32>,
    /// Resampling filter: `bilinear`, `lanczos3`, `nearest` (also `box`, `hamming`,
    /// `catmullrom`, `mitchell`). Default `bilinear`.
    #[serde(default = "default_filter")]
    pub filter: String,
}

/// How output sizes are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Shorter side to this length, aspect kept.
    ShorterSide(u32),
    /// Fixed width and height.
    Exact(u32, u32),
    /// Fixed width, height by aspect.
    Width(u32),
    /// Fixed height, width by aspect.
    Height(u32),
}

impl Target {
    /// The output `(width, height)` for an input of `(w, h)`.
    pub fn size(self, w: u32, h: u32) -> (u32, u32) {
        let scale = |len: u32, num: u32, den: u32| -> u32 {
            ((len as u64 * num as u64 + den as u64 / 2) / den.max(1) as u64).max(1) as u32
        };
        match self {
            Target::Exact(tw, th) => (tw, th),
            Target::Width(tw) => (tw, scale(h, tw, w)),
            Target::Height(th) => (scale(w, th, h), th),
            Target::ShorterSide(s) => {
                if w <= h {
                    (s, scale(h, s, w))
                } else {
                    (scale(w, s, h), s)
                }
            }
        }
    }
}

/// Parses a filter name.
pub fn parse_filter(name: &str) -> Result<ResizeAlg> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "nearest" => ResizeAlg::Nearest,
        "bilinear" | "linear" | "triangle" => ResizeAlg::Convolution(FilterType::Bilinear),
        "lanczos3" | "lanczos" => ResizeAlg::Convolution(FilterType::Lanczos3),
        "box" => ResizeAlg::Convolution(FilterType::Box),
        "hamming" => ResizeAlg::Convolution(FilterType::Hamming),
        "catmullrom" | "bicubic" => ResizeAlg::Convolution(FilterType::CatmullRom),
        "mitchell" => ResizeAlg::Convolution(FilterType::Mitchell),
        other => {
            return Err(Error::config(format!(
                "resize: filter '{other}' is not one of bilinear, lanczos3, nearest, box, hamming, catmullrom, mitchell"
            )));
        }
    })
}

impl ResizeSpec {
    pub(crate) fn target(&self) -> Result<Target> {
        let t = match (self.shorter_side, self.width, self.height) {
            (Some(s), None, None) => Target::ShorterSide(s),
            (None, Some(w), Some(h)) => Target::Exact(w, h),
            (None, Some(w), None) => Target::Width(w),
            (None, None, Some(h)) => Target::Height(h),
            (None, None, None) => {
                return Err(Error::config(
                    "resize: set shorter_side, or width and/or height",
                ));
            }
            _ => {
                return Err(Error::config(
                    "resize: set either shorter_side or width/height, not both",
                ));
            }
        };
        let zero = match t {
            Target::ShorterSide(v) | Target::Width(v) | Target::Height(v) => v == 0,
            Target::Exact(w, h) => w == 0 || h == 0,
        };
        if zero {
            return Err(Error::config("resize: sizes must be at least 1 pixel"));
        }
        Ok(t)
    }

    /// Plan time: checks the column is a decoded image and returns the output schema.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        self.target()?;
        parse_filter(&self.filter)?;
        let i = column_index(input, &self.column, "resize")?;
        let md = check_decoded_image(input.field(i), "resize")?;
        let mode = md.mode.as_deref().and_then(ImageMode::parse);
        let size = match self.target()? {
            Target::Exact(w, h) => Some((h, w)),
            _ => None,
        };
        Ok(schema_with(
            input,
            decoded_image_field(&self.column, mode, size),
        ))
    }

    /// The target and filter, checked.
    pub fn plan(&self) -> Result<(Target, ResizeAlg)> {
        Ok((self.target()?, parse_filter(&self.filter)?))
    }

    /// Builds one running instance for that input schema.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(Resize {
            schema: self.output_schema(input)?,
            column: self.column.clone(),
            target: self.target()?,
            alg: parse_filter(&self.filter)?,
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        let to = match self.target() {
            Ok(Target::ShorterSide(s)) => format!("shorter side {s}"),
            Ok(Target::Exact(w, h)) => format!("{w}x{h}"),
            Ok(Target::Width(w)) => format!("width {w}"),
            Ok(Target::Height(h)) => format!("height {h}"),
            Err(_) => "(invalid size)".into(),
        };
        format!("resize {} to {to} ({})", self.column, self.filter)
    }
}

impl kind::Spec for ResizeSpec {
    fn describe(&self) -> String {
        ResizeSpec::describe(self)
    }
}

impl kind::OperatorSpec for ResizeSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        ResizeSpec::output_schema(self, kind::first_input(inputs)?)
    }

    /// Changes its image column in place; the rest passes through.
    fn input_need(&self, _: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        Ok(vec![out.through([], [self.column.as_str()])])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        ResizeSpec::create(self, ctx.input()?)
    }
}

/// A running `resize`.
#[derive(Debug)]
pub struct Resize {
    schema: SchemaRef,
    column: String,
    target: Target,
    alg: ResizeAlg,
}

fn pixel_type(mode: ImageMode) -> PixelType {
    match mode {
        ImageMode::L => PixelType::U8,
        ImageMode::Rgb => PixelType::U8x3,
        ImageMode::Rgba => PixelType::U8x4,
    }
}

/// Resizes one image to `(width, height)` with `alg`, reusing `resizer`'s buffers.
pub(crate) fn resize_view(
    resizer: &mut Resizer,
    src: ImageView<'_>,
    width: u32,
    height: u32,
    alg: ResizeAlg,
) -> Result<ImageBuf> {
    if src.width == width && src.height == height {
        return Ok(ImageBuf {
            pixels: src.pixels.to_vec(),
            mode: src.mode,
            height,
            width,
        });
    }
    let pt = pixel_type(src.mode);
    let from = ImageRef::new(src.width, src.height, src.pixels, pt)
        .map_err(|e| Error::input(format!("image buffer does not fit its size: {e}")))?;
    let mut to = Image::new(width, height, pt);
    resizer
        .resize(&from, &mut to, &ResizeOptions::new().resize_alg(alg))
        .map_err(|e| Error::input(format!("resizing failed: {e}")))?;
    Ok(ImageBuf {
        pixels: to.into_vec(),
        mode: src.mode,
        height,
        width,
    })
}

/// Resizes `src` to its `target` size straight into `out` (exactly the output's size).
pub(crate) fn resize_into(
    resizer: &mut Resizer,
    src: ImageView<'_>,
    target: Target,
    alg: ResizeAlg,
    out: &mut [u8],
) -> Result<()> {
    let (width, height) = target.size(src.width, src.height);
    if src.width == width && src.height == height {
        if out.len() != src.pixels.len() {
            return Err(Error::internal("resize: output slice of the wrong size"));
        }
        out.copy_from_slice(src.pixels);
        return Ok(());
    }
    let pt = pixel_type(src.mode);
    let from = ImageRef::new(src.width, src.height, src.pixels, pt)
        .map_err(|e| Error::input(format!("image buffer does not fit its size: {e}")))?;
    let mut to = Image::from_slice_u8(width, height, out, pt)
        .map_err(|e| Error::internal(format!("resize: output slice does not fit: {e}")))?;
    resizer
        .resize(&from, &mut to, &ResizeOptions::new().resize_alg(alg))
        .map_err(|e| Error::input(format!("resizing failed: {e}")))
}

/// Resizes one decoded image (a helper for callers outside a pipeline, e.g. benchmarks).
pub fn resize_image(img: &ImageBuf, target: Target, filter: &str) -> Result<ImageBuf> {
    let alg = parse_filter(filter)?;
    let (w, h) = target.size(img.width, img.height);
    resize_view(&mut Resizer::new(), img.view(), w, h, alg)
}

#[async_trait]
impl Operator for Resize {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let column = weir_types::planned_column(&batch, &self.column, "resize")?;
        let (name, target, alg) = (self.column.clone(), self.target, self.alg);
        let made = ctx
            .spawn_cpu(move || -> Result<MadeImages> {
                let images = DecodedColumn::new(&column, &name)?;
                let planned = images_into_buffer(
                    images.len(),
                    |row| {
                        let src = images.get(row).ok()?;
                        let (w, h) = target.size(src.width, src.height);
                        Some((w, h, src.mode))
                    },
                    Resizer::new,
                    |resizer, row, out| {
                        images
                            .get(row)
                            .is_ok_and(|src| resize_into(resizer, src, target, alg, out).is_ok())
                    },
                );
                if let Some(made) = planned {
                    let (col, lengths) = made?;
                    return Ok(MadeImages::Contiguous(col, lengths));
                }
                Ok(MadeImages::each(
                    (0..images.len())
                        .into_par_iter()
                        .map_init(Resizer::new, |resizer, row| {
                            let src = images.get(row)?;
                            let (w, h) = target.size(src.width, src.height);
                            resize_view(resizer, src, w, h, alg)
                        })
                        .collect(),
                ))
            })
            .await??;
        made.emit(&batch, &self.schema, &self.column, None, ctx, out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sizes_follow_the_target() {
        assert_eq!(Target::ShorterSide(256).size(640, 480), (341, 256));
        assert_eq!(Target::ShorterSide(256).size(480, 640), (256, 341));
        assert_eq!(Target::Exact(10, 20).size(640, 480), (10, 20));
        assert_eq!(Target::Width(320).size(640, 480), (320, 240));
        assert_eq!(Target::Height(240).size(640, 480), (320, 240));
        assert_eq!(Target::ShorterSide(1).size(10000, 1), (10000, 1));
    }

    #[test]
    fn resizes_a_gradient() {
        let img = ImageBuf {
            pixels: (0..16u8).flat_map(|v| [v * 16, v * 16, v * 16]).collect(),
            mode: ImageMode::Rgb,
            height: 4,
            width: 4,
        };
        let out = resize_image(&img, Target::Exact(2, 2), "bilinear").unwrap();
        assert_eq!((out.width, out.height, out.pixels.len()), (2, 2, 12));
        // top-left is darker than bottom-right
        assert!(out.pixels[0] < out.pixels[9]);
        assert!(resize_image(&img, Target::Exact(2, 2), "sharpest").is_err());
    }

    #[test]
    fn spec_checks() {
        let s: ResizeSpec = serde_json::from_str(r#"{"shorter_side": 256, "width": 3}"#).unwrap();
        assert!(s.target().is_err());
        let s: ResizeSpec = serde_json::from_str(r#"{}"#).unwrap();
        assert!(s.target().is_err());
        assert!(serde_json::from_str::<ResizeSpec>(r#"{"size": 3}"#).is_err());
    }
}
