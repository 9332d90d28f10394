//! Multimodal columns as Arrow extension types: tensors, vectors, images, audio and object
//! references.
//!
//! Each type is a plain Arrow storage type plus the field metadata `ARROW:extension:name` and
//! `ARROW:extension:metadata`, so it survives Parquet, IPC and Flight and other Arrow tools can read
//! it (pyarrow shows unknown extension types as their storage type and keeps the metadata).
//!
//! | type | name | storage | metadata |
//! |---|---|---|---|
//! | fixed-shape tensor | `arrow.fixed_shape_tensor` (canonical) | `FixedSizeList<T>(product of shape)` | `{"shape":[..]}` |
//! | variable-shape tensor | `arrow.variable_shape_tensor` (canonical) | `struct<data: List<T>, shape: FixedSizeList<Int32>(ndim)>` | `{}` |
//! | vector | `weir.vector` | `FixedSizeList<T>(dim)` | `{"dim":N}` |
//! | image, encoded | `weir.image` | `struct<bytes: Binary, format: Utf8>` | `{"encoded":true}` |
//! | image, decoded | `weir.image` | `struct<pixels: Binary, mode: Utf8, height: UInt32, width: UInt32>` | `{"encoded":false}` |
//! | audio | `weir.audio` | `struct<samples: List<Float32>, sample_rate: UInt32, channels: UInt16>` | none |
//! | object reference | `weir.object_ref` | `struct<uri: Utf8, offset: UInt64, length: UInt64?, version: Utf8?>` | none |
//!
//! Decoded image pixels are row-major HWC `u8` (`mode` is `RGB`, `RGBA` or `L`); audio samples are
//! interleaved `f32` in `[-1, 1]`. Tensor and vector element types: `u8`, `i8`, `i32`, `i64`, `f16`,
//! `f32`, `f64` (vectors: `f32`, `f16`, `f64`, `i8`, `u8`).
//!
//! Plan-time checks go through [`check_field`], whose error names the column and both sides.

use crate::error::{Error, Result};
use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, FixedSizeListArray, Int32Array, ListArray, PrimitiveArray,
    StructArray,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Fields};
use arrow_schema::ArrowError;
pub use arrow_schema::extension::{
    EXTENSION_TYPE_METADATA_KEY, EXTENSION_TYPE_NAME_KEY, ExtensionType, FixedShapeTensor,
    VariableShapeTensor,
};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Whether `dtype` may be the element type of a tensor (`u8`, `i8`, `i32`, `i64`, `f16`, `f32`,
/// `f64`).
pub fn is_tensor_element_type(dtype: &DataType) -> bool {
    matches!(
        dtype,
        DataType::UInt8
            | DataType::Int8
            | DataType::Int32
            | DataType::Int64
            | DataType::Float16
            | DataType::Float32
            | DataType::Float64
    )
}

/// Whether `dtype` may be the element type of a vector (`f32`, `f16`, `f64`, `i8`, `u8`).
pub fn is_vector_element_type(dtype: &DataType) -> bool {
    matches!(
        dtype,
        DataType::Float32
            | DataType::Float16
            | DataType::Float64
            | DataType::Int8
            | DataType::UInt8
    )
}

fn arrow_err(e: ArrowError) -> Error {
    Error::schema("invalid multimodal column").with_source(e)
}

fn i32_len(n: usize, what: &str) -> Result<i32> {
    i32::try_from(n).map_err(|_| Error::schema(format!("{what} {n} is too large for arrow")))
}

/// Does `a` have the same shape as `b`: same types and, for structs, same child names, ignoring
/// nullability and list item names.
fn same_storage(a: &DataType, b: &DataType) -> bool {
    match (a, b) {
        (DataType::Struct(x), DataType::Struct(y)) => {
            x.len() == y.len()
                && x.iter().zip(y.iter()).all(|(x, y)| {
                    x.name() == y.name() && same_storage(x.data_type(), y.data_type())
                })
        }
        (DataType::List(x), DataType::List(y))
        | (DataType::LargeList(x), DataType::LargeList(y)) => {
            same_storage(x.data_type(), y.data_type())
        }
        (DataType::FixedSizeList(x, n), DataType::FixedSizeList(y, m)) => {
            n == m && same_storage(x.data_type(), y.data_type())
        }
        _ => a == b,
    }
}

fn with_extension(field: Field, name: &str, metadata: Option<String>) -> Field {
    let mut md = field.metadata().clone();
    md.insert(EXTENSION_TYPE_NAME_KEY.to_owned(), name.to_owned());
    match metadata {
        Some(m) => md.insert(EXTENSION_TYPE_METADATA_KEY.to_owned(), m),
        None => md.remove(EXTENSION_TYPE_METADATA_KEY),
    };
    field.with_metadata(md)
}

// ---------------------------------------------------------------------------------------------
// Tensors (canonical)

/// The storage of a fixed-shape tensor with element type `dtype` and `shape`.
pub fn fixed_tensor_data_type(dtype: &DataType, shape: &[usize]) -> Result<DataType> {
    let size: usize = shape.iter().product();
    Ok(DataType::new_fixed_size_list(
        dtype.clone(),
        i32_len(size, "tensor size")?,
        false,
    ))
}

/// A nullable field of the canonical `arrow.fixed_shape_tensor` type: one tensor of `shape` per row.
///
/// `dtype` should be a tensor element type ([`is_tensor_element_type`]); [`check_field`] refuses
/// others. A shape whose element count exceeds `i32::MAX` is clamped (and refused by arrow later).
pub fn tensor_field(name: impl Into<String>, dtype: DataType, shape: &[usize]) -> Field {
    let size: usize = shape.iter().product();
    let size = i32::try_from(size).unwrap_or(i32::MAX);
    let storage = DataType::new_fixed_size_list(dtype, size, true);
    with_fixed_shape_tensor(Field::new(name, storage, true), shape)
}

/// `field` (a `FixedSizeList` of the tensor's elements) marked `arrow.fixed_shape_tensor` of
/// per-row `shape`. The metadata is `{"shape":[...]}` only: arrow-rs's own serialiser adds
/// `"dim_names":null,"permutations":null`, which pyarrow before 26 refuses ("Invalid dim_names")
/// when the schema crosses the Arrow C data interface into Python.
pub fn with_fixed_shape_tensor(field: Field, shape: &[usize]) -> Field {
    let metadata = serde_json::json!({ "shape": shape }).to_string();
    with_extension(field, FixedShapeTensor::NAME, Some(metadata))
}

/// The element type and shape of a field of type `arrow.fixed_shape_tensor`, or `None` when the
/// field is not a (valid) fixed-shape tensor.
///
/// Accepts both item nullabilities: weir writes nullable items (`FixedSizeList<item: T>`), which is
/// what Arrow C++ / pyarrow require to recognise the type, while arrow-rs's own
/// [`FixedShapeTensor`] only accepts non-nullable items. Use this (or [`MediaType::of_field`])
/// rather than `field.try_extension_type::<FixedShapeTensor>()`.
pub fn fixed_tensor_shape(field: &Field) -> Option<(DataType, Vec<usize>)> {
    if field.extension_type_name()? != FixedShapeTensor::NAME {
        return None;
    }
    let DataType::FixedSizeList(item, size) = field.data_type() else {
        return None;
    };
    let md: serde_json::Value = serde_json::from_str(field.extension_type_metadata()?).ok()?;
    let shape = md
        .get("shape")?
        .as_array()?
        .iter()
        .map(|v| v.as_u64().and_then(|v| usize::try_from(v).ok()))
        .collect::<Option<Vec<usize>>>()?;
    let product: usize = shape.iter().product();
    (usize::try_from(*size).ok()? == product).then(|| (item.data_type().clone(), shape))
}

/// Builds a fixed-shape tensor column of `n_rows` tensors of `shape` from `values` (all rows
/// concatenated, row-major). Returns the field (named `name`) and the array.
pub fn fixed_tensor_array<T: ArrowPrimitiveType>(
    name: &str,
    values: Vec<T::Native>,
    shape: &[usize],
    n_rows: usize,
) -> Result<(Field, ArrayRef)> {
    if !is_tensor_element_type(&T::DATA_TYPE) {
        return Err(Error::schema(format!(
            "tensor column '{name}': element type {} is not supported (u8, i8, i32, i64, f16, f32, f64)",
            T::DATA_TYPE
        )));
    }
    let size: usize = shape.iter().product();
    if values.len() != size * n_rows {
        return Err(Error::schema(format!(
            "tensor column '{name}': {} values do not make {n_rows} tensors of shape {shape:?} ({} values)",
            values.len(),
            size * n_rows
        )));
    }
    let field = tensor_field(name, T::DATA_TYPE, shape);
    let item = Arc::new(Field::new_list_field(T::DATA_TYPE, true));
    let values = PrimitiveArray::<T>::new(ScalarBuffer::from(values), None);
    let array =
        FixedSizeListArray::try_new(item, i32_len(size, "tensor size")?, Arc::new(values), None)
            .map_err(arrow_err)?;
    Ok((field, Arc::new(array)))
}

/// The storage of a variable-shape tensor with element type `dtype` and `ndim` dimensions.
pub fn variable_tensor_data_type(dtype: &DataType, ndim: usize) -> Result<DataType> {
    Ok(DataType::Struct(variable_tensor_fields(dtype, ndim)?))
}

fn variable_tensor_fields(dtype: &DataType, ndim: usize) -> Result<Fields> {
    Ok(Fields::from(vec![
        Field::new_list("data", Field::new_list_field(dtype.clone(), false), false),
        Field::new(
            "shape",
            DataType::new_fixed_size_list(DataType::Int32, i32_len(ndim, "tensor rank")?, false),
            false,
        ),
    ]))
}

/// A nullable field of the canonical `arrow.variable_shape_tensor` type with `ndim` dimensions.
pub fn variable_tensor_field(
    name: impl Into<String>,
    dtype: DataType,
    ndim: usize,
) -> Result<Field> {
    let storage = variable_tensor_data_type(&dtype, ndim)?;
    Ok(with_extension(
        Field::new(name, storage, true),
        VariableShapeTensor::NAME,
        Some("{}".to_owned()),
    ))
}

/// Builds a variable-shape tensor column from per-row `(values, shape)`; every shape has `ndim`
/// dimensions and `values.len()` equals the product of its shape.
pub fn variable_tensor_array<T: ArrowPrimitiveType>(
    name: &str,
    ndim: usize,
    rows: impl IntoIterator<Item = (Vec<T::Native>, Vec<usize>)>,
) -> Result<(Field, ArrayRef)> {
    if !is_tensor_element_type(&T::DATA_TYPE) {
        return Err(Error::schema(format!(
            "tensor column '{name}': element type {} is not supported (u8, i8, i32, i64, f16, f32, f64)",
            T::DATA_TYPE
        )));
    }
    let mut data: Vec<T::Native> = Vec::new();
    let mut lengths = Vec::new();
    let mut shapes: Vec<i32> = Vec::new();
    for (row, (values, shape)) in rows.into_iter().enumerate() {
        if shape.len() != ndim {
            return Err(Error::schema(format!(
                "tensor column '{name}', row {row}: shape {shape:?} has {} dimensions, expected {ndim}",
                shape.len()
            )));
        }
        let size: usize = shape.iter().product();
        if size != values.len() {
            return Err(Error::schema(format!(
                "tensor column '{name}', row {row}: {} values do not fill shape {shape:?}",
                values.len()
            )));
        }
        for d in &shape {
            shapes.push(i32_len(*d, "tensor dimension")?);
        }
        lengths.push(values.len());
        data.extend(values);
    }
    let fields = variable_tensor_fields(&T::DATA_TYPE, ndim)?;
    let item = Arc::new(Field::new_list_field(T::DATA_TYPE, false));
    let data = ListArray::try_new(
        item,
        OffsetBuffer::from_lengths(lengths),
        Arc::new(PrimitiveArray::<T>::new(ScalarBuffer::from(data), None)),
        None,
    )
    .map_err(arrow_err)?;
    let shape = FixedSizeListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Int32, false)),
        i32_len(ndim, "tensor rank")?,
        Arc::new(Int32Array::from(shapes)),
        None,
    )
    .map_err(arrow_err)?;
    let array = StructArray::try_new(fields, vec![Arc::new(data), Arc::new(shape)], None)
        .map_err(arrow_err)?;
    let field = variable_tensor_field(name, T::DATA_TYPE, ndim)?;
    Ok((field, Arc::new(array)))
}

// ---------------------------------------------------------------------------------------------
// Vector

/// Metadata of [`VectorType`]: `{"dim": N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VectorMetadata {
    /// Number of elements per vector.
    pub dim: usize,
}

/// `weir.vector`: an embedding of fixed dimension, storage `FixedSizeList<T>(dim)`.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorType {
    /// Element type (`f32`, `f16`, `f64`, `i8`, `u8`).
    pub value_type: DataType,
    /// The metadata (dimension).
    pub metadata: VectorMetadata,
}

impl VectorType {
    /// A vector type of `dim` elements of `value_type`.
    pub fn new(value_type: DataType, dim: usize) -> Self {
        VectorType {
            value_type,
            metadata: VectorMetadata { dim },
        }
    }

    /// The storage type.
    pub fn storage(&self) -> DataType {
        DataType::new_fixed_size_list(
            self.value_type.clone(),
            i32::try_from(self.metadata.dim).unwrap_or(i32::MAX),
            false,
        )
    }
}

impl ExtensionType for VectorType {
    const NAME: &'static str = "weir.vector";
    type Metadata = VectorMetadata;

    fn metadata(&self) -> &Self::Metadata {
        &self.metadata
    }

    fn serialize_metadata(&self) -> Option<String> {
        serde_json::to_string(&self.metadata).ok()
    }

    fn deserialize_metadata(
        metadata: Option<&str>,
    ) -> std::result::Result<Self::Metadata, ArrowError> {
        let m = metadata.ok_or_else(|| {
            ArrowError::InvalidArgumentError("weir.vector needs metadata {\"dim\": N}".into())
        })?;
        serde_json::from_str(m).map_err(|e| {
            ArrowError::InvalidArgumentError(format!("invalid weir.vector metadata '{m}': {e}"))
        })
    }

    fn supports_data_type(&self, data_type: &DataType) -> std::result::Result<(), ArrowError> {
        match data_type {
            DataType::FixedSizeList(item, n)
                if usize::try_from(*n).ok() == Some(self.metadata.dim)
                    && item.data_type() == &self.value_type
                    && is_vector_element_type(item.data_type()) =>
            {
                Ok(())
            }
            other => Err(ArrowError::InvalidArgumentError(format!(
                "weir.vector storage must be {}, found {other}",
                self.storage()
            ))),
        }
    }

    fn try_new(
        data_type: &DataType,
        metadata: Self::Metadata,
    ) -> std::result::Result<Self, ArrowError> {
        let DataType::FixedSizeList(item, _) = data_type else {
            return Err(ArrowError::InvalidArgumentError(format!(
                "weir.vector storage must be a FixedSizeList, found {data_type}"
            )));
        };
        let v = VectorType {
            value_type: item.data_type().clone(),
            metadata,
        };
        v.supports_data_type(data_type)?;
        Ok(v)
    }
}

/// A nullable `weir.vector` field of `dim` elements of `value_type`.
pub fn vector_field(name: impl Into<String>, value_type: DataType, dim: usize) -> Field {
    let v = VectorType::new(value_type, dim);
    with_extension(
        Field::new(name, v.storage(), true),
        VectorType::NAME,
        v.serialize_metadata(),
    )
}

/// Builds a `weir.vector` column from `values` (all vectors concatenated).
pub fn vector_array<T: ArrowPrimitiveType>(
    name: &str,
    values: Vec<T::Native>,
    dim: usize,
) -> Result<(Field, ArrayRef)> {
    if !is_vector_element_type(&T::DATA_TYPE) || dim == 0 || values.len() % dim != 0 {
        return Err(Error::schema(format!(
            "vector column '{name}': {} values of {} do not make vectors of dimension {dim}",
            values.len(),
            T::DATA_TYPE
        )));
    }
    let item = Arc::new(Field::new_list_field(T::DATA_TYPE, false));
    let values = PrimitiveArray::<T>::new(ScalarBuffer::from(values), None);
    let array = FixedSizeListArray::try_new(
        item,
        i32_len(dim, "vector dimension")?,
        Arc::new(values),
        None,
    )
    .map_err(arrow_err)?;
    Ok((vector_field(name, T::DATA_TYPE, dim), Arc::new(array)))
}

// ---------------------------------------------------------------------------------------------
// Image

/// Metadata of [`ImageType`]: `{"encoded": true|false}`, and for decoded images optionally what
/// every row is known to have (`"mode"`, `"height"`, `"width"`), so that a fixed tensor shape can be
/// planned (for example after `center_crop`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageMetadata {
    /// Whether the column holds encoded files (bytes + format) or decoded pixels.
    pub encoded: bool,
    /// The mode of every row (`RGB`, `RGBA`, `L`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The height of every row, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// The width of every row, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
}

/// `weir.image`: encoded (`struct<bytes: Binary, format: Utf8>`) or decoded
/// (`struct<pixels: Binary, mode: Utf8, height: UInt32, width: UInt32>`, pixels HWC `u8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageType {
    /// The metadata.
    pub metadata: ImageMetadata,
}

/// Pixel layouts of a decoded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageMode {
    /// 8-bit grayscale, one channel.
    L,
    /// 8-bit red, green, blue.
    Rgb,
    /// 8-bit red, green, blue, alpha.
    Rgba,
}

impl ImageMode {
    /// Channels per pixel.
    pub fn channels(self) -> usize {
        match self {
            ImageMode::L => 1,
            ImageMode::Rgb => 3,
            ImageMode::Rgba => 4,
        }
    }

    /// The name stored in the `mode` column.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageMode::L => "L",
            ImageMode::Rgb => "RGB",
            ImageMode::Rgba => "RGBA",
        }
    }

    /// Parses `RGB`, `RGBA` or `L` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "L" => Some(ImageMode::L),
            "RGB" => Some(ImageMode::Rgb),
            "RGBA" => Some(ImageMode::Rgba),
            _ => None,
        }
    }
}

impl fmt::Display for ImageMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Children of the encoded image struct.
pub fn image_encoded_fields() -> Fields {
    Fields::from(vec![
        Field::new("bytes", DataType::Binary, false),
        Field::new("format", DataType::Utf8, true),
    ])
}

/// Children of the decoded image struct.
pub fn image_decoded_fields() -> Fields {
    Fields::from(vec![
        Field::new("pixels", DataType::Binary, false),
        Field::new("mode", DataType::Utf8, false),
        Field::new("height", DataType::UInt32, false),
        Field::new("width", DataType::UInt32, false),
    ])
}

impl ImageType {
    /// An image type, encoded or decoded.
    pub fn new(encoded: bool) -> Self {
        ImageType {
            metadata: ImageMetadata {
                encoded,
                ..Default::default()
            },
        }
    }

    /// The storage type.
    pub fn storage(&self) -> DataType {
        if self.metadata.encoded {
            DataType::Struct(image_encoded_fields())
        } else {
            DataType::Struct(image_decoded_fields())
        }
    }
}

impl ExtensionType for ImageType {
    const NAME: &'static str = "weir.image";
    type Metadata = ImageMetadata;

    fn metadata(&self) -> &Self::Metadata {
        &self.metadata
    }

    fn serialize_metadata(&self) -> Option<String> {
        serde_json::to_string(&self.metadata).ok()
    }

    fn deserialize_metadata(
        metadata: Option<&str>,
    ) -> std::result::Result<Self::Metadata, ArrowError> {
        let m = metadata.ok_or_else(|| {
            ArrowError::InvalidArgumentError("weir.image needs metadata {\"encoded\": bool}".into())
        })?;
        serde_json::from_str(m).map_err(|e| {
            ArrowError::InvalidArgumentError(format!("invalid weir.image metadata '{m}': {e}"))
        })
    }

    fn supports_data_type(&self, data_type: &DataType) -> std::result::Result<(), ArrowError> {
        if same_storage(data_type, &self.storage()) {
            Ok(())
        } else {
            Err(ArrowError::InvalidArgumentError(format!(
                "weir.image ({}) storage must be {}, found {data_type}",
                if self.metadata.encoded {
                    "encoded"
                } else {
                    "decoded"
                },
                self.storage()
            )))
        }
    }

    fn try_new(
        data_type: &DataType,
        metadata: Self::Metadata,
    ) -> std::result::Result<Self, ArrowError> {
        let t = ImageType { metadata };
        t.supports_data_type(data_type)?;
        Ok(t)
    }
}

/// A nullable `weir.image` field, encoded or decoded.
pub fn image_field(name: impl Into<String>, encoded: bool) -> Field {
    let t = ImageType::new(encoded);
    with_extension(
        Field::new(name, t.storage(), true),
        ImageType::NAME,
        t.serialize_metadata(),
    )
}

/// `impl ExtensionType` for a unit type whose storage is `struct<...>` with the children that
/// `$fields()` returns, and which has no metadata (audio, object references).
macro_rules! struct_extension_without_metadata {
    ($ty:ident, $name:literal, $fields:ident) => {
        impl ExtensionType for $ty {
            const NAME: &'static str = $name;
            type Metadata = ();

            fn metadata(&self) -> &Self::Metadata {
                &()
            }

            fn serialize_metadata(&self) -> Option<String> {
                None
            }

            fn deserialize_metadata(
                _metadata: Option<&str>,
            ) -> std::result::Result<(), ArrowError> {
                Ok(())
            }

            fn supports_data_type(
                &self,
                data_type: &DataType,
            ) -> std::result::Result<(), ArrowError> {
                let expected = DataType::Struct($fields());
                if same_storage(data_type, &expected) {
                    Ok(())
                } else {
                    Err(ArrowError::InvalidArgumentError(format!(
                        concat!($name, " storage must be {}, found {}"),
                        expected, data_type
                    )))
                }
            }

            fn try_new(
                data_type: &DataType,
                _metadata: (),
            ) -> std::result::Result<Self, ArrowError> {
                $ty.supports_data_type(data_type)?;
                Ok($ty)
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Audio

/// `weir.audio`: `struct<samples: List<Float32>, sample_rate: UInt32, channels: UInt16>`, samples
/// interleaved. No metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AudioType;

/// Children of the audio struct.
pub fn audio_fields() -> Fields {
    Fields::from(vec![
        Field::new_list(
            "samples",
            Field::new_list_field(DataType::Float32, false),
            false,
        ),
        Field::new("sample_rate", DataType::UInt32, false),
        Field::new("channels", DataType::UInt16, false),
    ])
}

struct_extension_without_metadata!(AudioType, "weir.audio", audio_fields);

/// A nullable `weir.audio` field.
pub fn audio_field(name: impl Into<String>) -> Field {
    with_extension(
        Field::new(name, DataType::Struct(audio_fields()), true),
        AudioType::NAME,
        None,
    )
}

// ---------------------------------------------------------------------------------------------
// Object reference

/// `weir.object_ref`: `struct<uri: Utf8, offset: UInt64, length: UInt64 (nullable), version: Utf8
/// (nullable)>`, a handle to (a byte range of) an object that stays in its store. No metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ObjectRefType;

/// Children of the object reference struct.
pub fn object_ref_fields() -> Fields {
    Fields::from(vec![
        Field::new("uri", DataType::Utf8, false),
        Field::new("offset", DataType::UInt64, false),
        Field::new("length", DataType::UInt64, true),
        Field::new("version", DataType::Utf8, true),
    ])
}

struct_extension_without_metadata!(ObjectRefType, "weir.object_ref", object_ref_fields);

/// A nullable `weir.object_ref` field.
pub fn object_ref_field(name: impl Into<String>) -> Field {
    with_extension(
        Field::new(name, DataType::Struct(object_ref_fields()), true),
        ObjectRefType::NAME,
        None,
    )
}

// ---------------------------------------------------------------------------------------------
// Plan-time checks

/// A multimodal type as found on a field, or as expected by an operator (`None` = any).
#[derive(Debug, Clone, PartialEq)]
pub enum MediaType {
    /// `arrow.fixed_shape_tensor`.
    FixedTensor {
        /// Element type.
        dtype: Option<DataType>,
        /// Shape of each row's tensor.
        shape: Option<Vec<usize>>,
    },
    /// `arrow.variable_shape_tensor`.
    VariableTensor {
        /// Element type.
        dtype: Option<DataType>,
        /// Number of dimensions.
        ndim: Option<usize>,
    },
    /// `weir.vector`.
    Vector {
        /// Element type.
        dtype: Option<DataType>,
        /// Dimension.
        dim: Option<usize>,
    },
    /// `weir.image`.
    Image {
        /// Encoded or decoded.
        encoded: Option<bool>,
    },
    /// `weir.audio`.
    Audio,
    /// `weir.object_ref`.
    ObjectRef,
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or_else(|| "*".to_owned(), |v| v.to_string())
}

impl fmt::Display for MediaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MediaType::FixedTensor { dtype, shape } => write!(
                f,
                "arrow.fixed_shape_tensor<{}, shape {}>",
                opt(dtype),
                shape
                    .as_ref()
                    .map_or_else(|| "*".to_owned(), |s| format!("{s:?}"))
            ),
            MediaType::VariableTensor { dtype, ndim } => write!(
                f,
                "arrow.variable_shape_tensor<{}, ndim {}>",
                opt(dtype),
                opt(ndim)
            ),
            MediaType::Vector { dtype, dim } => {
                write!(f, "weir.vector<{}, dim {}>", opt(dtype), opt(dim))
            }
            MediaType::Image { encoded } => match encoded {
                Some(true) => f.write_str("weir.image<encoded>"),
                Some(false) => f.write_str("weir.image<decoded>"),
                None => f.write_str("weir.image"),
            },
            MediaType::Audio => f.write_str("weir.audio"),
            MediaType::ObjectRef => f.write_str("weir.object_ref"),
        }
    }
}

impl MediaType {
    /// The multimodal type of `field`: `Ok(None)` when it has no extension name or one that is not
    /// multimodal, an error when the name is known but metadata or storage do not fit.
    pub fn of_field(field: &Field) -> Result<Option<MediaType>> {
        let col = field.name();
        let bad = |e: ArrowError| {
            Error::schema(format!(
                "column '{col}' is marked {} but is not valid: {e}",
                field.extension_type_name().unwrap_or("?")
            ))
        };
        let t = match field.extension_type_name() {
            Some(FixedShapeTensor::NAME) => {
                let (dtype, shape) = fixed_tensor_shape(field).ok_or_else(|| {
                    Error::schema(format!(
                        "column '{col}' is marked arrow.fixed_shape_tensor but its metadata {:?} does not fit its storage {}",
                        field.extension_type_metadata(),
                        field.data_type()
                    ))
                })?;
                MediaType::FixedTensor {
                    dtype: Some(dtype),
                    shape: Some(shape),
                }
            }
            Some(VariableShapeTensor::NAME) => {
                let t = field
                    .try_extension_type::<VariableShapeTensor>()
                    .map_err(bad)?;
                MediaType::VariableTensor {
                    dtype: Some(t.value_type().clone()),
                    ndim: Some(t.dimensions()),
                }
            }
            Some(VectorType::NAME) => {
                let t = field.try_extension_type::<VectorType>().map_err(bad)?;
                MediaType::Vector {
                    dtype: Some(t.value_type),
                    dim: Some(t.metadata.dim),
                }
            }
            Some(ImageType::NAME) => {
                let t = field.try_extension_type::<ImageType>().map_err(bad)?;
                MediaType::Image {
                    encoded: Some(t.metadata.encoded),
                }
            }
            Some(AudioType::NAME) => {
                field.try_extension_type::<AudioType>().map_err(bad)?;
                MediaType::Audio
            }
            Some(ObjectRefType::NAME) => {
                field.try_extension_type::<ObjectRefType>().map_err(bad)?;
                MediaType::ObjectRef
            }
            _ => return Ok(None),
        };
        Ok(Some(t))
    }

    fn kind(&self) -> &'static str {
        match self {
            MediaType::FixedTensor { .. } => FixedShapeTensor::NAME,
            MediaType::VariableTensor { .. } => VariableShapeTensor::NAME,
            MediaType::Vector { .. } => VectorType::NAME,
            MediaType::Image { .. } => ImageType::NAME,
            MediaType::Audio => AudioType::NAME,
            MediaType::ObjectRef => ObjectRefType::NAME,
        }
    }
}

fn mismatch<T: PartialEq + fmt::Debug>(
    what: &str,
    found: &Option<T>,
    expected: &Option<T>,
) -> Option<String> {
    match (found, expected) {
        (Some(f), Some(e)) if f != e => Some(format!("{what} {f:?}, expected {e:?}")),
        _ => None,
    }
}

/// Checks at plan time that `field` is of the multimodal type `expected` (`None` parts of
/// `expected` match anything). The error names the column and both sides, e.g.
/// `column 'emb' has vector dim 384, expected 768 (found weir.vector<Float32, dim 384>, expected
/// weir.vector<Float32, dim 768>)`.
pub fn check_field(field: &Field, expected: &MediaType) -> Result<()> {
    let col = field.name();
    let Some(found) = MediaType::of_field(field)? else {
        return Err(Error::schema(format!(
            "column '{col}' must be {expected}, but it is {} without a multimodal extension type",
            field.data_type()
        )));
    };
    if found.kind() != expected.kind() {
        return Err(Error::schema(format!(
            "column '{col}' must be {expected}, but it is {found}"
        )));
    }
    let detail = match (&found, expected) {
        (
            MediaType::FixedTensor {
                dtype: fd,
                shape: fs,
            },
            MediaType::FixedTensor {
                dtype: ed,
                shape: es,
            },
        ) => mismatch("element type", fd, ed).or_else(|| mismatch("shape", fs, es)),
        (
            MediaType::VariableTensor {
                dtype: fd,
                ndim: fnd,
            },
            MediaType::VariableTensor {
                dtype: ed,
                ndim: end,
            },
        ) => {
            mismatch("element type", fd, ed).or_else(|| mismatch("number of dimensions", fnd, end))
        }
        (
            MediaType::Vector {
                dtype: fd,
                dim: fdim,
            },
            MediaType::Vector {
                dtype: ed,
                dim: edim,
            },
        ) => mismatch("element type", fd, ed).or_else(|| mismatch("vector dim", fdim, edim)),
        (MediaType::Image { encoded: f }, MediaType::Image { encoded: e }) => {
            mismatch("encoded", f, e)
        }
        _ => None,
    };
    match detail {
        Some(d) => Err(Error::schema(format!(
            "column '{col}' has {d} (found {found}, expected {expected})"
        ))),
        None => Ok(()),
    }
}

/// The child `name` of a struct field's type, for reading multimodal structs.
pub fn struct_child(field: &Field, name: &str) -> Option<FieldRef> {
    match field.data_type() {
        DataType::Struct(fields) => fields.find(name).map(|(_, f)| f.clone()),
        _ => None,
    }
}

/// The child column `name` of a struct array (multimodal structs are read by child name).
pub fn struct_column<'a>(array: &'a StructArray, name: &str) -> Result<&'a ArrayRef> {
    array.column_by_name(name).ok_or_else(|| {
        Error::schema(format!(
            "struct column has no child '{name}' (children: {})",
            array
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// Whether an array is entirely valid at `row` (a convenience for multimodal readers).
pub fn is_valid_at(array: &dyn Array, row: usize) -> bool {
    array.is_valid(row)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use arrow::array::{
        BinaryArray, Float32Array, StringArray, UInt16Array, UInt32Array, UInt64Array,
    };
    use arrow::datatypes::{Float16Type, Float32Type, Int64Type, Schema, UInt8Type};
    use arrow::record_batch::{RecordBatch, RecordBatchReader};
    use half::f16;

    fn sample_batch() -> RecordBatch {
        let n = 2;
        let (t_f, t_a) = fixed_tensor_array::<Float32Type>(
            "tensor",
            (0..24).map(|v| v as f32).collect(),
            &[2, 3, 2],
            n,
        )
        .unwrap();
        let (h_f, h_a) = fixed_tensor_array::<Float16Type>(
            "tensor_f16",
            (0..8).map(|v| f16::from_f32(v as f32)).collect(),
            &[4],
            n,
        )
        .unwrap();
        let (v_f, v_a) = variable_tensor_array::<Int64Type>(
            "vtensor",
            2,
            vec![(vec![1, 2, 3, 4, 5, 6], vec![2, 3]), (vec![7], vec![1, 1])],
        )
        .unwrap();
        let (e_f, e_a) = vector_array::<Float32Type>("emb", vec![0.5; 8], 4).unwrap();
        let (u_f, u_a) = vector_array::<UInt8Type>("emb_u8", vec![1; 6], 3).unwrap();
        let enc = StructArray::try_new(
            image_encoded_fields(),
            vec![
                Arc::new(BinaryArray::from_vec(vec![b"\x89PNG", b"\xff\xd8"])),
                Arc::new(StringArray::from(vec!["png", "jpeg"])),
            ],
            None,
        )
        .unwrap();
        let dec = StructArray::try_new(
            image_decoded_fields(),
            vec![
                Arc::new(BinaryArray::from_vec(vec![&[1, 2, 3], &[4]])),
                Arc::new(StringArray::from(vec!["RGB", "L"])),
                Arc::new(UInt32Array::from(vec![1, 1])),
                Arc::new(UInt32Array::from(vec![1, 1])),
            ],
            None,
        )
        .unwrap();
        let samples = ListArray::try_new(
            Arc::new(Field::new_list_field(DataType::Float32, false)),
            OffsetBuffer::from_lengths([2, 1]),
            Arc::new(Float32Array::from(vec![0.1, -0.1, 0.0])),
            None,
        )
        .unwrap();
        let audio = StructArray::try_new(
            audio_fields(),
            vec![
                Arc::new(samples),
                Arc::new(UInt32Array::from(vec![16000, 8000])),
                Arc::new(UInt16Array::from(vec![1, 1])),
            ],
            None,
        )
        .unwrap();
        let oref = StructArray::try_new(
            object_ref_fields(),
            vec![
                Arc::new(StringArray::from(vec!["s3://b/k", "file:///tmp/x"])),
                Arc::new(UInt64Array::from(vec![0, 10])),
                Arc::new(UInt64Array::from(vec![Some(5), None])),
                Arc::new(StringArray::from(vec![None, Some("v1")])),
            ],
            None,
        )
        .unwrap();
        let fields = vec![
            t_f,
            h_f,
            v_f,
            e_f,
            u_f,
            image_field("img", true),
            image_field("pixels", false),
            audio_field("audio"),
            object_ref_field("ref"),
        ];
        let cols: Vec<ArrayRef> = vec![
            t_a,
            h_a,
            v_a,
            e_a,
            u_a,
            Arc::new(enc),
            Arc::new(dec),
            Arc::new(audio),
            Arc::new(oref),
        ];
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
    }

    fn assert_types_intact(schema: &Schema) {
        let f = schema.field_with_name("tensor").unwrap();
        assert_eq!(f.extension_type_name(), Some("arrow.fixed_shape_tensor"));
        assert_eq!(
            fixed_tensor_shape(f),
            Some((DataType::Float32, vec![2, 3, 2]))
        );
        assert_eq!(
            fixed_tensor_shape(schema.field_with_name("tensor_f16").unwrap()),
            Some((DataType::Float16, vec![4]))
        );
        let expect = [
            ("vtensor", "arrow.variable_shape_tensor", Some("{}")),
            ("emb", "weir.vector", Some("{\"dim\":4}")),
            ("emb_u8", "weir.vector", Some("{\"dim\":3}")),
            ("img", "weir.image", Some("{\"encoded\":true}")),
            ("pixels", "weir.image", Some("{\"encoded\":false}")),
            ("audio", "weir.audio", None),
            ("ref", "weir.object_ref", None),
        ];
        for (col, name, md) in expect {
            let f = schema.field_with_name(col).unwrap();
            assert_eq!(f.extension_type_name(), Some(name), "{col}");
            assert_eq!(f.extension_type_metadata(), md, "{col}");
            assert!(MediaType::of_field(f).unwrap().is_some(), "{col}");
        }
        check_field(
            schema.field_with_name("emb").unwrap(),
            &MediaType::Vector {
                dtype: Some(DataType::Float32),
                dim: Some(4),
            },
        )
        .unwrap();
        check_field(
            schema.field_with_name("vtensor").unwrap(),
            &MediaType::VariableTensor {
                dtype: Some(DataType::Int64),
                ndim: Some(2),
            },
        )
        .unwrap();
    }

    #[test]
    fn ipc_round_trip_keeps_extension_types() {
        let batch = sample_batch();
        let mut buf = Vec::new();
        {
            let mut w = arrow::ipc::writer::FileWriter::try_new(&mut buf, &batch.schema()).unwrap();
            w.write(&batch).unwrap();
            w.finish().unwrap();
        }
        let r = arrow::ipc::reader::FileReader::try_new(std::io::Cursor::new(buf), None).unwrap();
        let schema = r.schema();
        assert_types_intact(&schema);
        let back: Vec<RecordBatch> = r.collect::<std::result::Result<_, _>>().unwrap();
        assert_eq!(back[0], batch);
    }

    #[test]
    fn parquet_round_trip_keeps_extension_types() {
        let batch = sample_batch();
        let mut buf = Vec::new();
        {
            let mut w =
                parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
            w.write(&batch).unwrap();
            w.close().unwrap();
        }
        // scripts/check_extension_types.py reads this file with pyarrow.
        if let Some(path) = std::env::var_os("WEIR_WRITE_EXTENSION_PARQUET") {
            std::fs::write(path, &buf).unwrap();
        }
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(buf),
        )
        .unwrap()
        .build()
        .unwrap();
        let schema = r.schema();
        assert_types_intact(&schema);
        let back: Vec<RecordBatch> = r.collect::<std::result::Result<_, _>>().unwrap();
        assert_eq!(back[0].num_rows(), 2);
        assert_eq!(back[0].columns(), batch.columns());
    }

    #[test]
    fn check_field_names_column_and_both_sides() {
        let f = vector_field("emb", DataType::Float32, 384);
        let e = check_field(
            &f,
            &MediaType::Vector {
                dtype: Some(DataType::Float32),
                dim: Some(768),
            },
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains("'emb'") && m.contains("384") && m.contains("768"),
            "{m}"
        );

        let t = tensor_field("x", DataType::Float32, &[3, 224, 224]);
        let e = check_field(
            &t,
            &MediaType::FixedTensor {
                dtype: Some(DataType::Float32),
                shape: Some(vec![224, 224, 3]),
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("'x'") && e.contains("[3, 224, 224]") && e.contains("[224, 224, 3]"),
            "{e}"
        );

        let e = check_field(
            &t,
            &MediaType::FixedTensor {
                dtype: Some(DataType::Float16),
                shape: None,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("Float16") && e.contains("Float32"), "{e}");

        let plain = Field::new("bytes", DataType::Binary, true);
        let e = check_field(&plain, &MediaType::Image { encoded: None })
            .unwrap_err()
            .to_string();
        assert!(e.contains("'bytes'") && e.contains("weir.image"), "{e}");

        let e = check_field(&image_field("img", false), &MediaType::Audio)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("weir.audio") && e.contains("weir.image<decoded>"),
            "{e}"
        );
    }

    #[test]
    fn builders_refuse_bad_shapes() {
        assert!(fixed_tensor_array::<Float32Type>("t", vec![0.0; 5], &[2, 2], 1).is_err());
        assert!(
            variable_tensor_array::<Float32Type>("t", 2, vec![(vec![0.0; 3], vec![2, 2])]).is_err()
        );
        assert!(vector_array::<Float32Type>("v", vec![0.0; 5], 2).is_err());
        assert!(
            fixed_tensor_array::<arrow::datatypes::UInt16Type>("t", vec![0; 4], &[4], 1).is_err()
        );
    }

    #[test]
    fn wrong_storage_is_refused() {
        let f = Field::new(
            "emb",
            DataType::new_fixed_size_list(DataType::Float32, 3, false),
            true,
        )
        .with_metadata(
            [
                (EXTENSION_TYPE_NAME_KEY.to_owned(), "weir.vector".to_owned()),
                (
                    EXTENSION_TYPE_METADATA_KEY.to_owned(),
                    "{\"dim\":4}".to_owned(),
                ),
            ]
            .into(),
        );
        let e = MediaType::of_field(&f).unwrap_err().to_string();
        assert!(e.contains("'emb'"), "{e}");
        assert!(ImageMode::parse("rgb") == Some(ImageMode::Rgb));
    }
}
