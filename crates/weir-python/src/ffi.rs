//! Arrow batches and schemas between weir and pyarrow through the Arrow C data interface: no
//! copies, extension types intact (they travel in the field metadata).
//!
//! Out of Rust, a batch or schema is wrapped in a small object with `__arrow_c_array__` /
//! `__arrow_c_schema__` (the Arrow PyCapsule interface), which `pyarrow.record_batch(obj)` and
//! `pyarrow.schema(obj)` import; the capsules own the exported structs, and pyarrow moves them
//! out. Into Rust, a pyarrow batch's `__arrow_c_array__` capsules are moved out here.
//!
//! This module is the crate's only `unsafe`: reading the structs behind capsule pointers that
//! pyarrow made (the C data interface is a C ABI; every other weir crate forbids `unsafe`).
#![allow(unsafe_code)]

use arrow::array::{Array, RecordBatch, StructArray};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ffi::{FFI_ArrowArray, FFI_ArrowSchema, from_ffi};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyCapsule, PyTuple};
use std::sync::Arc;

/// A batch handed to pyarrow (`pyarrow.record_batch(obj)`).
#[pyclass(module = "weir._weir", frozen)]
pub struct BatchExport {
    batch: RecordBatch,
}

#[pymethods]
impl BatchExport {
    /// The Arrow PyCapsule interface: (schema capsule, array capsule) of the batch as a struct.
    #[pyo3(signature = (requested_schema=None))]
    fn __arrow_c_array__<'py>(
        &self,
        py: Python<'py>,
        requested_schema: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let _ = requested_schema;
        let array = StructArray::from(self.batch.clone());
        let data = array.to_data();
        let schema = FFI_ArrowSchema::try_from(data.data_type()).map_err(to_py)?;
        let schema = with_metadata(schema, self.batch.schema_ref())?;
        let array = FFI_ArrowArray::new(&data);
        let s = PyCapsule::new_with_value(py, schema, c"arrow_schema")?;
        let a = PyCapsule::new_with_value(py, array, c"arrow_array")?;
        PyTuple::new(py, [s.into_any(), a.into_any()])
    }
}

/// A schema handed to pyarrow (`pyarrow.schema(obj)`).
#[pyclass(module = "weir._weir", frozen)]
pub struct SchemaExport {
    schema: SchemaRef,
}

#[pymethods]
impl SchemaExport {
    /// The Arrow PyCapsule interface: the schema as a capsule.
    fn __arrow_c_schema__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyCapsule>> {
        let ffi = FFI_ArrowSchema::try_from(self.schema.as_ref()).map_err(to_py)?;
        PyCapsule::new_with_value(py, ffi, c"arrow_schema")
    }
}

fn to_py(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

/// The struct's schema with the batch's schema-level metadata (lost when a batch becomes a
/// struct array otherwise).
fn with_metadata(ffi: FFI_ArrowSchema, schema: &SchemaRef) -> PyResult<FFI_ArrowSchema> {
    if schema.metadata().is_empty() {
        return Ok(ffi);
    }
    ffi.with_metadata(schema.metadata().clone()).map_err(to_py)
}

/// `batch` as a `pyarrow.RecordBatch`.
pub fn batch_to_py<'py>(py: Python<'py>, batch: RecordBatch) -> PyResult<Bound<'py, PyAny>> {
    let pa = py.import("pyarrow")?;
    pa.call_method1("record_batch", (BatchExport { batch },))
}

/// `schema` as a `pyarrow.Schema`.
pub fn schema_to_py<'py>(py: Python<'py>, schema: SchemaRef) -> PyResult<Bound<'py, PyAny>> {
    let pa = py.import("pyarrow")?;
    pa.call_method1("schema", (SchemaExport { schema },))
}

/// A `pyarrow.RecordBatch` (or anything with `__arrow_c_array__` giving a struct) as a batch.
pub fn batch_from_py(obj: &Bound<'_, PyAny>) -> PyResult<RecordBatch> {
    let pair = obj.call_method0("__arrow_c_array__")?;
    let (schema, array): (Bound<'_, PyCapsule>, Bound<'_, PyCapsule>) = pair.extract()?;
    let schema_ptr = schema.pointer_checked(Some(c"arrow_schema"))?;
    let array_ptr = array.pointer_checked(Some(c"arrow_array"))?;
    // SAFETY: the capsules were made by the exporter under the Arrow PyCapsule interface's
    // names, so their pointers are valid `ArrowSchema` / `ArrowArray` structs that live as long
    // as the capsules (which outlive this function's use of them). `from_raw` moves the array out
    // and marks the capsule's copy released (the capsule's destructor then releases nothing);
    // the schema is only borrowed.
    let data = unsafe {
        let array = FFI_ArrowArray::from_raw(array_ptr.as_ptr().cast::<FFI_ArrowArray>());
        let schema = &*schema_ptr.as_ptr().cast::<FFI_ArrowSchema>();
        from_ffi(array, schema).map_err(to_py)?
    };
    let ffi_schema = unsafe { &*schema_ptr.as_ptr().cast::<FFI_ArrowSchema>() };
    let metadata = ffi_schema.metadata().map_err(to_py)?;
    let array = StructArray::from(data);
    if array.null_count() > 0 {
        return Err(PyValueError::new_err(
            "a batch from Python has null rows at the top level",
        ));
    }
    let (fields, columns, _) = array.into_parts();
    let schema = Schema::new(fields).with_metadata(metadata);
    RecordBatch::try_new(Arc::new(schema), columns).map_err(to_py)
}
