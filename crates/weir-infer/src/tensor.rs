//! Tensor columns: how Arrow columns bind to model inputs (per-row checks, stacking rows into one
//! `[N, ...]` input, padding ragged rows) and how model outputs become Arrow columns
//! (`arrow.fixed_shape_tensor`, or `arrow.variable_shape_tensor` for outputs with dynamic dims).

use crate::backend::{HostTensor, with_primitive};
use crate::model::{ElementType, TensorInfo, format_shape};
use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float64Array, Int32Array, ListArray,
    PrimitiveArray, StructArray,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{ArrowPrimitiveType, DataType, Field, FieldRef, Fields};
use arrow_schema::extension::{ExtensionType, FixedShapeTensor, VariableShapeTensor};
use std::sync::Arc;
use weir_types::{Error, Result};

/// How a column stores its per-row tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `FixedSizeList<T>(n)`; `shape` from the `arrow.fixed_shape_tensor` metadata, or `[n]`.
    Fixed {
        /// Per-row shape.
        shape: Vec<usize>,
        /// Whether the shape came from extension metadata (else the list is flat).
        declared: bool,
    },
    /// `List<T>` / `LargeList<T>`: a flat, ragged list per row.
    List,
    /// `arrow.variable_shape_tensor`: struct of `data: List<T>` and `shape`.
    VariableShape,
}

/// What a column holds: element type and layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnTensor {
    /// Element type.
    pub element: ElementType,
    /// Storage layout.
    pub layout: Layout,
}

impl ColumnTensor {
    /// Reads a field's tensor layout; `None` when the field is not a tensor-like column.
    pub fn of_field(field: &Field) -> Option<ColumnTensor> {
        match field.data_type() {
            DataType::FixedSizeList(child, n) => {
                let element = ElementType::from_arrow(child.data_type())?;
                let (shape, declared) = match fixed_shape_of(field) {
                    Some(shape) => (shape, true),
                    None => (vec![usize::try_from(*n).ok()?], false),
                };
                Some(ColumnTensor {
                    element,
                    layout: Layout::Fixed { shape, declared },
                })
            }
            DataType::List(child) | DataType::LargeList(child) => Some(ColumnTensor {
                element: ElementType::from_arrow(child.data_type())?,
                layout: Layout::List,
            }),
            DataType::Struct(fields) => {
                let data = fields.iter().find(|f| f.name() == "data")?;
                let DataType::List(child) = data.data_type() else {
                    return None;
                };
                Some(ColumnTensor {
                    element: ElementType::from_arrow(child.data_type())?,
                    layout: Layout::VariableShape,
                })
            }
            _ => None,
        }
    }

    /// `f32 [224,224,3]`, `i64 list`, `f32 variable-shape tensor`.
    pub fn describe(&self) -> String {
        match &self.layout {
            Layout::Fixed { shape, .. } => {
                let s: Vec<Option<usize>> = shape.iter().map(|d| Some(*d)).collect();
                format!("{} {}", self.element, format_shape(&s, None))
            }
            Layout::List => format!("a list of {}", self.element),
            Layout::VariableShape => format!("a variable-shape tensor of {}", self.element),
        }
    }
}

/// The per-row shape declared by a field's `arrow.fixed_shape_tensor` metadata.
pub fn fixed_shape_of(field: &Field) -> Option<Vec<usize>> {
    if field.extension_type_name() != Some(FixedShapeTensor::NAME) {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Meta {
        shape: Vec<usize>,
    }
    let meta: Meta = serde_json::from_str(field.extension_type_metadata()?).ok()?;
    Some(meta.shape)
}

/// A column bound to a model input, checked at plan time.
#[derive(Debug, Clone)]
pub struct InputBinding {
    /// The model input's name.
    pub input: String,
    /// The column's name.
    pub column: String,
    /// The column's index in the input schema.
    pub index: usize,
    /// What the column holds.
    pub tensor: ColumnTensor,
    /// The model's per-row shape (`None`: dynamic).
    pub row_shape: Vec<Option<usize>>,
    /// The symbol of the per-row dynamic dimension, when there is one (`sequence`).
    pub symbol: Option<String>,
    /// The model's element type.
    pub element: ElementType,
    /// Pad value for ragged rows.
    pub pad_value: f64,
}

impl InputBinding {
    /// Whether rows may have different lengths (the model's first per-row dim is dynamic).
    pub fn ragged(&self) -> bool {
        self.row_shape.first().is_some_and(|d| d.is_none())
    }

    /// Elements per unit of the first per-row dimension (product of the fixed inner dims).
    fn inner(&self) -> usize {
        self.row_shape
            .iter()
            .skip(1)
            .map(|d| d.unwrap_or(1))
            .product::<usize>()
            .max(1)
    }

    /// Checks row `row` of `column`; returns its length along the first per-row dimension (its
    /// sequence length for ragged inputs, 1 otherwise) or a message saying what is wrong.
    pub fn check_row(&self, column: &ArrayRef, row: usize, model: &str) -> Result<usize, String> {
        if column.is_null(row) {
            return Err(format!(
                "column '{}' row {row} is null but model input '{}' of {model} expects {} {}",
                self.column,
                self.input,
                self.element,
                format_shape(&self.row_shape, None)
            ));
        }
        let (values, shape) = row_values(column, row).map_err(|e| e.message().to_string())?;
        let n = values.len();
        let expected = || {
            format!(
                "model input '{}' of {model} expects {} {}",
                self.input,
                self.element,
                format_shape(&self.row_shape, None)
            )
        };
        if let Some(shape) = shape {
            let ok = shape.len() == self.row_shape.len()
                && shape
                    .iter()
                    .zip(&self.row_shape)
                    .all(|(a, b)| b.is_none_or(|b| b == *a));
            if !ok {
                return Err(format!(
                    "column '{}' row {row} has shape {} but {}",
                    self.column,
                    format_shape(&shape.iter().map(|d| Some(*d)).collect::<Vec<_>>(), None),
                    expected()
                ));
            }
        }
        if self.ragged() {
            let inner = self.inner();
            if n == 0 || n % inner != 0 {
                return Err(format!(
                    "column '{}' row {row} has {n} values, not a non-zero multiple of {inner}, but {}",
                    self.column,
                    expected()
                ));
            }
            Ok(n / inner)
        } else {
            let want: usize = self.row_shape.iter().map(|d| d.unwrap_or(1)).product();
            if n != want {
                return Err(format!(
                    "column '{}' row {row} has {n} values but {} ({want} values)",
                    self.column,
                    expected()
                ));
            }
            Ok(1)
        }
    }

    /// Stacks `rows` (column, row index) into one `[N, ...]` input. Rows of a fixed-size column
    /// that are consecutive rows of one array are passed as a slice of its values (no copy);
    /// ragged rows are padded to the longest row with the pad value.
    pub fn gather(&self, rows: &[(ArrayRef, usize)]) -> Result<HostTensor> {
        let n = rows.len();
        if !self.ragged() {
            let shape: Vec<usize> = std::iter::once(n)
                .chain(self.row_shape.iter().map(|d| d.unwrap_or(1)))
                .collect();
            if let Some(slice) = contiguous_fixed(rows) {
                return HostTensor::try_new(shape, slice);
            }
            let mut parts = Vec::with_capacity(n);
            for (col, r) in rows {
                parts.push(row_values(col, *r)?.0);
            }
            let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            let data = arrow::compute::concat(&refs)?;
            return HostTensor::try_new(shape, data);
        }
        let inner = self.inner();
        let mut parts = Vec::with_capacity(n);
        for (col, r) in rows {
            parts.push(row_values(col, *r)?.0);
        }
        let max_len = parts.iter().map(|p| p.len() / inner).max().unwrap_or(0);
        let shape: Vec<usize> = [n, max_len]
            .into_iter()
            .chain(self.row_shape.iter().skip(1).map(|d| d.unwrap_or(1)))
            .collect();
        let dt = self.element.to_arrow().ok_or_else(|| {
            Error::input(format!(
                "model input '{}': unsupported element type {}",
                self.input, self.element
            ))
        })?;
        let pad = arrow::compute::cast(&Float64Array::from(vec![self.pad_value]), &dt)?;
        with_primitive!(&dt, T => {
            let pad = pad.as_primitive::<T>().value(0);
            let width = max_len * inner;
            let mut out = vec![pad; n * width];
            for (i, p) in parts.iter().enumerate() {
                let p = arrow::compute::cast(p, &dt)?;
                let v = p.as_primitive::<T>().values();
                out[i * width..i * width + v.len()].copy_from_slice(v);
            }
            let data: ArrayRef = Arc::new(PrimitiveArray::<T>::from_iter_values(out));
            HostTensor::try_new(shape, data)
        }, else Err(Error::input(format!("model input '{}': unsupported element type {dt}", self.input))))
    }
}

/// When `rows` are consecutive rows of one `FixedSizeList` array, the slice of its values.
fn contiguous_fixed(rows: &[(ArrayRef, usize)]) -> Option<ArrayRef> {
    let (first, start) = rows.first()?;
    let fsl = first.as_fixed_size_list_opt()?;
    for (i, (col, r)) in rows.iter().enumerate() {
        if !Arc::ptr_eq(col, first) || *r != start + i {
            return None;
        }
    }
    let size = fsl.value_length() as usize;
    let values = fsl.values();
    let offset = (fsl.offset() + start) * size;
    (offset + rows.len() * size <= values.len()).then(|| values.slice(offset, rows.len() * size))
}

/// The flat values of row `row` of a tensor column, and its shape when the column declares one
/// per row (variable-shape tensors).
pub fn row_values(column: &ArrayRef, row: usize) -> Result<(ArrayRef, Option<Vec<usize>>)> {
    match column.data_type() {
        DataType::FixedSizeList(_, _) => Ok((column.as_fixed_size_list().value(row), None)),
        DataType::List(_) => Ok((column.as_list::<i32>().value(row), None)),
        DataType::LargeList(_) => Ok((column.as_list::<i64>().value(row), None)),
        DataType::Struct(_) => {
            let s = column.as_struct();
            let data = s
                .column_by_name("data")
                .ok_or_else(|| Error::input("variable-shape tensor column has no 'data' field"))?;
            let shape = s
                .column_by_name("shape")
                .ok_or_else(|| Error::input("variable-shape tensor column has no 'shape' field"))?;
            let values = data.as_list::<i32>().value(row);
            let dims = shape.as_fixed_size_list().value(row);
            let dims = arrow::compute::cast(&dims, &DataType::Int64)?;
            let dims: Vec<usize> = dims
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
                .iter()
                .map(|d| (*d).max(0) as usize)
                .collect();
            Ok((values, Some(dims)))
        }
        other => Err(Error::input(format!(
            "column of type {other} is not a tensor column"
        ))),
    }
}

/// A model output bound to a new column.
#[derive(Debug, Clone)]
pub struct OutputBinding {
    /// The model output's name.
    pub output: String,
    /// The new column's name.
    pub column: String,
    /// The model's description of the output.
    pub info: TensorInfo,
    /// The Arrow field of the new column.
    pub field: FieldRef,
    /// Whether the column is a variable-shape tensor (some per-row dimension is dynamic).
    pub variable: bool,
}

impl OutputBinding {
    /// Binds model output `info` to a column named `column`.
    pub fn new(info: &TensorInfo, column: &str, model: &str) -> Result<OutputBinding> {
        let dt = info.element.to_arrow().ok_or_else(|| {
            Error::schema(format!(
                "model output '{}' of {model} has element type {}, which weir cannot store in a column",
                info.name, info.element
            ))
        })?;
        let row = info.row_shape();
        let variable = row.iter().any(|d| d.is_none());
        let field = if variable {
            let ext = VariableShapeTensor::try_new(
                dt.clone(),
                row.len(),
                None,
                None,
                Some(row.iter().map(|d| d.map(|d| d as i32)).collect()),
            )
            .map_err(|e| Error::schema(format!("model output '{}' of {model}: {e}", info.name)))?;
            Field::new(column, variable_shape_type(&dt, row.len()), false).with_extension_type(ext)
        } else {
            let shape: Vec<usize> = row.iter().map(|d| d.unwrap_or(1)).collect();
            let size: usize = shape.iter().product();
            with_fixed_shape(
                Field::new(
                    column,
                    DataType::new_fixed_size_list(dt.clone(), size as i32, false),
                    false,
                ),
                &dt,
                &shape,
            )
            .map_err(|e| Error::schema(format!("model output '{}' of {model}: {e}", info.name)))?
        };
        Ok(OutputBinding {
            output: info.name.clone(),
            column: column.to_string(),
            info: info.clone(),
            field: Arc::new(field),
            variable,
        })
    }

    /// Splits a `[N, ...]` output into a column of N rows. For variable-shape outputs, a dynamic
    /// first per-row dimension whose symbol is in `lengths` (symbol → true length of each row)
    /// is cut back to the row's true length (padding removed).
    pub fn scatter(
        &self,
        t: &HostTensor,
        rows: usize,
        lengths: &[(String, Vec<usize>)],
        model: &str,
    ) -> Result<ArrayRef> {
        if t.shape.first() != Some(&rows) {
            return Err(Error::external(format!(
                "model output '{}' of {model} has shape {:?} for a batch of {rows} rows",
                self.output, t.shape
            )));
        }
        let row_shape = &t.shape[1..];
        let per_row: usize = row_shape.iter().product();
        if !self.variable {
            let DataType::FixedSizeList(child, size) = self.field.data_type() else {
                return Err(Error::internal(
                    "fixed output column is not a fixed-size list",
                ));
            };
            if per_row != *size as usize {
                return Err(Error::external(format!(
                    "model output '{}' of {model} has per-row shape {:?} but its metadata says {}",
                    self.output,
                    row_shape,
                    format_shape(self.info.row_shape(), None)
                )));
            }
            let a = FixedSizeListArray::try_new(child.clone(), *size, t.data.clone(), None)?;
            return Ok(Arc::new(a));
        }
        let sym = self.info.row_symbols().first().cloned().flatten();
        let trim = sym.and_then(|s| lengths.iter().find(|(k, _)| *k == s).map(|(_, v)| v));
        let inner: usize = row_shape.iter().skip(1).product();
        let mut offsets = Vec::with_capacity(rows + 1);
        let mut shapes = Vec::with_capacity(rows * row_shape.len());
        let mut slices = Vec::with_capacity(rows);
        offsets.push(0i32);
        for r in 0..rows {
            let mut dims = row_shape.to_vec();
            if let (Some(l), Some(first)) = (trim.and_then(|v| v.get(r)), dims.first_mut()) {
                *first = (*l).min(*first);
            }
            let n: usize = dims.iter().product();
            slices.push(t.data.slice(r * per_row, n));
            let last = offsets.last().copied().unwrap_or(0);
            offsets.push(last + n as i32);
            shapes.extend(dims.iter().map(|d| *d as i32));
        }
        let _ = inner;
        let refs: Vec<&dyn Array> = slices.iter().map(|a| a.as_ref()).collect();
        let values = if refs.is_empty() {
            arrow::array::new_empty_array(t.data.data_type())
        } else {
            arrow::compute::concat(&refs)?
        };
        let DataType::Struct(fields) = self.field.data_type() else {
            return Err(Error::internal("variable output column is not a struct"));
        };
        build_variable_shape(fields, values, offsets, shapes, row_shape.len())
    }
}

/// The storage type of a variable-shape tensor of `dt` with `ndim` dimensions.
pub fn variable_shape_type(dt: &DataType, ndim: usize) -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new_list("data", Field::new_list_field(dt.clone(), false), false),
        Field::new(
            "shape",
            DataType::new_fixed_size_list(DataType::Int32, ndim as i32, false),
            false,
        ),
    ]))
}

fn build_variable_shape(
    fields: &Fields,
    values: ArrayRef,
    offsets: Vec<i32>,
    shapes: Vec<i32>,
    ndim: usize,
) -> Result<ArrayRef> {
    let (Some(data_f), Some(shape_f)) = (fields.first(), fields.get(1)) else {
        return Err(Error::internal(
            "variable-shape tensor type needs data and shape fields",
        ));
    };
    let DataType::List(item) = data_f.data_type() else {
        return Err(Error::internal("variable-shape tensor data is not a list"));
    };
    let DataType::FixedSizeList(shape_item, _) = shape_f.data_type() else {
        return Err(Error::internal(
            "variable-shape tensor shape is not a fixed-size list",
        ));
    };
    let data = ListArray::try_new(
        item.clone(),
        OffsetBuffer::new(offsets.into()),
        values,
        None,
    )?;
    let shape = FixedSizeListArray::try_new(
        shape_item.clone(),
        ndim as i32,
        Arc::new(Int32Array::from(shapes)),
        None,
    )?;
    Ok(Arc::new(StructArray::try_new(
        fields.clone(),
        vec![Arc::new(data), Arc::new(shape)],
        None,
    )?))
}

/// Builds a `arrow.fixed_shape_tensor` field of `dt` with per-row `shape`.
pub fn fixed_shape_field(name: &str, dt: DataType, shape: &[usize]) -> Result<Field> {
    let size: usize = shape.iter().product();
    with_fixed_shape(
        Field::new(
            name,
            DataType::new_fixed_size_list(dt.clone(), size as i32, false),
            false,
        ),
        &dt,
        shape,
    )
    .map_err(|e| Error::schema(format!("column '{name}': {e}")))
}

/// `field` typed `arrow.fixed_shape_tensor` of `dt` with per-row `shape`, checked by arrow-rs's
/// [`FixedShapeTensor`] and written as weir writes every tensor type
/// ([`weir_types::multimodal::with_fixed_shape_tensor`]).
fn with_fixed_shape(
    field: Field,
    dt: &DataType,
    shape: &[usize],
) -> std::result::Result<Field, arrow::error::ArrowError> {
    FixedShapeTensor::try_new(dt.clone(), shape.iter().copied(), None, None)?;
    Ok(weir_types::multimodal::with_fixed_shape_tensor(
        field, shape,
    ))
}

/// Builds a fixed-shape tensor column of per-row `shape` from flat `values` (row-major).
pub fn fixed_shape_array<T: ArrowPrimitiveType>(
    shape: &[usize],
    values: Vec<T::Native>,
) -> Result<(Field, FixedSizeListArray)> {
    let field = fixed_shape_field("tensor", T::DATA_TYPE, shape)?;
    let size: usize = shape.iter().product();
    let DataType::FixedSizeList(child, _) = field.data_type() else {
        return Err(Error::internal(
            "fixed-shape field is not a fixed-size list",
        ));
    };
    let arr = FixedSizeListArray::try_new(
        child.clone(),
        size as i32,
        Arc::new(PrimitiveArray::<T>::from_iter_values(values)),
        None,
    )?;
    Ok((field, arr))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::extension::EXTENSION_TYPE_METADATA_KEY;

    #[test]
    fn fixed_shape_fields_carry_only_the_shape_and_arrow_rs_reads_them() {
        let f = fixed_shape_field("t", DataType::Float32, &[2, 3]).expect("field");
        assert_eq!(
            f.metadata()
                .get(EXTENSION_TYPE_METADATA_KEY)
                .map(String::as_str),
            Some("{\"shape\":[2,3]}"),
            "no null dim_names/permutations, which pyarrow before 26 refuses"
        );
        let ext = f
            .try_extension_type::<FixedShapeTensor>()
            .expect("arrow-rs reads the metadata back");
        assert_eq!((ext.list_size(), ext.dimensions()), (6, 2));
    }
}
