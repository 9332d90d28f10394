//! Reading the columns of a batch inside an operator, with an error that names the operator, and
//! the list of a schema's columns that such errors show.

use crate::{Error, Result};
use arrow::array::ArrayRef;
use arrow::datatypes::Schema;
use arrow::record_batch::RecordBatch;

/// The names of `schema`'s columns, comma-separated, for an error that says which there are.
pub fn column_names(schema: &Schema) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Column `name` of `batch`, for operator `op`. The plan checks that an operator's input has the
/// columns it reads, so a missing one is an internal error (a planner bug), named as
/// `{op}: column '{name}' is missing`.
pub fn planned_column(batch: &RecordBatch, name: &str, op: &str) -> Result<ArrayRef> {
    batch
        .column_by_name(name)
        .cloned()
        .ok_or_else(|| Error::internal(format!("{op}: column '{name}' is missing")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use arrow::array::Int64Array;
    use std::sync::Arc;

    #[test]
    fn finds_a_column_or_names_the_operator() {
        let b = RecordBatch::try_from_iter(vec![(
            "id",
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
        )])
        .expect("batch");
        assert_eq!(planned_column(&b, "id", "op").expect("id").len(), 1);
        assert_eq!(column_names(&b.schema()), "id");
        let e = planned_column(&b, "image", "resize").expect_err("missing");
        assert_eq!(e.kind(), ErrorKind::Internal);
        assert!(
            e.to_string().contains("resize: column 'image' is missing"),
            "{e}"
        );
    }
}
