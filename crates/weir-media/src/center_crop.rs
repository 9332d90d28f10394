//! `center_crop`: cuts the central `width` × `height` window out of decoded images. An image
//! smaller than the window in either direction is a bad row.

use crate::common::{
    DecodedColumn, ImageBuf, ImageView, MadeImages, check_decoded_image, column_index,
    decoded_image_field, images_into_buffer, schema_with,
};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::multimodal::ImageMode;
use weir_types::{Error, Result};

fn default_image() -> String {
    "image".into()
}

/// Options of a `center_crop` operator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CenterCropSpec {
    /// The decoded `weir.image` column, cropped in place. Default `image`.
    #[serde(default = "default_image")]
    pub column: String,
    /// Width of the window in pixels. Required.
    pub width: u32,
    /// Height of the window in pixels. Required.
    pub height: u32,
}

impl CenterCropSpec {
    /// Plan time: checks the column is a decoded image and returns the output schema, which records
    /// the fixed size (so `to_tensor` can plan its shape).
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        if self.width == 0 || self.height == 0 {
            return Err(Error::config(
                "center_crop: width and height must be at least 1",
            ));
        }
        let i = column_index(input, &self.column, "center_crop")?;
        let md = check_decoded_image(input.field(i), "center_crop")?;
        let mode = md.mode.as_deref().and_then(ImageMode::parse);
        Ok(schema_with(
            input,
            decoded_image_field(&self.column, mode, Some((self.height, self.width))),
        ))
    }

    /// Builds one running instance for that input schema.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(CenterCrop {
            schema: self.output_schema(input)?,
            column: self.column.clone(),
            width: self.width,
            height: self.height,
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        format!(
            "center_crop {} to {}x{}",
            self.column, self.width, self.height
        )
    }
}

impl kind::Spec for CenterCropSpec {
    fn describe(&self) -> String {
        CenterCropSpec::describe(self)
    }
}

impl kind::OperatorSpec for CenterCropSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        CenterCropSpec::output_schema(self, kind::first_input(inputs)?)
    }

    /// Changes its image column in place; the rest passes through.
    fn input_need(&self, _: &[SchemaRef], out: &kind::Need) -> Result<Vec<kind::Need>> {
        Ok(vec![out.through([], [self.column.as_str()])])
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        CenterCropSpec::create(self, ctx.input()?)
    }
}

/// A running `center_crop`.
#[derive(Debug)]
pub struct CenterCrop {
    schema: SchemaRef,
    column: String,
    width: u32,
    height: u32,
}

/// Crops the central `width` × `height` window; the left/top offsets are `(W - w) / 2` and
/// `(H - h) / 2`, rounded down.
pub(crate) fn crop_view(src: ImageView<'_>, width: u32, height: u32) -> Result<ImageBuf> {
    if src.width < width || src.height < height {
        return Err(Error::input(format!(
            "image of {}x{} is smaller than the crop {width}x{height}",
            src.width, src.height
        )));
    }
    let c = src.mode.channels();
    let left = ((src.width - width) / 2) as usize;
    let top = ((src.height - height) / 2) as usize;
    let (sw, w) = (src.width as usize * c, width as usize * c);
    let mut pixels = Vec::with_capacity(w * height as usize);
    for y in top..top + height as usize {
        let s = y * sw + left * c;
        pixels.extend_from_slice(&src.pixels[s..s + w]);
    }
    Ok(ImageBuf {
        pixels,
        mode: src.mode,
        height,
        width,
    })
}

/// Copies the centre `width × height` of `src` into `out` (exactly that many pixels); `false`
/// when `src` is smaller or `out` has the wrong size.
pub(crate) fn crop_into(src: ImageView<'_>, width: u32, height: u32, out: &mut [u8]) -> bool {
    if src.width < width || src.height < height {
        return false;
    }
    let c = src.mode.channels();
    let left = ((src.width - width) / 2) as usize;
    let top = ((src.height - height) / 2) as usize;
    let (sw, w) = (src.width as usize * c, width as usize * c);
    if out.len() != w * height as usize {
        return false;
    }
    for (y, dst) in out.chunks_exact_mut(w).enumerate() {
        let s = (top + y) * sw + left * c;
        dst.copy_from_slice(&src.pixels[s..s + w]);
    }
    true
}

/// Crops one decoded image (a helper for callers outside a pipeline, e.g. benchmarks).
pub fn center_crop_image(img: &ImageBuf, width: u32, height: u32) -> Result<ImageBuf> {
    crop_view(
        ImageView {
            pixels: &img.pixels,
            mode: img.mode,
            height: img.height,
            width: img.width,
        },
        width,
        height,
    )
}

#[async_trait]
impl Operator for CenterCrop {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let column = weir_types::planned_column(&batch, &self.column, "center_crop")?;
        let (name, width, height) = (self.column.clone(), self.width, self.height);
        // Copying rows is cheap but not free for big batches: keep it off the executor thread.
        let made = ctx
            .spawn_cpu(move || -> Result<MadeImages> {
                let images = DecodedColumn::new(&column, &name)?;
                let planned = images_into_buffer(
                    images.len(),
                    |row| {
                        let src = images.get(row).ok()?;
                        (src.width >= width && src.height >= height)
                            .then_some((width, height, src.mode))
                    },
                    || (),
                    |(), row, out| {
                        images
                            .get(row)
                            .is_ok_and(|src| crop_into(src, width, height, out))
                    },
                );
                if let Some(made) = planned {
                    let (col, lengths) = made?;
                    return Ok(MadeImages::Contiguous(col, lengths));
                }
                Ok(MadeImages::each(
                    (0..images.len())
                        .map(|row| crop_view(images.get(row)?, width, height))
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
    fn crops_the_centre() {
        // 4x3 L image: 0..12
        let img = ImageBuf {
            pixels: (0..12).collect(),
            mode: ImageMode::L,
            height: 3,
            width: 4,
        };
        let c = center_crop_image(&img, 2, 1).unwrap();
        assert_eq!(c.pixels, vec![5, 6]);
        let e = center_crop_image(&img, 5, 1).unwrap_err();
        assert!(
            e.message().contains("4x3") && e.message().contains("5x1"),
            "{e}"
        );
    }

    #[test]
    fn a_batch_crops_into_one_buffer_like_row_by_row() {
        let imgs = [
            ImageBuf {
                pixels: (0..60).collect(),
                mode: ImageMode::Rgb,
                height: 4,
                width: 5,
            },
            ImageBuf {
                pixels: (100..127).collect(),
                mode: ImageMode::Rgb,
                height: 3,
                width: 3,
            },
        ];
        let column = crate::common::decoded_image_array(&imgs).unwrap();
        let images = DecodedColumn::new(&column, "image").unwrap();
        let (col, lengths) = images_into_buffer(
            images.len(),
            |row| Some((2, 2, images.get(row).ok()?.mode)),
            || (),
            |(), row, out| images.get(row).is_ok_and(|src| crop_into(src, 2, 2, out)),
        )
        .unwrap()
        .unwrap();
        assert_eq!(lengths, vec![12, 12]);
        let got = DecodedColumn::new(&col, "image").unwrap();
        for (row, img) in imgs.iter().enumerate() {
            let want = center_crop_image(img, 2, 2).unwrap();
            assert_eq!(got.get(row).unwrap().pixels, &want.pixels[..], "row {row}");
        }
        // A row smaller than the crop cannot be planned: the caller goes row by row.
        assert!(
            images_into_buffer(
                images.len(),
                |row| {
                    let src = images.get(row).ok()?;
                    (src.width >= 4).then_some((4, 2, src.mode))
                },
                || (),
                |(), row, out| images.get(row).is_ok_and(|src| crop_into(src, 4, 2, out)),
            )
            .is_none()
        );
    }
}
