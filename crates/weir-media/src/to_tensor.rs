//! `to_tensor`: turns same-sized decoded images into an `arrow.fixed_shape_tensor` column of shape
//! `[H, W, C]` (NHWC) or `[C, H, W]` (NCHW), with channel reordering and `(x * scale - mean) / std`
//! normalisation applied through a per-channel lookup table (one table read per value).
//!
//! The size and mode must be known at plan time: they come from the image column's metadata, which
//! `center_crop` (and `resize` to a fixed width and height) record. Rows of another size or mode
//! are bad rows naming their size.

use crate::common::{
    DecodedColumn, ImageView, check_decoded_image, column_index, report_bad_rows, schema_with,
};
use arrow::array::{Array, ArrayRef, BooleanArray, FixedSizeListArray, PrimitiveArray};
use arrow::buffer::ScalarBuffer;
use arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float16Type, Float32Type, SchemaRef, UInt8Type,
};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;
use std::sync::Arc;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::multimodal::{ImageMode, tensor_field};
use weir_types::{Error, Result};

fn default_image() -> String {
    "image".into()
}
fn default_tensor() -> String {
    "tensor".into()
}
fn default_layout() -> String {
    "NHWC".into()
}
fn default_order() -> String {
    "RGB".into()
}
fn default_dtype() -> String {
    "float32".into()
}
fn default_scale() -> f32 {
    1.0
}
fn default_mean() -> Vec<f32> {
    vec![0.0, 0.0, 0.0]
}
fn default_std() -> Vec<f32> {
    vec![1.0, 1.0, 1.0]
}

/// Options of a `to_tensor` operator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToTensorSpec {
    /// The decoded `weir.image` column; its size and mode must be known (put `center_crop`, or
    /// `resize` with width and height, before). Default `image`.
    #[serde(default = "default_image")]
    pub column: String,
    /// The output tensor column (replaces a column of that name, else is appended). Default
    /// `tensor`.
    #[serde(default = "default_tensor")]
    pub output: String,
    /// `NHWC` (per-row shape `[H, W, C]`) or `NCHW` (`[C, H, W]`). Default `NHWC`.
    #[serde(default = "default_layout")]
    pub layout: String,
    /// `RGB` or `BGR` (swaps the first and third channel; ignored for `L`). Default `RGB`.
    #[serde(default = "default_order")]
    pub channel_order: String,
    /// Element type: `float32`, `float16` or `uint8` (raw pixels; scale/mean/std must keep their
    /// defaults). Default `float32`.
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// Multiplies each pixel value first, e.g. `0.00392156862` (1/255). Default 1.0.
    #[serde(default = "default_scale")]
    pub scale: f32,
    /// Subtracted per output channel after scaling (in output channel order; one value or one per
    /// channel). Default `[0, 0, 0]`.
    #[serde(default = "default_mean")]
    pub mean: Vec<f32>,
    /// Divides per output channel after subtracting the mean (one value or one per channel).
    /// Default `[1, 1, 1]`.
    #[serde(default = "default_std")]
    pub std: Vec<f32>,
}

impl Default for ToTensorSpec {
    fn default() -> Self {
        ToTensorSpec {
            column: default_image(),
            output: default_tensor(),
            layout: default_layout(),
            channel_order: default_order(),
            dtype: default_dtype(),
            scale: default_scale(),
            mean: default_mean(),
            std: default_std(),
        }
    }
}

/// Element type of the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TensorDtype {
    /// `f32`.
    Float32,
    /// `f16`.
    Float16,
    /// `u8`, raw pixel values.
    UInt8,
}

/// Everything the kernel needs, resolved at plan time.
#[derive(Debug, Clone)]
pub struct TensorPlan {
    /// Image height.
    pub height: u32,
    /// Image width.
    pub width: u32,
    /// Image mode (channels).
    pub mode: ImageMode,
    /// Channels first.
    pub nchw: bool,
    /// `perm[k]` = input channel of output channel `k`.
    pub perm: Vec<usize>,
    /// `lut[k][v]` = normalised value of pixel value `v` in output channel `k`.
    pub lut: Vec<[f32; 256]>,
    /// Output element type.
    pub dtype: TensorDtype,
}

impl TensorPlan {
    /// The per-row tensor shape.
    pub fn shape(&self) -> Vec<usize> {
        let (h, w, c) = (
            self.height as usize,
            self.width as usize,
            self.mode.channels(),
        );
        if self.nchw {
            vec![c, h, w]
        } else {
            vec![h, w, c]
        }
    }

    /// Values per row.
    pub fn row_len(&self) -> usize {
        self.height as usize * self.width as usize * self.mode.channels()
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_len()
            * match self.dtype {
                TensorDtype::Float32 => 4,
                TensorDtype::Float16 => 2,
                TensorDtype::UInt8 => 1,
            }
    }

    /// Writes one image into `out` (`row_len` values) as `f32`.
    pub fn write_f32(&self, pixels: &[u8], out: &mut [f32]) {
        let c = self.mode.channels();
        if self.nchw {
            let plane = self.height as usize * self.width as usize;
            for (k, dst) in out.chunks_exact_mut(plane).enumerate().take(c) {
                let lut = &self.lut[k];
                let ic = self.perm[k];
                for (o, p) in dst.iter_mut().zip(pixels.chunks_exact(c)) {
                    *o = lut[p[ic] as usize];
                }
            }
            return;
        }
        match c {
            3 => {
                let (l0, l1, l2) = (&self.lut[0], &self.lut[1], &self.lut[2]);
                let (i0, i1, i2) = (self.perm[0], self.perm[1], self.perm[2]);
                for (o, p) in out.chunks_exact_mut(3).zip(pixels.chunks_exact(3)) {
                    o[0] = l0[p[i0] as usize];
                    o[1] = l1[p[i1] as usize];
                    o[2] = l2[p[i2] as usize];
                }
            }
            _ => {
                for (o, p) in out.chunks_exact_mut(c).zip(pixels.chunks_exact(c)) {
                    for k in 0..c {
                        o[k] = self.lut[k][p[self.perm[k]] as usize];
                    }
                }
            }
        }
    }

    /// Writes one image into `out` (`row_len` values) as raw `u8` in the planned layout and order.
    pub fn write_u8(&self, pixels: &[u8], out: &mut [u8]) {
        let c = self.mode.channels();
        if self.nchw {
            let plane = self.height as usize * self.width as usize;
            for (k, dst) in out.chunks_exact_mut(plane).enumerate().take(c) {
                let ic = self.perm[k];
                for (o, p) in dst.iter_mut().zip(pixels.chunks_exact(c)) {
                    *o = p[ic];
                }
            }
        } else if self.perm.iter().enumerate().all(|(k, p)| k == *p) {
            out.copy_from_slice(&pixels[..out.len()]);
        } else {
            for (o, p) in out.chunks_exact_mut(c).zip(pixels.chunks_exact(c)) {
                for k in 0..c {
                    o[k] = p[self.perm[k]];
                }
            }
        }
    }
}

impl ToTensorSpec {
    /// Resolves the spec against the image column's planned size and mode.
    pub fn plan(&self, height: u32, width: u32, mode: ImageMode) -> Result<TensorPlan> {
        let nchw = match self.layout.to_ascii_uppercase().as_str() {
            "NHWC" | "HWC" => false,
            "NCHW" | "CHW" => true,
            other => {
                return Err(Error::config(format!(
                    "to_tensor: layout '{other}' is not NHWC or NCHW"
                )));
            }
        };
        let c = mode.channels();
        let bgr = match self.channel_order.to_ascii_uppercase().as_str() {
            "RGB" => false,
            "BGR" => true,
            other => {
                return Err(Error::config(format!(
                    "to_tensor: channel_order '{other}' is not RGB or BGR"
                )));
            }
        };
        let mut perm: Vec<usize> = (0..c).collect();
        if bgr && c >= 3 {
            perm.swap(0, 2);
        }
        let dtype = match self.dtype.to_ascii_lowercase().as_str() {
            "float32" | "f32" => TensorDtype::Float32,
            "float16" | "f16" => TensorDtype::Float16,
            "uint8" | "u8" => TensorDtype::UInt8,
            other => {
                return Err(Error::config(format!(
                    "to_tensor: dtype '{other}' is not float32, float16 or uint8"
                )));
            }
        };
        let per_channel = |v: &[f32], what: &str| -> Result<Vec<f32>> {
            match v.len() {
                1 => Ok(vec![v[0]; c]),
                n if n == c => Ok(v.to_vec()),
                // the 3-value defaults also fit one-channel and four-channel images
                3 if c == 1 && v.iter().all(|x| *x == v[0]) => Ok(vec![v[0]]),
                3 if c == 4 => Ok(vec![
                    v[0],
                    v[1],
                    v[2],
                    if what == "std" { 1.0 } else { 0.0 },
                ]),
                n => Err(Error::config(format!(
                    "to_tensor: {what} has {n} values but images of mode {mode} have {c} channels"
                ))),
            }
        };
        let mean = per_channel(&self.mean, "mean")?;
        let std = per_channel(&self.std, "std")?;
        if std.iter().any(|s| *s == 0.0 || !s.is_finite()) {
            return Err(Error::config(
                "to_tensor: std values must be finite and non-zero",
            ));
        }
        if dtype == TensorDtype::UInt8
            && (self.scale != 1.0
                || mean.iter().any(|m| *m != 0.0)
                || std.iter().any(|s| *s != 1.0))
        {
            return Err(Error::config(
                "to_tensor: dtype uint8 keeps raw pixel values; leave scale, mean and std at their defaults",
            ));
        }
        let lut = (0..c)
            .map(|k| {
                let mut t = [0f32; 256];
                for (v, slot) in t.iter_mut().enumerate() {
                    *slot = (v as f32 * self.scale - mean[k]) / std[k];
                }
                t
            })
            .collect();
        Ok(TensorPlan {
            height,
            width,
            mode,
            nchw,
            perm,
            lut,
            dtype,
        })
    }

    /// Plan time: the kernel's plan for the image column of `input`.
    pub(crate) fn plan_for(&self, input: &SchemaRef) -> Result<TensorPlan> {
        let i = column_index(input, &self.column, "to_tensor")?;
        let md = check_decoded_image(input.field(i), "to_tensor")?;
        let (Some(h), Some(w)) = (md.height, md.width) else {
            return Err(Error::schema(format!(
                "to_tensor: the size of the images in column '{}' is not fixed; put center_crop (or resize with width and height) before to_tensor",
                self.column
            )));
        };
        let mode = md.mode.as_deref().and_then(ImageMode::parse).ok_or_else(|| {
            Error::schema(format!(
                "to_tensor: the mode of the images in column '{}' is not known; decode them with decode_image",
                self.column
            ))
        })?;
        self.plan(h, w, mode)
    }

    /// Plan time: checks the column and options and returns the output schema.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        let plan = self.plan_for(input)?;
        Ok(schema_with(input, self.field(&plan)))
    }

    fn field(&self, plan: &TensorPlan) -> Field {
        let dt = match plan.dtype {
            TensorDtype::Float32 => DataType::Float32,
            TensorDtype::Float16 => DataType::Float16,
            TensorDtype::UInt8 => DataType::UInt8,
        };
        tensor_field(&self.output, dt, &plan.shape())
    }

    /// Builds one running instance for that input schema.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let plan = self.plan_for(input)?;
        Ok(Box::new(ToTensor {
            schema: schema_with(input, self.field(&plan)),
            column: self.column.clone(),
            output: self.output.clone(),
            plan: Arc::new(plan),
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        format!(
            "to_tensor {} -> {} ({} {} {}, scale {}, mean {:?}, std {:?})",
            self.column,
            self.output,
            self.layout,
            self.channel_order,
            self.dtype,
            self.scale,
            self.mean,
            self.std,
        )
    }
}

impl kind::Spec for ToTensorSpec {
    fn describe(&self) -> String {
        ToTensorSpec::describe(self)
    }
}

impl kind::OperatorSpec for ToTensorSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        ToTensorSpec::output_schema(self, kind::first_input(inputs)?)
    }

    /// Reads the image column, adds (or replaces) the tensor column, passes the rest through.
    fn input_need(&self, _: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        Ok(vec![
            out.through([self.output.as_str()], [self.column.as_str()]),
        ])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        ToTensorSpec::create(self, ctx.input()?)
    }
}

/// A running `to_tensor`.
#[derive(Debug)]
pub struct ToTensor {
    schema: SchemaRef,
    column: String,
    output: String,
    plan: Arc<TensorPlan>,
}

pub(crate) fn check_row(plan: &TensorPlan, img: &ImageView<'_>) -> Result<()> {
    if !plan.fits(img.width, img.height, img.mode) {
        return Err(Error::input(format!(
            "image is {}x{} {}, but the tensor needs {}x{} {} (all images of a batch must have the same size)",
            img.width, img.height, img.mode, plan.width, plan.height, plan.mode
        )));
    }
    Ok(())
}

fn tensor_array<T: ArrowPrimitiveType>(values: Vec<T::Native>, row_len: usize) -> Result<ArrayRef> {
    // nullable items: what Arrow C++ / pyarrow expect of arrow.fixed_shape_tensor storage
    let item = Arc::new(Field::new_list_field(T::DATA_TYPE, true));
    let size = i32::try_from(row_len)
        .map_err(|_| Error::input(format!("tensor of {row_len} values is too large")))?;
    let values = PrimitiveArray::<T>::new(ScalarBuffer::from(values), None);
    Ok(Arc::new(FixedSizeListArray::try_new(
        item,
        size,
        Arc::new(values),
        None,
    )?))
}

/// The values of a tensor column being written, one buffer for all rows, in the planned element
/// type, with the plan's row length. Rows are written in parallel through
/// [`TensorValues::rows_mut`].
pub(crate) struct TensorValues {
    values: Values,
    row_len: usize,
}

enum Values {
    F32(Vec<f32>),
    F16(Vec<f16>),
    U8(Vec<u8>),
}

/// One row of a [`TensorValues`], to be written by [`TensorPlan::write_row`].
pub(crate) enum TensorRow<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
    U8(&'a mut [u8]),
}

impl TensorValues {
    /// Zeroed values for `rows` rows of `plan`.
    pub(crate) fn new(plan: &TensorPlan, rows: usize) -> TensorValues {
        let row_len = plan.row_len();
        let len = row_len * rows;
        let values = match plan.dtype {
            TensorDtype::Float32 => Values::F32(vec![0.0; len]),
            TensorDtype::Float16 => Values::F16(vec![f16::ZERO; len]),
            TensorDtype::UInt8 => Values::U8(vec![0; len]),
        };
        TensorValues { values, row_len }
    }

    /// Each row's values, in order.
    pub(crate) fn rows_mut(&mut self) -> Vec<TensorRow<'_>> {
        let n = self.row_len.max(1);
        match &mut self.values {
            Values::F32(v) => v.chunks_mut(n).map(TensorRow::F32).collect(),
            Values::F16(v) => v.chunks_mut(n).map(TensorRow::F16).collect(),
            Values::U8(v) => v.chunks_mut(n).map(TensorRow::U8).collect(),
        }
    }

    /// The `arrow.fixed_shape_tensor` storage of these values.
    pub(crate) fn into_array(self) -> Result<ArrayRef> {
        match self.values {
            Values::F32(v) => tensor_array::<Float32Type>(v, self.row_len),
            Values::F16(v) => tensor_array::<Float16Type>(v, self.row_len),
            Values::U8(v) => tensor_array::<UInt8Type>(v, self.row_len),
        }
    }
}

impl TensorPlan {
    /// Writes one image (already checked to have the planned size and mode) into its row.
    pub(crate) fn write_row(&self, pixels: &[u8], row: TensorRow<'_>) {
        match row {
            TensorRow::F32(out) => self.write_f32(pixels, out),
            TensorRow::U8(out) => self.write_u8(pixels, out),
            TensorRow::F16(out) => {
                // Written as f32 into a per-thread buffer (grown once), then converted in one pass.
                thread_local! {
                    static F32_ROW: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
                }
                F32_ROW.with_borrow_mut(|tmp| {
                    tmp.resize(out.len(), 0.0);
                    self.write_f32(pixels, tmp);
                    out.convert_from_f32_slice(tmp);
                });
            }
        }
    }

    /// Whether an image of this size and mode fits the plan.
    pub(crate) fn fits(&self, width: u32, height: u32, mode: ImageMode) -> bool {
        (width, height, mode) == (self.width, self.height, self.mode)
    }
}

/// Converts `views` (checked to fit the plan) into one tensor array, in parallel over rows.
pub(crate) fn build_tensor(plan: &TensorPlan, views: &[ImageView<'_>]) -> Result<ArrayRef> {
    let mut values = TensorValues::new(plan, views.len());
    values
        .rows_mut()
        .into_par_iter()
        .zip(views.par_iter())
        .for_each(|(row, v)| plan.write_row(v.pixels, row));
    values.into_array()
}

#[async_trait]
impl Operator for ToTensor {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let column = weir_types::planned_column(&batch, &self.column, "to_tensor")?;
        let (name, plan) = (self.column.clone(), self.plan.clone());
        let (tensor, bad) = ctx
            .spawn_cpu(move || -> Result<(ArrayRef, Vec<(usize, Error)>)> {
                let images = DecodedColumn::new(&column, &name)?;
                let mut views = Vec::with_capacity(images.len());
                let mut bad = Vec::new();
                for row in 0..images.len() {
                    match images
                        .get(row)
                        .and_then(|v| check_row(&plan, &v).map(|_| v))
                    {
                        Ok(v) => views.push(v),
                        Err(e) => bad.push((row, e)),
                    }
                }
                Ok((build_tensor(&plan, &views)?, bad))
            })
            .await??;
        let keep = if bad.is_empty() {
            None
        } else {
            let mut mask = vec![true; batch.num_rows()];
            for (row, _) in &bad {
                mask[*row] = false;
            }
            Some(BooleanArray::from(mask))
        };
        report_bad_rows(
            ctx,
            &batch,
            bad.into_iter().map(|(r, e)| (r, e, None)).collect(),
        )?;
        debug_assert_eq!(
            tensor.len(),
            keep.as_ref().map_or(batch.num_rows(), |k| k.true_count())
        );
        out.emit(crate::common::assemble(
            &batch,
            keep.as_ref(),
            &self.schema,
            &self.output,
            tensor,
        )?);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn spec(json: &str) -> ToTensorSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn nhwc_bgr_with_mean() {
        let s = spec(r#"{"channel_order": "BGR", "mean": [104, 117, 123]}"#);
        let p = s.plan(1, 2, ImageMode::Rgb).unwrap();
        assert_eq!(p.shape(), vec![1, 2, 3]);
        let mut out = vec![0f32; 6];
        p.write_f32(&[10, 20, 30, 200, 210, 220], &mut out);
        assert_eq!(
            out,
            vec![
                30. - 104.,
                20. - 117.,
                10. - 123.,
                220. - 104.,
                210. - 117.,
                200. - 123.
            ]
        );
    }

    #[test]
    fn float16_rows_round_each_f32_value_to_nearest() {
        // A scale that makes values f16 cannot hold exactly; every pixel value 0..=255, twice,
        // so the per-thread f32 buffer is reused (and must be overwritten) on the second row.
        let s = spec(
            r#"{"dtype": "float16", "scale": 0.00392156862, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}"#,
        );
        let p = s.plan(1, 256, ImageMode::Rgb).unwrap();
        let pixels: Vec<u8> = (0..=255u8).flat_map(|v| [v, 255 - v, v / 2]).collect();
        let mut want = vec![0f32; p.row_len()];
        p.write_f32(&pixels, &mut want);
        let want: Vec<f16> = want.iter().map(|x| f16::from_f32(*x)).collect();
        for _ in 0..2 {
            let mut values = TensorValues::new(&p, 1);
            for row in values.rows_mut() {
                p.write_row(&pixels, row);
            }
            let Values::F16(got) = values.values else {
                panic!("float16 values")
            };
            assert_eq!(got, want);
        }
    }

    #[test]
    fn nchw_scaled_and_normalised() {
        let s = spec(r#"{"layout": "NCHW", "scale": 0.5, "mean": [1, 2, 3], "std": [2, 2, 2]}"#);
        let p = s.plan(1, 2, ImageMode::Rgb).unwrap();
        assert_eq!(p.shape(), vec![3, 1, 2]);
        let mut out = vec![0f32; 6];
        p.write_f32(&[10, 20, 30, 40, 50, 60], &mut out);
        // channel R: (10*0.5-1)/2, (40*0.5-1)/2; G: (20*.5-2)/2, (50*.5-2)/2; B: ...
        assert_eq!(out, vec![2.0, 9.5, 4.0, 11.5, 6.0, 13.5]);
        let mut raw = vec![0u8; 6];
        let p8 = spec(r#"{"layout": "NCHW", "dtype": "uint8", "channel_order": "BGR"}"#)
            .plan(1, 2, ImageMode::Rgb)
            .unwrap();
        p8.write_u8(&[10, 20, 30, 40, 50, 60], &mut raw);
        assert_eq!(raw, vec![30, 60, 20, 50, 10, 40]);
    }

    #[test]
    fn bad_options_are_config_errors() {
        assert!(
            spec(r#"{"layout": "NWHC"}"#)
                .plan(1, 1, ImageMode::Rgb)
                .is_err()
        );
        assert!(
            spec(r#"{"dtype": "int4"}"#)
                .plan(1, 1, ImageMode::Rgb)
                .is_err()
        );
        assert!(spec(r#"{"std": [0]}"#).plan(1, 1, ImageMode::Rgb).is_err());
        assert!(
            spec(r#"{"mean": [1, 2]}"#)
                .plan(1, 1, ImageMode::Rgb)
                .is_err()
        );
        assert!(
            spec(r#"{"dtype": "uint8", "scale": 2}"#)
                .plan(1, 1, ImageMode::Rgb)
                .is_err()
        );
        assert!(
            spec(r#"{"mean": [1, 2, 3]}"#)
                .plan(1, 1, ImageMode::L)
                .is_err()
        );
        assert!(spec("{}").plan(1, 1, ImageMode::L).is_ok());
    }
}
