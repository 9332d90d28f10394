//! `decode_image`: turns encoded image files (JPEG, PNG, WebP) into decoded `weir.image` pixels.
//!
//! JPEG goes through zune-jpeg directly (with the EXIF orientation applied); PNG and WebP go
//! through the `image` crate. The pixel count is read from the header and checked against
//! `max_pixels` before anything is decoded (a decompression-bomb limit). Rows that cannot be
//! decoded are bad rows.
//!
//! Memory: before decoding, every row's decoded size (width × height × channels of `mode`) is
//! predicted from its header ([`predicted_size`]), and the batch is cut into groups of consecutive
//! rows whose predicted sizes add up to at most `max_batch_bytes` (a single larger image gets a
//! group of its own). Groups are decoded one after the other (the rows of a group in parallel, in
//! one `spawn_cpu` call) and each becomes one output batch, so no output batch carries more than
//! `max_batch_bytes` of pixels.

use crate::center_crop::{crop_into, crop_view};
use crate::common::{
    BytesColumn, ImageBuf, ImageView, MadeImages, Unmade, check_bytes_field, column_index,
    decoded_image_array_from_buffer, decoded_image_field, parse_size, preview, row_slices,
    schema_with,
};
use crate::resize::{Target, resize_into, resize_view};
use crate::to_tensor::{TensorPlan, TensorRow, TensorValues, build_tensor, check_row};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use fast_image_resize::{ResizeAlg, Resizer};
use rayon::prelude::*;
use std::io::Cursor;
use std::sync::Arc;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::multimodal::ImageMode;
use weir_types::{Error, Result};
use zune_jpeg::JpegDecoder;
use zune_jpeg::zune_core::bytestream::ZCursor;
use zune_jpeg::zune_core::colorspace::ColorSpace;
use zune_jpeg::zune_core::options::DecoderOptions;

fn default_bytes() -> String {
    "bytes".into()
}
fn default_image() -> String {
    "image".into()
}
fn default_max_pixels() -> u64 {
    50_000_000
}
fn default_mode() -> String {
    "RGB".into()
}
fn default_max_batch_bytes() -> String {
    "64MiB".into()
}

/// Options of a `decode_image` operator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeImageSpec {
    /// The input column: Binary (or LargeBinary, BinaryView, or an encoded `weir.image`) holding
    /// whole image files. Default `bytes`.
    #[serde(default = "default_bytes")]
    pub column: String,
    /// The output column (a decoded `weir.image`); replaces a column of that name, else is
    /// appended. Default `image`.
    #[serde(default = "default_image")]
    pub output: String,
    /// Largest accepted width × height, read from the header before decoding; larger images are
    /// bad rows. Default 50 000 000.
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Output mode: `RGB`, `RGBA` or `L` (grayscale). Default `RGB`.
    #[serde(default = "default_mode")]
    pub mode: String,
    /// Most bytes of decoded pixels in one output batch, predicted from the image headers before
    /// decoding; larger input batches are split (an image larger than this on its own gets a batch
    /// of its own). Default `64MiB`.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: String,
}

/// Options of a `decode_image_fused` operator: a `decode_image` that also does the `resize`,
/// `center_crop` and `to_tensor` steps after it, image by image, while the pixels are still in
/// the decoding thread's cache (full-size pixels never leave it). The planner's fusion rewrite
/// replaces such a chain of nodes with one node of this kind; its outputs equal, byte for byte,
/// those of the steps apart. A fused `to_tensor` keeps the image column as the unfused one does.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FusedDecodeSpec {
    /// The `decode_image` step's options.
    pub decode: DecodeImageSpec,
    /// A `resize` of the decoded column, done first. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<crate::resize::ResizeSpec>,
    /// A `center_crop` of the decoded column, after the resize. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<crate::center_crop::CenterCropSpec>,
    /// A `to_tensor` of the decoded column, after the resize and crop; needs the fixed size the
    /// crop (or an exact resize) gives. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor: Option<crate::to_tensor::ToTensorSpec>,
}

impl Default for DecodeImageSpec {
    fn default() -> Self {
        DecodeImageSpec {
            column: default_bytes(),
            output: default_image(),
            max_pixels: default_max_pixels(),
            mode: default_mode(),
            max_batch_bytes: default_max_batch_bytes(),
        }
    }
}

impl DecodeImageSpec {
    fn image_mode(&self) -> Result<ImageMode> {
        ImageMode::parse(&self.mode).ok_or_else(|| {
            Error::config(format!(
                "decode_image: mode '{}' is not one of RGB, RGBA, L",
                self.mode
            ))
        })
    }

    fn batch_budget(&self) -> Result<u64> {
        let b = parse_size(&self.max_batch_bytes, "decode_image: max_batch_bytes")?;
        if b == 0 {
            return Err(Error::config(
                "decode_image: max_batch_bytes must be at least 1 byte",
            ));
        }
        Ok(b)
    }

    /// Plan time: checks the input column holds bytes and returns the output schema.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        FusedDecodeSpec::from(self.clone()).output_schema(input)
    }

    /// Builds one running instance for that input schema.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        FusedDecodeSpec::from(self.clone()).create(input)
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        FusedDecodeSpec::from(self.clone()).describe()
    }
}

impl From<DecodeImageSpec> for FusedDecodeSpec {
    /// The decoder with nothing fused into it yet.
    fn from(decode: DecodeImageSpec) -> Self {
        FusedDecodeSpec {
            decode,
            resize: None,
            crop: None,
            tensor: None,
        }
    }
}

impl FusedDecodeSpec {
    /// Whether nothing is fused into the decoder.
    pub fn is_plain(&self) -> bool {
        self.resize.is_none() && self.crop.is_none() && self.tensor.is_none()
    }

    /// Plan time: checks the input column holds bytes and returns the output schema.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let mode = self.decode.image_mode()?;
        self.decode.batch_budget()?;
        if self.decode.max_pixels == 0 {
            return Err(Error::config("decode_image: max_pixels must be at least 1"));
        }
        let i = column_index(input, &self.decode.column, "decode_image")?;
        check_bytes_field(input.field(i), "decode_image")?;
        let decoded = schema_with(
            input,
            decoded_image_field(&self.decode.output, Some(mode), None),
        );
        let resized = match &self.resize {
            Some(r) => r.output_schema(&decoded)?,
            None => decoded,
        };
        let cropped = match &self.crop {
            Some(c) => c.output_schema(&resized)?,
            None => resized,
        };
        match &self.tensor {
            Some(t) => t.output_schema(&cropped),
            None => Ok(cropped),
        }
    }

    /// The output schema without a fused `to_tensor`: what the images are, for its plan.
    fn image_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        FusedDecodeSpec {
            tensor: None,
            ..self.clone()
        }
        .output_schema(input)
    }

    /// Whether `resize` can be fused into this step: it resizes this step's output column in
    /// place, and nothing is fused yet.
    pub fn can_fuse_resize(&self, resize: &crate::resize::ResizeSpec) -> bool {
        self.resize.is_none() && self.crop.is_none() && resize.column == self.decode.output
    }

    /// Whether `crop` can be fused into this step (after its fused resize, if any): it crops
    /// this step's output column in place.
    pub fn can_fuse_crop(&self, crop: &crate::center_crop::CenterCropSpec) -> bool {
        self.crop.is_none() && self.tensor.is_none() && crop.column == self.decode.output
    }

    /// Whether `tensor` can be fused into this step (after its fused resize and crop): it reads
    /// this step's output column, writes another column, and its plan works for the fixed size
    /// the fused crop (or exact resize) gives every image, so fusing never moves an error from
    /// the `to_tensor` step to this one.
    pub fn can_fuse_tensor(&self, tensor: &crate::to_tensor::ToTensorSpec) -> bool {
        let size = match (&self.crop, &self.resize) {
            (Some(c), _) => Some((c.width, c.height)),
            (None, Some(r)) => match r.target() {
                Ok(Target::Exact(w, h)) => Some((w, h)),
                _ => None,
            },
            (None, None) => None,
        };
        let Some((w, h)) = size else {
            return false;
        };
        self.tensor.is_none()
            && tensor.column == self.decode.output
            && tensor.output != self.decode.output
            && tensor.output != self.decode.column
            && self
                .decode
                .image_mode()
                .and_then(|mode| tensor.plan(h, w, mode))
                .is_ok()
    }

    /// Builds one running instance for that input schema.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let schema = self.output_schema(input)?;
        Ok(Box::new(DecodeImage {
            column: self.decode.column.clone(),
            output: self.decode.output.clone(),
            max_pixels: self.decode.max_pixels,
            mode: self.decode.image_mode()?,
            max_batch_bytes: self.decode.batch_budget()?,
            resize: self
                .resize
                .as_ref()
                .map(crate::resize::ResizeSpec::plan)
                .transpose()?,
            crop: self.crop.as_ref().map(|c| (c.width, c.height)),
            tensor: match &self.tensor {
                Some(t) => Some((
                    t.output.clone(),
                    Arc::new(t.plan_for(&self.image_schema(input)?)?),
                )),
                None => None,
            },
            schema,
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        let mut fused = String::new();
        if let Some(r) = &self.resize {
            fused.push_str(&format!(", then {} (fused)", r.describe()));
        }
        if let Some(c) = &self.crop {
            fused.push_str(&format!(", then {} (fused)", c.describe()));
        }
        if let Some(t) = &self.tensor {
            fused.push_str(&format!(", then {} (fused)", t.describe()));
        }
        format!(
            "decode_image {} -> {} ({}, max {} pixels, output batches up to {}){fused}",
            self.decode.column,
            self.decode.output,
            self.decode.mode,
            self.decode.max_pixels,
            self.decode.max_batch_bytes
        )
    }
}

impl kind::Spec for DecodeImageSpec {
    fn describe(&self) -> String {
        DecodeImageSpec::describe(self)
    }
}

impl kind::OperatorSpec for DecodeImageSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        DecodeImageSpec::output_schema(self, kind::first_input(inputs)?)
    }

    /// Reads the encoded column, adds (or replaces) the decoded one, passes the rest through.
    fn input_need(&self, _: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        Ok(vec![
            out.through([self.output.as_str()], [self.column.as_str()]),
        ])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        DecodeImageSpec::create(self, ctx.input()?)
    }
}

impl kind::Spec for FusedDecodeSpec {
    fn describe(&self) -> String {
        FusedDecodeSpec::describe(self)
    }
}

impl kind::OperatorSpec for FusedDecodeSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        FusedDecodeSpec::output_schema(self, kind::first_input(inputs)?)
    }

    /// Reads the encoded column; the image (resized and cropped in place) and the tensor are its
    /// own; the rest passes through.
    fn input_need(&self, _: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        let produced = std::iter::once(self.decode.output.as_str())
            .chain(self.tensor.as_ref().map(|t| t.output.as_str()));
        Ok(vec![out.through(produced, [self.decode.column.as_str()])])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        FusedDecodeSpec::create(self, ctx.input()?)
    }
}

/// A running `decode_image`.
#[derive(Debug)]
pub struct DecodeImage {
    column: String,
    output: String,
    max_pixels: u64,
    mode: ImageMode,
    max_batch_bytes: u64,
    /// A fused `resize`: target and filter.
    resize: Option<(Target, ResizeAlg)>,
    /// A fused `center_crop`: width and height.
    crop: Option<(u32, u32)>,
    /// A fused `to_tensor`: its output column and plan.
    tensor: Option<(String, Arc<TensorPlan>)>,
    schema: SchemaRef,
}

/// Cuts rows with predicted sizes `sizes` into consecutive groups of at most `budget` bytes (a
/// single larger row gets a group of its own).
fn budget_groups(sizes: &[u64], budget: u64) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut acc = 0u64;
    for (i, s) in sizes.iter().enumerate() {
        if i > start && acc.saturating_add(*s) > budget {
            groups.push(start..i);
            start = i;
            acc = 0;
        }
        acc = acc.saturating_add(*s);
    }
    if start < sizes.len() {
        groups.push(start..sizes.len());
    }
    groups
}

#[async_trait]
impl Operator for DecodeImage {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let column = weir_types::planned_column(&batch, &self.column, "decode_image")?;
        let (mode, max_pixels) = (self.mode, self.max_pixels);
        let then = Then {
            resize: self.resize,
            crop: self.crop,
            tensor: self.tensor.as_ref().map(|(_, plan)| plan.clone()),
        };
        // Bytes of a fused tensor's row, counted with the pixels in the batch budget.
        let tensor_bytes = then.tensor.as_ref().map_or(0, |p| p.row_bytes() as u64);
        // Each row's decoded size and dimensions, from its header; with a fused resize, the size
        // is the resized one (what the output holds).
        let (sizes, dims): (Vec<u64>, Vec<Option<(u32, u32)>>) = {
            let bytes = BytesColumn::new(&column)
                .ok_or_else(|| Error::internal("decode_image: input is not a bytes column"))?;
            (0..column.len())
                .map(|row| {
                    let d = bytes.get(row).and_then(header_dims);
                    let out = d.map(|(w, h)| then.size(w, h));
                    let size = out.map_or(0, |(w, h)| {
                        u64::from(w) * u64::from(h) * mode.channels() as u64
                    });
                    (size, d)
                })
                .unzip()
        };
        let budget: Vec<u64> = sizes.iter().map(|s| s + tensor_bytes).collect();
        let tensor_name = self.tensor.as_ref().map(|(name, _)| name.as_str());
        for range in budget_groups(&budget, self.max_batch_bytes) {
            let part = batch.slice(range.start, range.len());
            let col = column.slice(range.start, range.len());
            let predicted: Vec<usize> = sizes[range.clone()].iter().map(|s| *s as usize).collect();
            let dims = dims[range].to_vec();
            let then = then.clone();
            let (made, tensor) = ctx
                .spawn_cpu(move || decode_group(&col, &predicted, &dims, mode, max_pixels, then))
                .await??;
            let extra = tensor_name.zip(tensor.as_ref());
            made.emit(&part, &self.schema, &self.output, extra, ctx, out)?;
        }
        Ok(())
    }
}

/// What a `decode_image` does to each image after decoding it: the steps fused into it.
#[derive(Debug, Clone)]
struct Then {
    resize: Option<(Target, ResizeAlg)>,
    crop: Option<(u32, u32)>,
    tensor: Option<Arc<TensorPlan>>,
}

impl Then {
    /// The output size of an image decoded at `w` × `h`.
    fn size(&self, w: u32, h: u32) -> (u32, u32) {
        let (w, h) = match self.resize {
            Some((t, _)) => t.size(w, h),
            None => (w, h),
        };
        self.crop.unwrap_or((w, h))
    }

    /// Resizes and crops one decoded image as fused, and checks that it fits a fused tensor:
    /// the row-by-row path, where each image is its own buffer.
    fn apply(&self, resizer: &mut Resizer, img: ImageBuf) -> Result<ImageBuf> {
        let img = match self.resize {
            None => img,
            Some((target, alg)) => {
                let (tw, th) = target.size(img.width, img.height);
                resize_view(resizer, img.view(), tw, th, alg)?
            }
        };
        let img = match self.crop {
            None => img,
            Some((cw, ch)) => crop_view(img.view(), cw, ch)?,
        };
        if let Some(plan) = &self.tensor {
            check_row(plan, &img.view())?;
        }
        Ok(img)
    }

    /// Resizes and crops one decoded image as fused, into `out` (exactly the output's size);
    /// `resized` is the thread's scratch buffer for a resize followed by a crop. Returns the
    /// output size, or `None` when the image cannot go this way.
    fn apply_into(
        &self,
        view: ImageView<'_>,
        resizer: &mut Resizer,
        resized: &mut Vec<u8>,
        out: &mut [u8],
    ) -> Option<(u32, u32)> {
        let mode = view.mode;
        let view = match self.resize {
            None => view,
            Some((target, alg)) => {
                let (tw, th) = target.size(view.width, view.height);
                if self.crop.is_none() {
                    resize_into(resizer, view, target, alg, out).ok()?;
                    return Some((tw, th));
                }
                let len = tw as usize * th as usize * mode.channels();
                let scratch = scratch(resized, len);
                resize_into(resizer, view, target, alg, scratch).ok()?;
                ImageView {
                    pixels: scratch,
                    mode,
                    height: th,
                    width: tw,
                }
            }
        };
        let (cw, ch) = self.crop?;
        crop_into(view, cw, ch, out).then_some((cw, ch))
    }
}

/// The first `len` bytes of a thread's scratch buffer, grown (never shrunk) to fit: no copy of
/// old contents and no clearing from image to image (every user overwrites what it takes).
fn scratch(buf: &mut Vec<u8>, len: usize) -> &mut [u8] {
    if buf.len() < len {
        *buf = vec![0; len];
    }
    &mut buf[..len]
}

/// Decodes the rows of `col` in parallel (and resizes, crops and writes the tensor row of each
/// right after, as fused). First tries to decode every row straight into its place in one buffer
/// laid out by the `predicted` output sizes (with a resize, each row is decoded into a scratch
/// buffer of its thread, reused from row to row, and resized into its place); when any row
/// cannot go that way (not a JPEG, a rotation or mode conversion, a corrupt file, a wrong
/// prediction) the group is decoded row by row with [`decode`], which gives every row its own
/// result and error. With a fused `to_tensor`, also returns the tensor column of the rows made.
fn decode_group(
    col: &arrow::array::ArrayRef,
    predicted: &[usize],
    header: &[Option<(u32, u32)>],
    mode: ImageMode,
    max_pixels: u64,
    then: Then,
) -> Result<(MadeImages, Option<arrow::array::ArrayRef>)> {
    let bytes = BytesColumn::new(col)
        .ok_or_else(|| Error::internal("decode_image: input is not a bytes column"))?;
    let total: usize = predicted.iter().sum();
    let fused = then.resize.is_some() || then.crop.is_some();
    if total > 0 && predicted.iter().all(|p| *p > 0) {
        let mut buf = vec![0u8; total];
        let mut tensor = then
            .tensor
            .as_ref()
            .map(|plan| TensorValues::new(plan, predicted.len()));
        let tensor_rows: Vec<Option<TensorRow<'_>>> = match &mut tensor {
            Some(values) => values.rows_mut().into_iter().map(Some).collect(),
            None => predicted.iter().map(|_| None).collect(),
        };
        let dims: Vec<Option<(u32, u32, ImageMode)>> = row_slices(&mut buf, predicted)
            .into_par_iter()
            .zip(tensor_rows)
            .enumerate()
            .map_init(
                || (Vec::new(), Vec::new(), Resizer::new()),
                |(decoded, resized, resizer), (row, (out, tensor_row))| {
                    let (w, h) = if fused {
                        let (hw, hh) = (*header.get(row)?)?;
                        let len = hw as usize * hh as usize * mode.channels();
                        let full = scratch(decoded, len);
                        let (w, h) = decode_jpeg_into(bytes.get(row)?, mode, max_pixels, full)?;
                        let view = ImageView {
                            pixels: full,
                            mode,
                            height: h,
                            width: w,
                        };
                        then.apply_into(view, resizer, resized, out)?
                    } else {
                        decode_jpeg_into(bytes.get(row)?, mode, max_pixels, out)?
                    };
                    if let (Some(plan), Some(tensor_row)) = (&then.tensor, tensor_row) {
                        if !plan.fits(w, h, mode) {
                            return None;
                        }
                        plan.write_row(out, tensor_row);
                    }
                    Some((w, h, mode))
                },
            )
            .collect();
        if let Some(dims) = dims.into_iter().collect::<Option<Vec<_>>>() {
            let column = decoded_image_array_from_buffer(buf, predicted, &dims)?;
            // Each row's payload: its pixels and its tensor row.
            let tensor_bytes = then.tensor.as_ref().map_or(0, |p| p.row_bytes());
            let payload = predicted.iter().map(|p| p + tensor_bytes).collect();
            let tensor = tensor.map(TensorValues::into_array).transpose()?;
            return Ok((MadeImages::Contiguous(column, payload), tensor));
        }
    }
    let rows: Vec<std::result::Result<ImageBuf, Unmade>> = (0..col.len())
        .into_par_iter()
        .map_init(Resizer::new, |resizer, row| match bytes.get(row) {
            None => Err((Error::input("image bytes are null"), None)),
            Some(b) => decode(b, mode, max_pixels)
                .and_then(|img| then.apply(resizer, img))
                .map_err(|e| (e, Some(preview(b)))),
        })
        .collect();
    let tensor = match &then.tensor {
        None => None,
        Some(plan) => {
            let views: Vec<ImageView<'_>> = rows
                .iter()
                .filter_map(|r| r.as_ref().ok().map(ImageBuf::view))
                .collect();
            Some(build_tensor(plan, &views)?)
        }
    };
    Ok((MadeImages::Each(rows), tensor))
}

/// Decodes a JPEG straight into `out` when it needs nothing afterwards: RGB or L output, no EXIF
/// rotation, and exactly `out.len()` bytes of pixels. Returns the (width, height), or `None` when
/// this path does not apply or the decode fails (the caller then decodes the row with [`decode`],
/// which reports the error).
fn decode_jpeg_into(
    bytes: &[u8],
    mode: ImageMode,
    max_pixels: u64,
    out: &mut [u8],
) -> Option<(u32, u32)> {
    if sniff_format(bytes) != Some(ImageFormat::Jpeg) {
        return None;
    }
    let want = match mode {
        ImageMode::Rgb => ColorSpace::RGB,
        ImageMode::L => ColorSpace::Luma,
        ImageMode::Rgba => return None,
    };
    let mut dec = jpeg_decoder(bytes, want);
    dec.decode_headers().ok()?;
    let (w, h) = dec.dimensions()?;
    check_pixels(w as u64, h as u64, max_pixels).ok()?;
    if mode == ImageMode::L
        && !matches!(
            dec.input_colorspace(),
            Some(ColorSpace::YCbCr | ColorSpace::Luma)
        )
    {
        return None;
    }
    if dec.exif().is_some_and(|e| exif_orientation(e) != 1)
        || dec.output_colorspace() != Some(want)
        || dec.output_buffer_size() != Some(out.len())
    {
        return None;
    }
    dec.decode_into(out).ok()?;
    Some((w as u32, h as u32))
}

/// The decoded size in bytes of an encoded image in `mode` (width × height × channels), read from
/// its header without decoding; `None` when the bytes are not a JPEG, PNG or WebP with a readable
/// header. EXIF rotation does not change the size.
pub fn predicted_size(bytes: &[u8], mode: ImageMode) -> Option<u64> {
    let (w, h) = header_dims(bytes)?;
    Some(u64::from(w) * u64::from(h) * mode.channels() as u64)
}

/// The (width, height) an encoded image's header declares (before any EXIF rotation); `None`
/// when the bytes are not a JPEG, PNG or WebP with a readable header.
pub fn header_dims(bytes: &[u8]) -> Option<(u32, u32)> {
    let format = match sniff_format(bytes)? {
        ImageFormat::Jpeg => image::ImageFormat::Jpeg,
        ImageFormat::Png => image::ImageFormat::Png,
        ImageFormat::WebP => image::ImageFormat::WebP,
    };
    image::ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .ok()
}

/// Encoded formats this operator reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// JPEG (baseline and progressive).
    Jpeg,
    /// PNG (8 and 16 bit, any colour type).
    Png,
    /// WebP (lossy and lossless).
    WebP,
}

/// Recognises the format from the first bytes.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some(ImageFormat::WebP)
    } else {
        None
    }
}

fn describe_magic(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "empty input".into();
    }
    let known = [
        (&b"GIF8"[..], "GIF"),
        (&b"BM"[..], "BMP"),
        (&b"II*\0"[..], "TIFF"),
        (&b"MM\0*"[..], "TIFF"),
    ];
    for (magic, name) in known {
        if bytes.starts_with(magic) {
            return format!("unsupported image format {name} (supported: JPEG, PNG, WebP)");
        }
    }
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!(
        "not an image: unrecognised leading bytes {} (supported: JPEG, PNG, WebP)",
        head.join(" ")
    )
}

fn check_pixels(width: u64, height: u64, max_pixels: u64) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::input(format!(
            "image has no pixels ({width}x{height})"
        )));
    }
    let pixels = width.saturating_mul(height);
    if pixels > max_pixels {
        return Err(Error::input(format!(
            "image of {width}x{height} = {pixels} pixels exceeds max_pixels {max_pixels}"
        )));
    }
    Ok(())
}

/// Decodes one encoded image into `mode`, refusing images of more than `max_pixels` pixels before
/// decoding them. JPEG EXIF orientation is applied.
pub fn decode(bytes: &[u8], mode: ImageMode, max_pixels: u64) -> Result<ImageBuf> {
    match sniff_format(bytes) {
        Some(ImageFormat::Jpeg) => decode_jpeg(bytes, mode, max_pixels),
        Some(ImageFormat::Png) => {
            decode_with_image(bytes, image::ImageFormat::Png, mode, max_pixels)
        }
        Some(ImageFormat::WebP) => {
            decode_with_image(bytes, image::ImageFormat::WebP, mode, max_pixels)
        }
        None => Err(Error::input(describe_magic(bytes))),
    }
}

fn jpeg_decoder(bytes: &[u8], out: ColorSpace) -> JpegDecoder<ZCursor<&[u8]>> {
    let options = DecoderOptions::default()
        .set_max_width(u16::MAX as usize)
        .set_max_height(u16::MAX as usize)
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(out);
    JpegDecoder::new_with_options(ZCursor::new(bytes), options)
}

fn jpeg_err(e: zune_jpeg::errors::DecodeErrors) -> Error {
    Error::input(format!("corrupt or truncated jpeg: {e}"))
}

fn decode_jpeg(bytes: &[u8], mode: ImageMode, max_pixels: u64) -> Result<ImageBuf> {
    // Grayscale straight from the Y channel when the file is YCbCr or gray; otherwise via RGB.
    let mut dec = jpeg_decoder(
        bytes,
        if mode == ImageMode::L {
            ColorSpace::Luma
        } else {
            ColorSpace::RGB
        },
    );
    dec.decode_headers().map_err(jpeg_err)?;
    let (w, h) = dec
        .dimensions()
        .ok_or_else(|| Error::input("jpeg header has no dimensions"))?;
    check_pixels(w as u64, h as u64, max_pixels)?;
    let input_cs = dec.input_colorspace();
    if mode == ImageMode::L && !matches!(input_cs, Some(ColorSpace::YCbCr | ColorSpace::Luma)) {
        dec = jpeg_decoder(bytes, ColorSpace::RGB);
        dec.decode_headers().map_err(jpeg_err)?;
    }
    let orientation = dec.exif().map_or(1, |e| exif_orientation(e));
    let out_cs = dec
        .output_colorspace()
        .ok_or_else(|| Error::input("jpeg header has no colour space"))?;
    let size = dec
        .output_buffer_size()
        .ok_or_else(|| Error::input(format!("jpeg of {w}x{h} is too large")))?;
    let mut pixels = vec![0u8; size];
    dec.decode_into(&mut pixels).map_err(jpeg_err)?;
    let (w, h) = (w as u32, h as u32);
    let mut img = match out_cs {
        ColorSpace::RGB => ImageBuf {
            pixels,
            mode: ImageMode::Rgb,
            height: h,
            width: w,
        },
        ColorSpace::Luma => ImageBuf {
            pixels,
            mode: ImageMode::L,
            height: h,
            width: w,
        },
        other => {
            return Err(Error::input(format!(
                "jpeg decoded to unexpected colour space {other:?}"
            )));
        }
    };
    img = convert_mode(img, mode);
    Ok(apply_orientation(img, orientation))
}

fn decode_with_image(
    bytes: &[u8],
    format: image::ImageFormat,
    mode: ImageMode,
    max_pixels: u64,
) -> Result<ImageBuf> {
    use image::ImageDecoder;
    let name = format!("{format:?}").to_lowercase();
    // PNG: the size is at a fixed place in IHDR; check it before the decoder allocates anything.
    if format == image::ImageFormat::Png && bytes.len() >= 24 && &bytes[12..16] == b"IHDR" {
        let be =
            |o: usize| u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        check_pixels(be(16) as u64, be(20) as u64, max_pixels)?;
    }
    let bad = |e: image::ImageError| Error::input(format!("corrupt or truncated {name}: {e}"));
    let mut reader = image::ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    // Room for the largest accepted image at 16 bits x 4 channels, plus decoder buffers.
    limits.max_alloc = Some(max_pixels.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(bad)?;
    let (w, h) = decoder.dimensions();
    check_pixels(w as u64, h as u64, max_pixels)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(bad)?;
    img.apply_orientation(orientation);
    let (width, height) = (img.width(), img.height());
    let pixels = match mode {
        ImageMode::Rgb => img.into_rgb8().into_raw(),
        ImageMode::Rgba => img.into_rgba8().into_raw(),
        ImageMode::L => img.into_luma8().into_raw(),
    };
    Ok(ImageBuf {
        pixels,
        mode,
        height,
        width,
    })
}

/// Converts between modes (RGB → L uses ITU-R BT.601 weights like Pillow; alpha is 255 when added
/// and dropped when removed).
pub fn convert_mode(img: ImageBuf, mode: ImageMode) -> ImageBuf {
    if img.mode == mode {
        return img;
    }
    let n = img.width as usize * img.height as usize;
    let src = &img.pixels;
    let c = img.mode.channels();
    let mut out = Vec::with_capacity(n * mode.channels());
    match (img.mode, mode) {
        (_, ImageMode::L) => {
            for p in src.chunks_exact(c) {
                let (r, g, b) = (p[0] as u32, p[1] as u32, p[2] as u32);
                out.push(((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16) as u8);
            }
        }
        (ImageMode::L, ImageMode::Rgb) => {
            for &v in src {
                out.extend_from_slice(&[v, v, v]);
            }
        }
        (ImageMode::L, ImageMode::Rgba) => {
            for &v in src {
                out.extend_from_slice(&[v, v, v, 255]);
            }
        }
        (ImageMode::Rgb, ImageMode::Rgba) => {
            for p in src.chunks_exact(3) {
                out.extend_from_slice(&[p[0], p[1], p[2], 255]);
            }
        }
        (ImageMode::Rgba, ImageMode::Rgb) => {
            for p in src.chunks_exact(4) {
                out.extend_from_slice(&p[..3]);
            }
        }
        (ImageMode::Rgb, ImageMode::Rgb) | (ImageMode::Rgba, ImageMode::Rgba) => {
            out.extend_from_slice(src)
        }
    }
    ImageBuf {
        pixels: out,
        mode,
        height: img.height,
        width: img.width,
    }
}

/// Reads the EXIF orientation (tag 0x0112, 1..=8) from a TIFF-structured EXIF block (with or
/// without the `Exif\0\0` prefix); 1 (as stored) when absent or unreadable.
pub fn exif_orientation(exif: &[u8]) -> u16 {
    let tiff = exif.strip_prefix(b"Exif\0\0").unwrap_or(exif);
    let le = match tiff.get(0..2) {
        Some(b"II") => true,
        Some(b"MM") => false,
        _ => return 1,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b = tiff.get(o..o + 2)?;
        Some(if le {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b = tiff.get(o..o + 4)?;
        Some(if le {
            u32::from_le_bytes([b[0], b[1], b[2], b[3]])
        } else {
            u32::from_be_bytes([b[0], b[1], b[2], b[3]])
        })
    };
    let find = || -> Option<u16> {
        let ifd = u32_at(4)? as usize;
        let count = u16_at(ifd)? as usize;
        for i in 0..count {
            let e = ifd + 2 + i * 12;
            if u16_at(e)? == 0x0112 && u16_at(e + 2)? == 3 {
                return u16_at(e + 8);
            }
        }
        None
    };
    find().filter(|o| (1..=8).contains(o)).unwrap_or(1)
}

/// Turns an image stored with EXIF `orientation` (1..=8) upright.
pub fn apply_orientation(img: ImageBuf, orientation: u16) -> ImageBuf {
    if !(2..=8).contains(&orientation) {
        return img;
    }
    let (w, h) = (img.width as usize, img.height as usize);
    let c = img.mode.channels();
    let swap = orientation >= 5;
    let (ow, oh) = if swap { (h, w) } else { (w, h) };
    let mut out = vec![0u8; img.pixels.len()];
    for oy in 0..oh {
        for ox in 0..ow {
            let (sx, sy) = match orientation {
                2 => (w - 1 - ox, oy),
                3 => (w - 1 - ox, h - 1 - oy),
                4 => (ox, h - 1 - oy),
                5 => (oy, ox),
                6 => (oy, h - 1 - ox),
                7 => (w - 1 - oy, h - 1 - ox),
                _ => (w - 1 - oy, ox),
            };
            let s = (sy * w + sx) * c;
            let d = (oy * ow + ox) * c;
            out[d..d + c].copy_from_slice(&img.pixels[s..s + c]);
        }
    }
    ImageBuf {
        pixels: out,
        mode: img.mode,
        height: oh as u32,
        width: ow as u32,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn img(w: u32, h: u32) -> ImageBuf {
        // L image whose pixel value is its index
        ImageBuf {
            pixels: (0..(w * h) as u8).collect(),
            mode: ImageMode::L,
            height: h,
            width: w,
        }
    }

    #[test]
    fn orientations_match_their_definitions() {
        // 3 wide, 2 high:  0 1 2 / 3 4 5
        let i = img(3, 2);
        assert_eq!(
            apply_orientation(i.clone(), 1).pixels,
            vec![0, 1, 2, 3, 4, 5]
        );
        assert_eq!(
            apply_orientation(i.clone(), 2).pixels,
            vec![2, 1, 0, 5, 4, 3]
        );
        assert_eq!(
            apply_orientation(i.clone(), 3).pixels,
            vec![5, 4, 3, 2, 1, 0]
        );
        assert_eq!(
            apply_orientation(i.clone(), 4).pixels,
            vec![3, 4, 5, 0, 1, 2]
        );
        // rotated ones are 2 wide, 3 high
        let r6 = apply_orientation(i.clone(), 6);
        assert_eq!((r6.width, r6.height), (2, 3));
        assert_eq!(r6.pixels, vec![3, 0, 4, 1, 5, 2]); // 90° clockwise
        assert_eq!(
            apply_orientation(i.clone(), 8).pixels,
            vec![2, 5, 1, 4, 0, 3]
        );
        assert_eq!(
            apply_orientation(i.clone(), 5).pixels,
            vec![0, 3, 1, 4, 2, 5]
        );
        assert_eq!(apply_orientation(i, 7).pixels, vec![5, 2, 4, 1, 3, 0]);
    }

    fn jpeg(w: u32, h: u32, seed: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                (x as u8).wrapping_mul(7).wrapping_add(seed),
                (y as u8).wrapping_mul(3),
                seed,
            ])
        });
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Jpeg)
            .unwrap();
        out
    }

    const NOTHING: Then = Then {
        resize: None,
        crop: None,
        tensor: None,
    };

    fn dims(files: &[Vec<u8>]) -> Vec<Option<(u32, u32)>> {
        files.iter().map(|f| header_dims(f)).collect()
    }

    #[test]
    fn a_group_with_a_fused_resize_equals_decode_then_resize() {
        use arrow::array::{ArrayRef, BinaryArray};
        let files = vec![jpeg(40, 30, 1), jpeg(17, 23, 2), jpeg(64, 8, 3)];
        let col: ArrayRef = std::sync::Arc::new(BinaryArray::from_iter_values(files.iter()));
        let target = Target::ShorterSide(6);
        let alg = crate::resize::parse_filter("bilinear").unwrap();
        let predicted: Vec<usize> = dims(&files)
            .iter()
            .map(|d| {
                let (w, h) = target.size(d.unwrap().0, d.unwrap().1);
                (w * h * 3) as usize
            })
            .collect();
        let (MadeImages::Contiguous(column, _), _) = decode_group(
            &col,
            &predicted,
            &dims(&files),
            ImageMode::Rgb,
            1 << 30,
            Then {
                resize: Some((target, alg)),
                crop: None,
                tensor: None,
            },
        )
        .unwrap() else {
            panic!("plain RGB JPEGs should decode and resize into one buffer");
        };
        let images = crate::common::DecodedColumn::new(&column, "image").unwrap();
        for (row, f) in files.iter().enumerate() {
            let full = decode(f, ImageMode::Rgb, 1 << 30).unwrap();
            let want = crate::resize::resize_image(&full, target, "bilinear").unwrap();
            let got = images.get(row).unwrap();
            assert_eq!((got.width, got.height), (want.width, want.height));
            assert_eq!(got.pixels, &want.pixels[..], "row {row}");
        }
    }

    #[test]
    fn a_group_decodes_into_one_buffer_with_the_same_pixels() {
        use arrow::array::{ArrayRef, BinaryArray};
        let files = vec![jpeg(40, 30, 1), jpeg(17, 23, 2), jpeg(64, 8, 3)];
        let col: ArrayRef = std::sync::Arc::new(BinaryArray::from_iter_values(files.iter()));
        let predicted: Vec<usize> = files
            .iter()
            .map(|f| predicted_size(f, ImageMode::Rgb).unwrap() as usize)
            .collect();
        let (MadeImages::Contiguous(column, _), _) = decode_group(
            &col,
            &predicted,
            &dims(&files),
            ImageMode::Rgb,
            1 << 30,
            NOTHING,
        )
        .unwrap() else {
            panic!("plain RGB JPEGs should decode into one buffer");
        };
        let images = crate::common::DecodedColumn::new(&column, "image").unwrap();
        for (row, f) in files.iter().enumerate() {
            let want = decode(f, ImageMode::Rgb, 1 << 30).unwrap();
            let got = images.get(row).unwrap();
            assert_eq!((got.width, got.height), (want.width, want.height));
            assert_eq!(got.pixels, &want.pixels[..], "row {row}");
        }

        // A corrupt row sends the group row by row: only that row fails.
        let mut bad = files.clone();
        let half = bad[1].len() / 2;
        bad[1].truncate(half);
        let col: ArrayRef = std::sync::Arc::new(BinaryArray::from_iter_values(bad.iter()));
        let predicted: Vec<usize> = bad
            .iter()
            .map(|f| predicted_size(f, ImageMode::Rgb).unwrap_or(0) as usize)
            .collect();
        let (MadeImages::Each(rows), _) = decode_group(
            &col,
            &predicted,
            &dims(&bad),
            ImageMode::Rgb,
            1 << 30,
            NOTHING,
        )
        .unwrap() else {
            panic!("a corrupt row must not go into the shared buffer");
        };
        assert!(rows[0].is_ok() && rows[2].is_ok());
        assert!(rows[1].is_err());

        // Grayscale output also goes into one buffer, with L pixels.
        let col: ArrayRef = std::sync::Arc::new(BinaryArray::from_iter_values(files.iter()));
        let predicted: Vec<usize> = files
            .iter()
            .map(|f| predicted_size(f, ImageMode::L).unwrap() as usize)
            .collect();
        let (MadeImages::Contiguous(column, _), _) = decode_group(
            &col,
            &predicted,
            &dims(&files),
            ImageMode::L,
            1 << 30,
            NOTHING,
        )
        .unwrap() else {
            panic!("grayscale from YCbCr JPEGs should decode into one buffer");
        };
        let images = crate::common::DecodedColumn::new(&column, "image").unwrap();
        let want = decode(&files[2], ImageMode::L, 1 << 30).unwrap();
        assert_eq!(images.get(2).unwrap().pixels, &want.pixels[..]);
    }

    #[test]
    fn exif_orientation_is_read_in_both_byte_orders() {
        let mut le = b"II*\0\x08\0\0\0\x01\0".to_vec();
        le.extend_from_slice(&[0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0]);
        assert_eq!(exif_orientation(&le), 6);
        let mut be = b"Exif\0\0MM\0*\0\0\0\x08\0\x01".to_vec();
        be.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 8, 0, 0]);
        assert_eq!(exif_orientation(&be), 8);
        assert_eq!(exif_orientation(b"garbage"), 1);
        assert_eq!(exif_orientation(&le[..12]), 1);
    }

    #[test]
    fn modes_convert() {
        let rgb = ImageBuf {
            pixels: vec![255, 0, 0, 0, 255, 0],
            mode: ImageMode::Rgb,
            height: 1,
            width: 2,
        };
        let l = convert_mode(rgb.clone(), ImageMode::L);
        assert_eq!(l.pixels, vec![76, 150]);
        let rgba = convert_mode(rgb.clone(), ImageMode::Rgba);
        assert_eq!(rgba.pixels, vec![255, 0, 0, 255, 0, 255, 0, 255]);
        assert_eq!(convert_mode(rgba, ImageMode::Rgb), rgb);
    }

    #[test]
    fn groups_respect_the_budget() {
        assert_eq!(budget_groups(&[10, 10, 10, 10], 25), vec![0..2, 2..4]);
        assert_eq!(budget_groups(&[30, 5, 5], 25), vec![0..1, 1..3]);
        assert_eq!(budget_groups(&[0, 0, 0], 1), vec![0..3]);
        assert!(budget_groups(&[], 1).is_empty());
    }

    #[test]
    fn sizes_are_predicted_from_headers() {
        let mut png = Vec::new();
        image::RgbImage::new(40, 30)
            .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(predicted_size(&png, ImageMode::Rgb), Some(40 * 30 * 3));
        assert_eq!(predicted_size(&png, ImageMode::L), Some(40 * 30));
        assert_eq!(predicted_size(b"not an image", ImageMode::Rgb), None);
    }

    #[test]
    fn non_images_are_named() {
        let e = decode(b"GIF89a....", ImageMode::Rgb, 100).unwrap_err();
        assert!(e.message().contains("GIF"), "{e}");
        let e = decode(b"hello world", ImageMode::Rgb, 100).unwrap_err();
        assert!(e.message().contains("not an image"), "{e}");
        let e = decode(b"", ImageMode::Rgb, 100).unwrap_err();
        assert!(e.message().contains("empty"), "{e}");
    }

    #[test]
    fn spec_rejects_unknown_fields_and_modes() {
        let s: std::result::Result<DecodeImageSpec, _> =
            serde_json::from_str(r#"{"column": "b", "colour": "x"}"#);
        assert!(s.is_err());
        let s: DecodeImageSpec = serde_json::from_str(r#"{"mode": "CMYK"}"#).unwrap();
        let schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("bytes", arrow::datatypes::DataType::Binary, true),
        ]));
        assert!(
            s.output_schema(&schema)
                .unwrap_err()
                .message()
                .contains("CMYK")
        );
        let ok = DecodeImageSpec::default();
        let out = ok.output_schema(&schema).unwrap();
        assert_eq!(out.field(1).extension_type_name(), Some("weir.image"));
        let bad_schema = std::sync::Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("bytes", arrow::datatypes::DataType::Utf8, true),
        ]));
        let e = ok.output_schema(&bad_schema).unwrap_err();
        assert!(
            e.message().contains("'bytes'") && e.message().contains("Utf8"),
            "{e}"
        );
    }
}
