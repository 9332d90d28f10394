//! Event time as weir's watermarks count it: milliseconds since the Unix epoch, as `i64`.
//!
//! An event-time column may be an Arrow timestamp of any unit (time zone ignored: the instant is
//! what counts), a date, or an `Int64` read as milliseconds. [`event_millis`] converts a column to
//! milliseconds (finer units are floored), keeping nulls, which operators report as bad rows.

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::compute::kernels::cast;
use arrow::datatypes::{DataType, TimeUnit};
use std::sync::Arc;
use weir_types::{Error, Result};

/// Whether `data_type` can be an event-time column; errors naming `column` otherwise.
pub fn check_event_time_type(column: &str, data_type: &DataType) -> Result<()> {
    match data_type {
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 | DataType::Int64 => Ok(()),
        other => Err(Error::schema(format!(
            "event-time column '{column}' is {other}; expected a timestamp, a date or Int64 \
             milliseconds"
        ))),
    }
}

/// The values of an event-time column in milliseconds since the Unix epoch (nulls stay null).
pub fn event_millis(column: &ArrayRef) -> Result<Int64Array> {
    let floor = |a: &ArrayRef, per_ms: i64| -> Int64Array {
        let p = a.as_primitive::<arrow::datatypes::Int64Type>();
        p.unary(|v| v.div_euclid(per_ms))
    };
    let as_i64 = |a: &ArrayRef| -> Result<ArrayRef> {
        cast::cast(a, &DataType::Int64)
            .map_err(|e| Error::internal("cannot read an event-time column").with_source(e))
    };
    Ok(match column.data_type() {
        DataType::Int64 => column.as_primitive::<arrow::datatypes::Int64Type>().clone(),
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Date64 => as_i64(column)?
            .as_primitive::<arrow::datatypes::Int64Type>()
            .clone(),
        DataType::Timestamp(TimeUnit::Second, _) => {
            let p = as_i64(column)?;
            p.as_primitive::<arrow::datatypes::Int64Type>()
                .unary(|v| v.saturating_mul(1000))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => floor(&as_i64(column)?, 1000),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => floor(&as_i64(column)?, 1_000_000),
        DataType::Date32 => {
            let p = as_i64(column)?;
            p.as_primitive::<arrow::datatypes::Int64Type>()
                .unary(|d| d.saturating_mul(86_400_000))
        }
        other => {
            return Err(Error::schema(format!(
                "an event-time column is {other}; expected a timestamp, a date or Int64 milliseconds"
            )));
        }
    })
}

/// Milliseconds as a column of `data_type` (the type of the event-time column they came from,
/// so window bounds have the type of the time they bound). Dates become `Timestamp(ms)`.
pub fn millis_as(values: Int64Array, data_type: &DataType) -> Result<ArrayRef> {
    let values: ArrayRef = Arc::new(values);
    let target = match data_type {
        DataType::Int64 => return Ok(values),
        DataType::Date32 | DataType::Date64 => DataType::Timestamp(TimeUnit::Millisecond, None),
        DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Millisecond, tz.clone()),
        other => {
            return Err(Error::schema(format!(
                "an event-time column is {other}; expected a timestamp, a date or Int64 milliseconds"
            )));
        }
    };
    let ms = cast::cast(&values, &DataType::Timestamp(TimeUnit::Millisecond, None))
        .and_then(|a| cast::cast(&a, &target))
        .map_err(|e| Error::internal("cannot write a time column").with_source(e))?;
    if &target == data_type {
        return Ok(ms);
    }
    match data_type {
        DataType::Timestamp(_, _) => cast::cast(&ms, data_type)
            .map_err(|e| Error::internal("cannot write a time column").with_source(e)),
        _ => Ok(ms),
    }
}

/// The type window bounds derived from an event-time column of `data_type` have.
pub fn bound_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::Int64 => DataType::Int64,
        DataType::Timestamp(unit, tz) => DataType::Timestamp(*unit, tz.clone()),
        _ => DataType::Timestamp(TimeUnit::Millisecond, None),
    }
}

/// Number of nulls (rows without an event time) in an event-time array.
pub fn missing(values: &Int64Array) -> usize {
    values.null_count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, TimestampMicrosecondArray, TimestampSecondArray};

    #[test]
    fn units_become_milliseconds() {
        let us: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![
            Some(1_999),
            None,
            Some(-1),
        ]));
        let ms = event_millis(&us).expect("us");
        assert_eq!(ms.value(0), 1);
        assert!(ms.is_null(1));
        assert_eq!(ms.value(2), -1);
        let s: ArrayRef = Arc::new(TimestampSecondArray::from(vec![3]));
        assert_eq!(event_millis(&s).expect("s").value(0), 3000);
        let d: ArrayRef = Arc::new(Date32Array::from(vec![1]));
        assert_eq!(event_millis(&d).expect("d").value(0), 86_400_000);
        let back = millis_as(Int64Array::from(vec![5]), us.data_type()).expect("back");
        assert_eq!(back.data_type(), us.data_type());
        assert_eq!(
            back.as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(0),
            5000
        );
        assert!(check_event_time_type("t", &DataType::Utf8).is_err());
    }
}
