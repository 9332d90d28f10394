//! The filter + project workload of the `filter` benchmark, written once so
//! the hand-written baseline (`arrow-loop`) and the weir pipeline
//! (`bench/filter/pipeline.yaml`, checked by a test below) do the same work:
//!
//! ```sql
//! SELECT id, amount * 1.2 AS gross, upper(category) AS category, quantity
//! FROM events
//! WHERE amount > 500 AND category = 'books'
//! ```
//!
//! On generated data about 1/2 × 1/8 = 6.25 % of the rows pass the filter.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray};
use arrow::buffer::Buffer;
use arrow::compute::filter_record_batch;
use arrow::compute::kernels::boolean::and_kleene;
use arrow::compute::kernels::cmp::{eq, gt};
use arrow::compute::kernels::numeric::mul;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::error::ArrowError;

/// The filter, as written in weir's pipeline spec.
pub const PREDICATE: &str = "amount > 500 AND category = 'books'";

/// The projection, as written in weir's pipeline spec.
pub const PROJECTION: [&str; 4] = [
    "id",
    "amount * 1.2 AS gross",
    "upper(category) AS category",
    "quantity",
];

/// The input columns the workload reads (what a projection pushdown keeps).
pub const INPUT_COLUMNS: [&str; 4] = ["id", "category", "amount", "quantity"];

/// Rows with `amount` above this pass (first half of [`PREDICATE`]).
pub const AMOUNT_THRESHOLD: f64 = 500.0;

/// Rows with this `category` pass (second half of [`PREDICATE`]).
pub const CATEGORY: &str = "books";

/// `gross = amount * GROSS_FACTOR`.
pub const GROSS_FACTOR: f64 = 1.2;

/// The schema of the workload's output.
pub fn output_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("gross", DataType::Float64, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("quantity", DataType::Int32, false),
    ]))
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, ArrowError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| ArrowError::SchemaError(format!("input has no column {name:?}")))
}

/// Runs the workload on one input batch (any batch holding at least
/// [`INPUT_COLUMNS`] with the events types); the output has
/// [`output_schema`]. The output may be empty.
pub fn filter_project(
    batch: &RecordBatch,
    out_schema: &SchemaRef,
) -> Result<RecordBatch, ArrowError> {
    // WHERE amount > 500 AND category = 'books'
    let amount = column(batch, "amount")?;
    let category = column(batch, "category")?;
    let keep = and_kleene(
        &gt(amount, &Float64Array::new_scalar(AMOUNT_THRESHOLD))?,
        &eq(category, &StringArray::new_scalar(CATEGORY))?,
    )?;

    // Narrow to the needed columns (zero-copy) before filtering, so columns
    // the query never uses are not copied.
    let schema = batch.schema();
    let indices = INPUT_COLUMNS
        .iter()
        .map(|name| schema.index_of(name))
        .collect::<Result<Vec<_>, _>>()?;
    let narrow = batch.project(&indices)?;
    let kept = filter_record_batch(&narrow, &keep)?;

    // SELECT id, amount * 1.2 AS gross, upper(category) AS category, quantity
    let gross = mul(
        column(&kept, "amount")?,
        &Float64Array::new_scalar(GROSS_FACTOR),
    )?;
    let category = column(&kept, "category")?
        .as_string_opt::<i32>()
        .ok_or_else(|| ArrowError::SchemaError("category is not Utf8".into()))?;
    let upper: ArrayRef = Arc::new(upper_utf8(category)?);
    RecordBatch::try_new(
        Arc::clone(out_schema),
        vec![
            Arc::clone(column(&kept, "id")?),
            gross,
            upper,
            Arc::clone(column(&kept, "quantity")?),
        ],
    )
}

/// `upper()` on a Utf8 array. ASCII-only arrays (the common case, and all
/// generated data) are converted byte-wise while keeping offsets and nulls,
/// as DataFusion's `upper` does; anything else goes value by value through
/// [`str::to_uppercase`].
pub fn upper_utf8(array: &StringArray) -> Result<StringArray, ArrowError> {
    if array.is_ascii() {
        let offsets = array.offsets();
        let first = offsets.first().copied().unwrap_or(0).max(0) as usize;
        let last = offsets.last().copied().unwrap_or(0).max(0) as usize;
        let values = array.value_data()[first..last].to_ascii_uppercase();
        // Offsets are relative to the start of the values buffer: rebase if
        // the array is a slice that does not start at byte 0.
        let offsets = if first == 0 {
            offsets.clone()
        } else {
            let rebased: Vec<i32> = offsets.iter().map(|o| o - first as i32).collect();
            arrow::buffer::OffsetBuffer::new(rebased.into())
        };
        return StringArray::try_new(offsets, Buffer::from_vec(values), array.nulls().cloned());
    }
    Ok(array.iter().map(|v| v.map(str::to_uppercase)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventGenerator;
    use arrow::array::{Int32Array, Int64Array};
    use arrow::datatypes::Float64Type;

    #[test]
    fn pipeline_yaml_matches_this_module() {
        let yaml = include_str!("../../filter/pipeline.yaml");
        assert!(
            yaml.contains(&format!("predicate: \"{PREDICATE}\"")),
            "predicate differs"
        );
        let columns = PROJECTION.map(|c| format!("\"{c}\"")).join(", ");
        assert!(
            yaml.contains(&format!("columns: [{columns}]")),
            "projection differs"
        );
    }

    #[test]
    fn hand_made_batch() {
        let input = RecordBatch::try_from_iter(vec![
            (
                "id",
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])) as ArrayRef,
            ),
            (
                "category",
                Arc::new(StringArray::from(vec!["books", "books", "toys", "books"])),
            ),
            (
                "amount",
                Arc::new(Float64Array::from(vec![600.0, 500.0, 900.0, 1000.0])),
            ),
            ("quantity", Arc::new(Int32Array::from(vec![1, 2, 3, 4]))),
        ])
        .expect("batch");
        let out = filter_project(&input, &output_schema()).expect("run");
        let expected = RecordBatch::try_new(
            output_schema(),
            vec![
                Arc::new(Int64Array::from(vec![1, 4])),
                Arc::new(Float64Array::from(vec![600.0 * 1.2, 1000.0 * 1.2])),
                Arc::new(StringArray::from(vec!["BOOKS", "BOOKS"])),
                Arc::new(Int32Array::from(vec![1, 4])),
            ],
        )
        .expect("expected");
        assert_eq!(out, expected);
    }

    #[test]
    fn generated_selectivity_and_consistency() {
        let mut g = EventGenerator::new(3, 100_000);
        let batch = g.next_batch(100_000).expect("gen").expect("rows");
        let out = filter_project(&batch, &output_schema()).expect("run");
        let share = out.num_rows() as f64 / batch.num_rows() as f64;
        assert!((0.055..0.07).contains(&share), "share {share}");
        let gross = out.column(1).as_primitive::<Float64Type>();
        assert!(
            gross
                .values()
                .iter()
                .all(|g| *g > AMOUNT_THRESHOLD * GROSS_FACTOR)
        );
        assert!(
            out.column(2)
                .as_string::<i32>()
                .iter()
                .all(|c| c == Some("BOOKS"))
        );
    }

    #[test]
    fn upper_handles_slices_nulls_and_unicode() {
        let a = StringArray::from(vec![Some("ab"), None, Some("cd"), Some("ef")]);
        let sliced = a.slice(2, 2);
        let up = upper_utf8(&sliced).expect("upper");
        assert_eq!(up, StringArray::from(vec!["CD", "EF"]));
        let up = upper_utf8(&a).expect("upper");
        assert_eq!(
            up,
            StringArray::from(vec![Some("AB"), None, Some("CD"), Some("EF")])
        );
        let u = StringArray::from(vec![Some("straße"), None]);
        assert_eq!(
            upper_utf8(&u).expect("upper"),
            StringArray::from(vec![Some("STRASSE"), None])
        );
    }
}
