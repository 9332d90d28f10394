//! Helpers shared by the media operators: column lookup, byte columns, decoded-image columns,
//! assembling output batches and reporting bad rows.

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryBuilder, BooleanArray, StringArray, StructArray,
    UInt32Array,
};
use arrow::buffer::{NullBuffer, ScalarBuffer};
use arrow::compute::filter;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use std::sync::Arc;
use weir_runtime::{Emitter, OperatorContext};
use weir_types::multimodal::{EXTENSION_TYPE_METADATA_KEY, ExtensionType};
use weir_types::multimodal::{
    ImageMetadata, ImageMode, ImageType, MediaType, image_decoded_fields,
};
use weir_types::{Error, Result};

/// How many leading bytes of a refused object go into its dead letter.
pub(crate) const RAW_PREVIEW: usize = 64;

/// Largest pixel payload put into one output batch (Binary offsets are `i32`).
pub(crate) const MAX_BATCH_PAYLOAD: usize = 1 << 30;

/// The index of column `name`, or a schema error listing the columns there are.
pub(crate) fn column_index(schema: &Schema, name: &str, op: &str) -> Result<usize> {
    schema.index_of(name).map_err(|_| {
        Error::schema(format!(
            "{op}: input has no column '{name}' (columns: {})",
            weir_types::column_names(schema)
        ))
    })
}

/// Rows of a column of bytes: Binary, LargeBinary, BinaryView or an encoded `weir.image` struct.
pub(crate) enum BytesColumn<'a> {
    Binary(&'a arrow::array::BinaryArray),
    Large(&'a arrow::array::LargeBinaryArray),
    View(&'a arrow::array::BinaryViewArray),
    Struct(&'a StructArray, Box<BytesColumn<'a>>),
}

impl<'a> BytesColumn<'a> {
    /// Reads `array` as bytes, or `None` when it is of another type.
    pub(crate) fn new(array: &'a ArrayRef) -> Option<Self> {
        Self::of(array.as_ref())
    }

    fn of(array: &'a dyn Array) -> Option<Self> {
        Some(match array.data_type() {
            DataType::Binary => BytesColumn::Binary(array.as_binary::<i32>()),
            DataType::LargeBinary => BytesColumn::Large(array.as_binary::<i64>()),
            DataType::BinaryView => BytesColumn::View(array.as_binary_view()),
            DataType::Struct(_) => {
                let s = array.as_struct();
                let inner = Self::of(s.column_by_name("bytes")?.as_ref())?;
                BytesColumn::Struct(s, Box::new(inner))
            }
            _ => return None,
        })
    }

    /// The bytes of `row`, `None` when null.
    pub(crate) fn get(&self, row: usize) -> Option<&'a [u8]> {
        match self {
            BytesColumn::Binary(a) => a.is_valid(row).then(|| a.value(row)),
            BytesColumn::Large(a) => a.is_valid(row).then(|| a.value(row)),
            BytesColumn::View(a) => a.is_valid(row).then(|| a.value(row)),
            BytesColumn::Struct(s, inner) => {
                if s.is_valid(row) {
                    inner.get(row)
                } else {
                    None
                }
            }
        }
    }
}

/// Plan time: checks that `field` holds bytes (Binary, LargeBinary, BinaryView or an encoded image).
pub(crate) fn check_bytes_field(field: &Field, op: &str) -> Result<()> {
    let ok = match field.data_type() {
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => true,
        DataType::Struct(fields) => {
            matches!(
                MediaType::of_field(field)?,
                Some(MediaType::Image {
                    encoded: Some(true)
                })
            ) || fields.find("bytes").is_some_and(|(_, f)| {
                matches!(
                    f.data_type(),
                    DataType::Binary | DataType::LargeBinary | DataType::BinaryView
                )
            })
        }
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::schema(format!(
            "{op}: column '{}' must be Binary (or an encoded weir.image), but it is {}",
            field.name(),
            field.data_type()
        )))
    }
}

/// Where a row came from, for dead letters: the `uri` column's value when the batch has one.
pub(crate) struct RowInputs {
    uris: Option<ArrayRef>,
}

impl RowInputs {
    pub(crate) fn new(batch: &RecordBatch) -> Self {
        let uris = batch
            .column_by_name("uri")
            .and_then(|c| match c.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(c.clone()),
                DataType::Struct(_) => c.as_struct().column_by_name("uri").cloned(),
                _ => None,
            });
        RowInputs { uris }
    }

    pub(crate) fn get(&self, row: usize) -> Option<String> {
        let a = self.uris.as_ref()?;
        if a.is_null(row) {
            return None;
        }
        match a.data_type() {
            DataType::Utf8 => Some(a.as_string::<i32>().value(row).to_owned()),
            DataType::LargeUtf8 => Some(a.as_string::<i64>().value(row).to_owned()),
            DataType::Utf8View => Some(a.as_string_view().value(row).to_owned()),
            _ => None,
        }
    }
}

/// Reports the bad rows (`(row, error, raw)`) through the context, in row order.
pub(crate) fn report_bad_rows(
    ctx: &mut OperatorContext,
    batch: &RecordBatch,
    bad: Vec<(usize, Error, Option<Vec<u8>>)>,
) -> Result<()> {
    if bad.is_empty() {
        return Ok(());
    }
    let inputs = RowInputs::new(batch);
    for (row, error, raw) in bad {
        ctx.bad_row(error, inputs.get(row), Some(format!("row {row}")), raw)?;
    }
    Ok(())
}

/// The first bytes of an object, for a dead letter.
pub(crate) fn preview(bytes: &[u8]) -> Vec<u8> {
    bytes[..bytes.len().min(RAW_PREVIEW)].to_vec()
}

/// `input` with `field` replacing the column of the same name, or appended.
pub(crate) fn schema_with(input: &SchemaRef, field: Field) -> SchemaRef {
    let mut fields: Vec<_> = input.fields().iter().cloned().collect();
    match input.index_of(field.name()) {
        Ok(i) => fields[i] = Arc::new(field),
        Err(_) => fields.push(Arc::new(field)),
    }
    Arc::new(Schema::new_with_metadata(fields, input.metadata().clone()))
}

/// The output batch: the rows of `batch` where `keep` is true, with `column` (already holding only
/// the kept rows) in place of (or after) the column named like the last field of `schema`'s change.
pub(crate) fn assemble(
    batch: &RecordBatch,
    keep: Option<&BooleanArray>,
    schema: &SchemaRef,
    name: &str,
    column: ArrayRef,
) -> Result<RecordBatch> {
    assemble_with(batch, keep, schema, vec![(name, column)])
}

/// [`assemble`] with several new columns, each by name.
pub(crate) fn assemble_with(
    batch: &RecordBatch,
    keep: Option<&BooleanArray>,
    schema: &SchemaRef,
    new: Vec<(&str, ArrayRef)>,
) -> Result<RecordBatch> {
    let mut columns = Vec::with_capacity(schema.fields().len());
    let mut new: Vec<(&str, Option<ArrayRef>)> =
        new.into_iter().map(|(n, c)| (n, Some(c))).collect();
    for f in schema.fields() {
        if let Some((_, column)) = new.iter_mut().find(|(n, _)| *n == f.name()) {
            if let Some(c) = column.take() {
                columns.push(c);
            }
            continue;
        }
        let src = batch.column_by_name(f.name()).ok_or_else(|| {
            Error::internal(format!(
                "column '{}' of the output is not in the input",
                f.name()
            ))
        })?;
        columns.push(match keep {
            Some(k) => filter(src, k)?,
            None => src.clone(),
        });
    }
    let rows = columns.first().map_or(0, |c| c.len());
    let options = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(
        schema.clone(),
        columns,
        &options,
    )?)
}

/// A decoded image owned in memory: HWC `u8` pixels.
#[derive(Clone, PartialEq, Eq)]
pub struct ImageBuf {
    /// Row-major HWC pixels.
    pub pixels: Vec<u8>,
    /// Pixel layout.
    pub mode: ImageMode,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
}

impl ImageBuf {
    /// The image, borrowed.
    pub(crate) fn view(&self) -> ImageView<'_> {
        ImageView {
            pixels: &self.pixels,
            mode: self.mode,
            height: self.height,
            width: self.width,
        }
    }
}

impl std::fmt::Debug for ImageBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ImageBuf({}x{} {}, {} bytes)",
            self.width,
            self.height,
            self.mode,
            self.pixels.len()
        )
    }
}

/// A decoded image borrowed from a column.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ImageView<'a> {
    pub pixels: &'a [u8],
    pub mode: ImageMode,
    pub height: u32,
    pub width: u32,
}

/// The metadata stored on a decoded-image field: encoded=false plus what is known of every row.
pub(crate) fn decoded_image_field(
    name: &str,
    mode: Option<ImageMode>,
    size: Option<(u32, u32)>,
) -> Field {
    let md = ImageMetadata {
        encoded: false,
        mode: mode.map(|m| m.as_str().to_owned()),
        height: size.map(|s| s.0),
        width: size.map(|s| s.1),
    };
    let t = ImageType { metadata: md };
    let f = weir_types::multimodal::image_field(name, false);
    let mut meta = f.metadata().clone();
    if let Some(m) = t.serialize_metadata() {
        meta.insert(EXTENSION_TYPE_METADATA_KEY.to_owned(), m);
    }
    f.with_metadata(meta)
}

/// Plan time: checks `field` is a decoded image and returns its metadata.
pub(crate) fn check_decoded_image(field: &Field, op: &str) -> Result<ImageMetadata> {
    weir_types::multimodal::check_field(
        field,
        &MediaType::Image {
            encoded: Some(false),
        },
    )
    .map_err(|e| Error::schema(format!("{op}: {}", e.message())))?;
    let t = field
        .try_extension_type::<ImageType>()
        .map_err(|e| Error::schema(format!("{op}: column '{}': {e}", field.name())))?;
    Ok(t.metadata)
}

/// Rows of a decoded-image column.
pub(crate) struct DecodedColumn<'a> {
    array: &'a StructArray,
    pixels: &'a BinaryArray,
    mode: &'a StringArray,
    height: &'a UInt32Array,
    width: &'a UInt32Array,
}

impl<'a> DecodedColumn<'a> {
    pub(crate) fn new(array: &'a ArrayRef, name: &str) -> Result<Self> {
        let bad = || {
            Error::internal(format!(
                "column '{name}' is not a decoded weir.image struct"
            ))
        };
        let s = array.as_struct_opt().ok_or_else(bad)?;
        let pixels = s
            .column_by_name("pixels")
            .and_then(|c| c.as_binary_opt::<i32>());
        let mode = s
            .column_by_name("mode")
            .and_then(|c| c.as_string_opt::<i32>());
        let height = s
            .column_by_name("height")
            .and_then(|c| c.as_primitive_opt::<arrow::datatypes::UInt32Type>());
        let width = s
            .column_by_name("width")
            .and_then(|c| c.as_primitive_opt::<arrow::datatypes::UInt32Type>());
        match (pixels, mode, height, width) {
            (Some(pixels), Some(mode), Some(height), Some(width)) => Ok(DecodedColumn {
                array: s,
                pixels,
                mode,
                height,
                width,
            }),
            _ => Err(bad()),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.array.len()
    }

    /// The image at `row`, or why it cannot be used.
    pub(crate) fn get(&self, row: usize) -> std::result::Result<ImageView<'a>, Error> {
        if self.array.is_null(row) || self.pixels.is_null(row) {
            return Err(Error::input("image is null"));
        }
        let mode_s = self.mode.value(row);
        let mode = ImageMode::parse(mode_s)
            .ok_or_else(|| Error::input(format!("unknown image mode '{mode_s}'")))?;
        let (height, width) = (self.height.value(row), self.width.value(row));
        let pixels = self.pixels.value(row);
        let expected = height as usize * width as usize * mode.channels();
        if pixels.len() != expected {
            return Err(Error::input(format!(
                "image of {width}x{height} {mode} has {} bytes of pixels, expected {expected}",
                pixels.len()
            )));
        }
        Ok(ImageView {
            pixels,
            mode,
            height,
            width,
        })
    }
}

/// Builds a decoded-image struct column from images (all rows valid).
pub(crate) fn decoded_image_array(images: &[ImageBuf]) -> Result<ArrayRef> {
    let total: usize = images.iter().map(|i| i.pixels.len()).sum();
    let mut pixels = BinaryBuilder::with_capacity(images.len(), total);
    let mut modes = Vec::with_capacity(images.len());
    let mut heights = Vec::with_capacity(images.len());
    let mut widths = Vec::with_capacity(images.len());
    for img in images {
        pixels.append_value(&img.pixels);
        modes.push(img.mode.as_str());
        heights.push(img.height);
        widths.push(img.width);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(pixels.finish()),
        Arc::new(StringArray::from(modes)),
        Arc::new(UInt32Array::new(ScalarBuffer::from(heights), None)),
        Arc::new(UInt32Array::new(ScalarBuffer::from(widths), None)),
    ];
    Ok(Arc::new(StructArray::try_new(
        image_decoded_fields(),
        columns,
        None::<NullBuffer>,
    )?))
}

/// Builds a decoded-image struct column whose pixels are already laid out back to back in
/// `pixels` (row `i` has `lengths[i]` bytes, all in `mode`), without copying them.
pub(crate) fn decoded_image_array_from_buffer(
    pixels: Vec<u8>,
    lengths: &[usize],
    dims: &[(u32, u32, ImageMode)],
) -> Result<ArrayRef> {
    let offsets = arrow::buffer::OffsetBuffer::<i32>::from_lengths(lengths.iter().copied());
    let values = arrow::buffer::Buffer::from_vec(pixels);
    let pixels = arrow::array::BinaryArray::try_new(offsets, values, None)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(pixels),
        Arc::new(StringArray::from_iter_values(
            dims.iter().map(|d| d.2.as_str()),
        )),
        Arc::new(UInt32Array::from_iter_values(dims.iter().map(|d| d.1))),
        Arc::new(UInt32Array::from_iter_values(dims.iter().map(|d| d.0))),
    ];
    Ok(Arc::new(StructArray::try_new(
        image_decoded_fields(),
        columns,
        None::<NullBuffer>,
    )?))
}

/// A row an operator made no image for: why, and the raw input for the dead letter when the
/// operator keeps it (a decoder keeps a preview of the bytes).
pub(crate) type Unmade = (Error, Option<Vec<u8>>);

/// Images made by an operator for one batch.
pub(crate) enum MadeImages {
    /// Every row written straight into one buffer: the image column (no copy) and each row's
    /// payload bytes (its pixels, plus whatever is emitted with it), for splitting batches.
    Contiguous(ArrayRef, Vec<usize>),
    /// Row by row, with each failed row's error.
    Each(Vec<std::result::Result<ImageBuf, Unmade>>),
}

impl MadeImages {
    /// Row by row, from results that keep no raw input.
    pub(crate) fn each(results: Vec<Result<ImageBuf>>) -> Self {
        MadeImages::Each(
            results
                .into_iter()
                .map(|r| r.map_err(|e| (e, None)))
                .collect(),
        )
    }

    /// Emits the images made for `batch` as column `name` of `schema`, with the `extra` column
    /// (one row per image made) under its name: the one-buffer column as slices, or the rows
    /// that succeeded, with each failed row reported as a bad row.
    pub(crate) fn emit(
        self,
        batch: &RecordBatch,
        schema: &SchemaRef,
        name: &str,
        extra: Option<(&str, &ArrayRef)>,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let results = match self {
            MadeImages::Contiguous(col, lengths) => {
                return emit_image_column(batch, schema, name, &col, &lengths, extra, out);
            }
            MadeImages::Each(results) => results,
        };
        let mut bad = Vec::new();
        let mut images = Vec::with_capacity(results.len());
        for (row, r) in results.into_iter().enumerate() {
            match r {
                Ok(i) => images.push(Some(i)),
                Err((e, raw)) => {
                    bad.push((row, e, raw));
                    images.push(None);
                }
            }
        }
        report_bad_rows(ctx, batch, bad)?;
        emit_images(batch, schema, name, images, extra, out)
    }
}

/// Cuts `buf` into consecutive slices of `lengths` (which must add up to at most its length).
pub(crate) fn row_slices<'a>(buf: &'a mut [u8], lengths: &[usize]) -> Vec<&'a mut [u8]> {
    let mut slices = Vec::with_capacity(lengths.len());
    let mut rest = buf;
    for len in lengths {
        let (head, tail) = rest.split_at_mut(*len);
        slices.push(head);
        rest = tail;
    }
    slices
}

/// Makes one image per row straight into one shared buffer, in parallel. `plan(row)` gives the
/// row's output (width, height, mode), or `None` when the row cannot be made (the caller then
/// goes row by row and reports the error); `fill(state, row, out)` writes the row's pixels into
/// its slice and says whether it could, with `state` made by `init` once per worker thread.
/// Returns `None` when any row cannot go this way.
pub(crate) fn images_into_buffer<S>(
    rows: usize,
    plan: impl Fn(usize) -> Option<(u32, u32, ImageMode)> + Sync,
    init: impl Fn() -> S + Sync + Send,
    fill: impl Fn(&mut S, usize, &mut [u8]) -> bool + Sync + Send,
) -> Option<Result<(ArrayRef, Vec<usize>)>> {
    use rayon::prelude::*;
    let dims: Vec<(u32, u32, ImageMode)> = (0..rows).map(&plan).collect::<Option<_>>()?;
    let lengths: Vec<usize> = dims
        .iter()
        .map(|(w, h, m)| *w as usize * *h as usize * m.channels())
        .collect();
    let mut buf = vec![0u8; lengths.iter().sum()];
    let all = row_slices(&mut buf, &lengths)
        .into_par_iter()
        .enumerate()
        .map_init(init, |state, (row, out)| fill(state, row, out))
        .collect::<Vec<bool>>()
        .into_iter()
        .all(|ok| ok);
    if !all {
        return None;
    }
    Some(decoded_image_array_from_buffer(buf, &lengths, &dims).map(|col| (col, lengths)))
}

/// Emits `batch` with `column` (one image per row, `sizes` bytes of payload each) as column
/// `name`, and the `extra` column (one row per row, e.g. a fused tensor) under its name, split so
/// no batch carries more than [`MAX_BATCH_PAYLOAD`] bytes of payload (slices, no copies).
fn emit_image_column(
    batch: &RecordBatch,
    schema: &SchemaRef,
    name: &str,
    column: &ArrayRef,
    sizes: &[usize],
    extra: Option<(&str, &ArrayRef)>,
    out: &mut weir_runtime::Emitter,
) -> Result<()> {
    for range in payload_groups(sizes) {
        let part = batch.slice(range.start, range.len());
        let mut new = vec![(name, column.slice(range.start, range.len()))];
        new.extend(extra.map(|(n, c)| (n, c.slice(range.start, range.len()))));
        out.emit(assemble_with(&part, None, schema, new)?);
    }
    Ok(())
}

/// Splits `items` (with their payload sizes) into consecutive groups of at most
/// [`MAX_BATCH_PAYLOAD`] bytes (a single larger item gets a group of its own).
pub(crate) fn payload_groups(sizes: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    let mut acc = 0usize;
    for (i, s) in sizes.iter().enumerate() {
        if acc + s > MAX_BATCH_PAYLOAD && i > start {
            groups.push(start..i);
            start = i;
            acc = 0;
        }
        acc += s;
    }
    if start < sizes.len() {
        groups.push(start..sizes.len());
    }
    groups
}

/// Emits the good rows of `batch` (those with `Some` image, in order) with the images as column
/// `name`, and the `extra` column (one row per good row) under its name, split so no batch
/// carries more than [`MAX_BATCH_PAYLOAD`] bytes of pixels.
fn emit_images(
    batch: &RecordBatch,
    schema: &SchemaRef,
    name: &str,
    images: Vec<Option<ImageBuf>>,
    extra: Option<(&str, &ArrayRef)>,
    out: &mut weir_runtime::Emitter,
) -> Result<()> {
    let keep_mask: Vec<bool> = images.iter().map(Option::is_some).collect();
    let all = keep_mask.iter().all(|k| *k);
    let good: Vec<ImageBuf> = images.into_iter().flatten().collect();
    let kept = if all {
        batch.clone()
    } else {
        let mask = BooleanArray::from(keep_mask);
        arrow::compute::filter_record_batch(batch, &mask)?
    };
    let sizes: Vec<usize> = good.iter().map(|i| i.pixels.len()).collect();
    for range in payload_groups(&sizes) {
        let part = kept.slice(range.start, range.len());
        let mut new = vec![(name, decoded_image_array(&good[range.clone()])?)];
        new.extend(extra.map(|(n, c)| (n, c.slice(range.start, range.len()))));
        out.emit(assemble_with(&part, None, schema, new)?);
    }
    Ok(())
}

/// Parses a size such as `64MiB`, `10 MB` or `1024`.
pub(crate) fn parse_size(s: &str, what: &str) -> Result<u64> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| Error::config(format!("{what} '{s}' is not a size such as 64MiB: {e}")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn groups_split_large_payloads() {
        let g = payload_groups(&[
            MAX_BATCH_PAYLOAD / 2,
            MAX_BATCH_PAYLOAD / 2,
            1,
            MAX_BATCH_PAYLOAD * 2,
        ]);
        assert_eq!(g, vec![0..2, 2..3, 3..4]);
        assert!(payload_groups(&[]).is_empty());
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("64MiB", "max_size").unwrap(), 64 << 20);
        assert_eq!(parse_size("1024", "max_size").unwrap(), 1024);
        assert!(parse_size("lots", "max_size").is_err());
    }
}
