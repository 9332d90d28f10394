//! Option parsing shared by the connector specs: sizes (`"128MiB"`), durations (`"1s"`) and
//! declared schemas (a list of `{name, type}`).

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;
use std::time::Duration;
use weir_types::{Error, Result};

/// One column of a declared schema, as a pipeline spec gives it: `{name: id, type: int64}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    /// The column name (required).
    pub name: String,
    /// The column type (required): `int8`..`int64`, `uint8`..`uint64`, `float32`, `float64`
    /// (`float`, `double`), `utf8` (`string`), `large_utf8`, `bool` (`boolean`), `binary`, `date`
    /// (`date32`), `timestamp` (microseconds, UTC), `timestamp_s`, `timestamp_ms`, `timestamp_us`,
    /// `timestamp_ns` (all UTC), or any type in Arrow's own notation (`Decimal128(10, 2)`).
    #[serde(rename = "type")]
    pub data_type: String,
    /// Whether the column may hold nulls (default `true`).
    #[serde(default = "default_true")]
    pub nullable: bool,
}

fn default_true() -> bool {
    true
}

/// Parses a type name of a declared schema (see [`ColumnSpec::data_type`]).
pub fn parse_type(name: &str) -> Result<DataType> {
    let utc = || Some(Arc::from("UTC"));
    let t = match name.trim().to_ascii_lowercase().as_str() {
        "int8" => DataType::Int8,
        "int16" => DataType::Int16,
        "int32" | "int" => DataType::Int32,
        "int64" | "long" | "bigint" => DataType::Int64,
        "uint8" => DataType::UInt8,
        "uint16" => DataType::UInt16,
        "uint32" => DataType::UInt32,
        "uint64" => DataType::UInt64,
        "float32" | "float" => DataType::Float32,
        "float64" | "double" => DataType::Float64,
        "utf8" | "string" | "str" => DataType::Utf8,
        "large_utf8" | "large_string" => DataType::LargeUtf8,
        "bool" | "boolean" => DataType::Boolean,
        "binary" | "bytes" => DataType::Binary,
        "date" | "date32" => DataType::Date32,
        "timestamp" | "timestamp_us" => DataType::Timestamp(TimeUnit::Microsecond, utc()),
        "timestamp_s" => DataType::Timestamp(TimeUnit::Second, utc()),
        "timestamp_ms" => DataType::Timestamp(TimeUnit::Millisecond, utc()),
        "timestamp_ns" => DataType::Timestamp(TimeUnit::Nanosecond, utc()),
        _ => name.trim().parse::<DataType>().map_err(|e| {
            Error::config(format!(
                "unknown column type '{name}': expected int64, float64, utf8, bool, timestamp, date, binary or an arrow type"
            ))
            .with_source(e)
        })?,
    };
    Ok(t)
}

/// Turns a declared schema into an Arrow schema. An error names the bad column.
pub fn declared_schema(columns: &[ColumnSpec]) -> Result<SchemaRef> {
    if columns.is_empty() {
        return Err(Error::config("the declared schema has no columns"));
    }
    let mut fields = Vec::with_capacity(columns.len());
    for c in columns {
        if fields.iter().any(|f: &Field| f.name() == &c.name) {
            return Err(Error::config(format!(
                "the declared schema names column '{}' twice",
                c.name
            )));
        }
        let t = parse_type(&c.data_type).map_err(|e| {
            Error::config(format!("in declared column '{}'", c.name)).with_source(e)
        })?;
        fields.push(Field::new(&c.name, t, c.nullable));
    }
    Ok(Arc::new(Schema::new(fields)))
}

/// Parses a size: a number of bytes or a string like `"64MiB"`, `"10 MB"`, `"512kb"`.
pub fn parse_size(s: &str) -> Result<u64> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| Error::config(format!("invalid size '{s}': {e}")))
}

/// Parses a duration like `"1s"`, `"250ms"`, `"5m"`.
pub fn parse_duration(s: &str) -> Result<Duration> {
    humantime::parse_duration(s.trim())
        .map_err(|e| Error::config(format!("invalid duration '{s}'")).with_source(e))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// Deserializes a size given as a number of bytes or a string (`"128MiB"`).
pub fn de_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    match SizeValue::deserialize(d)? {
        SizeValue::Bytes(n) => Ok(n),
        SizeValue::Text(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

/// Deserializes a duration string (`"1s"`).
pub fn de_duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(|e| serde::de::Error::custom(e.report()))
}

/// Deserializes an optional duration string (`"60s"`, or absent/null for none).
pub fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => parse_duration(&s)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(e.report())),
    }
}

/// Deserializes a one-byte delimiter (`","`, `"\t"`, `"|"`).
pub fn de_delimiter<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u8, D::Error> {
    let s = String::deserialize(d)?;
    let s = if s == "\\t" { "\t" } else { s.as_str() };
    match s.as_bytes() {
        [b] if *b != b'"' && *b != b'\n' && *b != b'\r' => Ok(*b),
        _ => Err(serde::de::Error::custom(format!(
            "invalid delimiter '{s}': expected one ASCII character other than a quote or newline"
        ))),
    }
}

/// Serializes a duration as the text [`de_duration`] reads (`"1s"`, `"250ms"`).
pub fn ser_duration<S: Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

/// Serializes an optional duration as [`de_opt_duration`] reads it.
pub fn ser_opt_duration<S: Serializer>(
    d: &Option<Duration>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

/// Serializes a delimiter byte as the one-character text [`de_delimiter`] reads.
pub fn ser_delimiter<S: Serializer>(b: &u8, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&char::from(*b).to_string())
}

pub(crate) fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sizes_and_durations() -> Result<()> {
        assert_eq!(parse_size("128MiB")?, 128 << 20);
        assert_eq!(parse_size("1 KiB")?, 1024);
        assert_eq!(parse_size("100")?, 100);
        assert!(parse_size("lots").is_err());
        assert_eq!(parse_duration("1s")?, Duration::from_secs(1));
        assert_eq!(parse_duration("250ms")?, Duration::from_millis(250));
        assert!(parse_duration("soon").is_err());
        Ok(())
    }

    #[test]
    fn parses_declared_schemas() -> Result<()> {
        let cols = vec![
            ColumnSpec {
                name: "id".into(),
                data_type: "int64".into(),
                nullable: false,
            },
            ColumnSpec {
                name: "t".into(),
                data_type: "timestamp_ms".into(),
                nullable: true,
            },
            ColumnSpec {
                name: "d".into(),
                data_type: "Decimal128(10, 2)".into(),
                nullable: true,
            },
        ];
        let s = declared_schema(&cols)?;
        assert_eq!(s.field(0).data_type(), &DataType::Int64);
        assert!(!s.field(0).is_nullable());
        assert_eq!(
            s.field(1).data_type(),
            &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
        );
        assert_eq!(s.field(2).data_type(), &DataType::Decimal128(10, 2));
        let bad = vec![ColumnSpec {
            name: "x".into(),
            data_type: "wibble".into(),
            nullable: true,
        }];
        let e = declared_schema(&bad)
            .err()
            .map(|e| e.report())
            .unwrap_or_default();
        assert!(e.contains("'x'") && e.contains("wibble"), "{e}");
        Ok(())
    }
}
