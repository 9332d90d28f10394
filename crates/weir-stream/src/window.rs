//! Window specs (what a `window:` key in a pipeline says) and how rows are assigned to windows.
//!
//! - `tumbling`: fixed, non-overlapping windows of `size`, aligned to the epoch (plus `offset`).
//! - `hopping` (Flink's sliding): windows of `size` starting every `slide`; a row is in
//!   `size / slide` windows. weir requires `slide` to divide `size`, so windows are made of whole
//!   panes of `slide` (each row is aggregated once, into its pane, and a window merges its panes).
//! - `session`: a key's rows less than `gap` apart form one window, which ends `gap` after its last
//!   row.
//! - `column`: the rows already carry their window in two columns (the `window_start` and
//!   `window_end` of an earlier windowed step), as Flink's window table functions leave them.
//!
//! A window `[start, end)` holds the rows with `start <= time < end` and is complete when the
//! watermark reaches `end`. Times are milliseconds (see [`weir_state::time`]).

use crate::late::Clock;
use arrow::array::{Array, AsArray, Int64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use serde::{Deserialize, Serialize};
use std::fmt;
use weir_runtime::OperatorContext;
use weir_state::time::check_event_time_type;
use weir_state::time::event_millis;
use weir_types::{Error, Result};

/// A span of time in milliseconds, written in specs as `10s`, `500ms`, `1m 30s` (or a number of
/// milliseconds); a leading `-` makes it negative where a key allows that (join bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Span(pub i64);

impl Span {
    /// Milliseconds.
    pub fn millis(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < 0 {
            write!(f, "-")?;
        }
        let abs = std::time::Duration::from_millis(self.0.unsigned_abs());
        write!(f, "{}", humantime::format_duration(abs))
    }
}

impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Millis(i64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Millis(ms) => Ok(Span(ms)),
            Raw::Text(t) => parse_span(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Parses `10s`, `-5 s`, `1m 30s`, `250ms` into milliseconds.
pub fn parse_span(text: &str) -> std::result::Result<Span, String> {
    let t = text.trim();
    let (negative, body) = match t.strip_prefix('-') {
        Some(rest) => (true, rest.trim()),
        None => (false, t),
    };
    let d = humantime::parse_duration(body)
        .map_err(|e| format!("expected a duration like 10s or 500ms, found '{text}': {e}"))?;
    let ms = i64::try_from(d.as_millis()).map_err(|_| format!("duration '{text}' is too long"))?;
    Ok(Span(if negative { -ms } else { ms }))
}

/// A `window:` key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum WindowSpec {
    /// Fixed windows of `size`.
    Tumbling {
        /// Window length; required, greater than 0.
        size: Span,
        /// Shift of the window starts from the epoch; default 0.
        #[serde(default)]
        offset: Span,
    },
    /// Windows of `size` starting every `slide`.
    Hopping {
        /// Window length; required, greater than 0 and a multiple of `slide`.
        size: Span,
        /// Distance between window starts; required, greater than 0.
        slide: Span,
        /// Shift of the window starts from the epoch; default 0.
        #[serde(default)]
        offset: Span,
    },
    /// Windows of activity per key, closed by `gap` without rows.
    Session {
        /// Inactivity that closes a session; required, greater than 0.
        gap: Span,
    },
    /// Windows given by two columns of the rows.
    Column {
        /// The column holding each row's window start; default `window_start`.
        #[serde(default = "default_start")]
        start: String,
        /// The column holding each row's window end (exclusive); default `window_end`.
        #[serde(default = "default_end")]
        end: String,
    },
}

fn default_start() -> String {
    "window_start".into()
}

fn default_end() -> String {
    "window_end".into()
}

/// How a step's rows get their windows, checked against its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assigner {
    /// `[start, start + size)` with `start = offset + k * size`.
    Tumbling {
        /// Window length (ms).
        size: i64,
        /// Offset (ms).
        offset: i64,
    },
    /// Panes of `slide`, windows of `size = panes * slide`.
    Hopping {
        /// Window length (ms).
        size: i64,
        /// Pane length (ms).
        slide: i64,
        /// Offset (ms).
        offset: i64,
    },
    /// Sessions per key.
    Session {
        /// Gap (ms).
        gap: i64,
    },
    /// Windows from columns.
    Column,
}

impl Assigner {
    /// The start of the slot (window or pane) holding time `t`.
    pub fn slot_start(&self, t: i64) -> i64 {
        match *self {
            Assigner::Tumbling { size, offset } => t - (t - offset).rem_euclid(size),
            Assigner::Hopping { slide, offset, .. } => t - (t - offset).rem_euclid(slide),
            Assigner::Session { .. } | Assigner::Column => t,
        }
    }

    /// The length of a slot (window for tumbling, pane for hopping).
    pub fn slot_len(&self) -> i64 {
        match *self {
            Assigner::Tumbling { size, .. } => size,
            Assigner::Hopping { slide, .. } => slide,
            Assigner::Session { gap } => gap,
            Assigner::Column => 0,
        }
    }

    /// The end of the last window that holds the slot starting at `slot_start` (the slot can be
    /// dropped once that window is complete and past its lateness).
    pub fn last_window_end(&self, slot_start: i64) -> i64 {
        match *self {
            Assigner::Tumbling { size, .. } => slot_start.saturating_add(size),
            Assigner::Hopping { size, .. } => slot_start.saturating_add(size),
            Assigner::Session { gap } => slot_start.saturating_add(gap),
            Assigner::Column => slot_start,
        }
    }
}

impl WindowSpec {
    /// Plan time: checks the spec against the input (`time` is the step's event-time column,
    /// needed by every type but `column`) and returns how rows are assigned. Errors name the key
    /// (`window.size`, `window.slide`, `time`, ...).
    pub fn check(&self, input: &SchemaRef, time: Option<&str>) -> Result<Assigner> {
        let positive = |key: &str, s: Span| -> Result<i64> {
            if s.0 <= 0 {
                return Err(Error::config(format!(
                    "key 'window.{key}': must be greater than 0, found {s}"
                )));
            }
            Ok(s.0)
        };
        let need_time = || -> Result<()> {
            let Some(t) = time else {
                return Err(Error::config(
                    "key 'time': this window type needs the event-time column the windows are \
                     over",
                ));
            };
            let field = input.field_with_name(t).map_err(|_| {
                Error::schema(format!(
                    "key 'time': column '{t}' is not in the input; available: {}",
                    names(input)
                ))
            })?;
            check_event_time_type(t, field.data_type())
        };
        Ok(match self {
            WindowSpec::Tumbling { size, offset } => {
                need_time()?;
                Assigner::Tumbling {
                    size: positive("size", *size)?,
                    offset: offset.0,
                }
            }
            WindowSpec::Hopping {
                size,
                slide,
                offset,
            } => {
                need_time()?;
                let size = positive("size", *size)?;
                let slide = positive("slide", *slide)?;
                if size % slide != 0 {
                    return Err(Error::config(format!(
                        "key 'window.slide': must divide 'window.size' evenly (weir builds \
                         hopping windows from panes of one slide), found size {} and slide {}",
                        Span(size),
                        Span(slide)
                    )));
                }
                Assigner::Hopping {
                    size,
                    slide,
                    offset: offset.0,
                }
            }
            WindowSpec::Session { gap } => {
                need_time()?;
                Assigner::Session {
                    gap: positive("gap", *gap)?,
                }
            }
            WindowSpec::Column { start, end } => {
                for (key, col) in [("start", start), ("end", end)] {
                    let field = input.field_with_name(col).map_err(|_| {
                        Error::schema(format!(
                            "key 'window.{key}': column '{col}' is not in the input; \
                             available: {}",
                            names(input)
                        ))
                    })?;
                    check_event_time_type(col, field.data_type()).map_err(|e| {
                        Error::schema(format!("key 'window.{key}': {}", e.message()))
                    })?;
                }
                Assigner::Column
            }
        })
    }

    /// The type of the `window_start` / `window_end` columns a windowed step outputs.
    pub fn bound_type(&self, input: &SchemaRef, time: Option<&str>) -> DataType {
        let col = match self {
            WindowSpec::Column { end, .. } => Some(end.as_str()),
            _ => time,
        };
        col.and_then(|c| input.field_with_name(c).ok())
            .map(|f| weir_state::time::bound_type(f.data_type()))
            .unwrap_or(DataType::Int64)
    }

    /// One phrase for `weir validate`, e.g. `hopping 10s every 2s`.
    pub fn describe(&self) -> String {
        match self {
            WindowSpec::Tumbling { size, .. } => format!("tumbling {size}"),
            WindowSpec::Hopping { size, slide, .. } => format!("hopping {size} every {slide}"),
            WindowSpec::Session { gap } => format!("session gap {gap}"),
            WindowSpec::Column { start, end } => format!("windows [{start}, {end})"),
        }
    }
}

/// A batch's rows that have a time, the `(end, start)` slot of each, and their times.
pub(crate) type Assigned = (RecordBatch, Vec<(i64, i64)>, Int64Array);

/// Where a step's rows find their windows: the assigner and the input columns it reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowWindows {
    pub(crate) assigner: Assigner,
    /// The event-time column (all but column windows).
    pub(crate) time_idx: Option<usize>,
    /// The start and end columns of column windows.
    pub(crate) window_idx: Option<(usize, usize)>,
}

impl RowWindows {
    /// Plan time: resolves `spec`'s columns in `input`.
    pub(crate) fn new(spec: &WindowSpec, input: &SchemaRef, time: Option<&str>) -> Result<Self> {
        let assigner = spec.check(input, time)?;
        let index = |c: &str| input.index_of(c).map_err(|e| Error::schema(e.to_string()));
        Ok(match spec {
            WindowSpec::Column { start, end } => RowWindows {
                assigner,
                time_idx: None,
                window_idx: Some((index(start)?, index(end)?)),
            },
            _ => RowWindows {
                assigner,
                time_idx: time.map(index).transpose()?,
                window_idx: None,
            },
        })
    }

    /// Reads the rows' windows: `(end, start)` per row of the rows kept, with the batch reduced to
    /// the rows that have a time (the others are reported).
    pub(crate) fn assign(&self, batch: RecordBatch, ctx: &mut OperatorContext) -> Result<Assigned> {
        let (times, starts_ends) = match (self.time_idx, self.window_idx) {
            (Some(t), _) => (event_millis(batch.column(t))?, None),
            (None, Some((s, e))) => {
                let ends = event_millis(batch.column(e))?;
                let starts = event_millis(batch.column(s))?;
                (ends.clone(), Some(starts))
            }
            (None, None) => return Err(Error::internal("a window without a time column")),
        };
        let has_null =
            times.null_count() > 0 || starts_ends.as_ref().is_some_and(|s| s.null_count() > 0);
        let (batch, times, starts) = if has_null {
            let column = match (self.time_idx, self.window_idx) {
                (Some(t), _) => batch.schema().field(t).name().clone(),
                (None, Some((_, e))) => batch.schema().field(e).name().clone(),
                _ => String::new(),
            };
            let mut nulls = times.clone();
            if let Some(s) = &starts_ends {
                let merged: Int64Array = times
                    .iter()
                    .zip(s.iter())
                    .map(|(a, b)| a.zip(b).map(|(end, _)| end))
                    .collect();
                nulls = merged;
            }
            Clock::null_times(ctx, &batch, &nulls, &column)?;
            let keep = arrow::compute::is_not_null(&nulls)
                .map_err(|e| Error::internal("is_not_null").with_source(e))?;
            let f = |a: &Int64Array| -> Result<Int64Array> {
                Ok(arrow::compute::filter(a, &keep)
                    .map_err(|e| Error::internal("filter").with_source(e))?
                    .as_primitive::<Int64Type>()
                    .clone())
            };
            let starts = match &starts_ends {
                Some(s) => Some(f(s)?),
                None => None,
            };
            (
                filter_record_batch(&batch, &keep)
                    .map_err(|e| Error::internal("filter").with_source(e))?,
                f(&times)?,
                starts,
            )
        } else {
            (batch, times, starts_ends)
        };
        let slots: Vec<(i64, i64)> = match self.assigner {
            Assigner::Column => {
                let starts =
                    starts.ok_or_else(|| Error::internal("column window without starts"))?;
                times
                    .values()
                    .iter()
                    .zip(starts.values())
                    .map(|(&e, &s)| (e, s))
                    .collect()
            }
            a => {
                let len = a.slot_len();
                times
                    .values()
                    .iter()
                    .map(|&t| {
                        let s = a.slot_start(t);
                        (s.saturating_add(len), s)
                    })
                    .collect()
            }
        };
        Ok((batch, slots, times))
    }

    /// The windows `(end, start)` holding the slot `(end, start)`.
    pub(crate) fn windows_of(&self, slot: (i64, i64)) -> Vec<(i64, i64)> {
        match self.assigner {
            Assigner::Hopping { size, slide, .. } => (1..=size / slide)
                .map(|k| {
                    let end = slot.1 + k * slide;
                    (end, end - size)
                })
                .collect(),
            _ => vec![slot],
        }
    }
}

/// The input's column names, for errors.
/// The `window_start` and `window_end` columns of `n` result rows of window `[start, end)`, in
/// the bound type of the step's output.
pub(crate) fn bound_columns(
    start: i64,
    end: i64,
    n: usize,
    bound_type: &DataType,
) -> Result<[arrow::array::ArrayRef; 2]> {
    Ok([
        weir_state::time::millis_as(Int64Array::from(vec![start; n]), bound_type)?,
        weir_state::time::millis_as(Int64Array::from(vec![end; n]), bound_type)?,
    ])
}

pub(crate) fn names(schema: &SchemaRef) -> String {
    schema
        .fields()
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use std::sync::Arc;

    fn input() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "ts",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                false,
            ),
            Field::new("name", DataType::Utf8, false),
        ]))
    }

    /// Windows are written as YAML in specs; these tests write the same values as JSON.
    fn parse(json: &str) -> std::result::Result<WindowSpec, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn bad_windows_are_plan_errors_naming_the_key() {
        let cases = [
            (
                r#"{"type":"tumbling","size":"0s"}"#,
                "key 'window.size': must be greater than 0",
            ),
            (
                r#"{"type":"tumbling","size":-5}"#,
                "key 'window.size': must be greater than 0",
            ),
            (
                r#"{"type":"hopping","size":"10s","slide":"3s"}"#,
                "key 'window.slide': must divide 'window.size' evenly",
            ),
            (
                r#"{"type":"hopping","size":"10s","slide":"0s"}"#,
                "key 'window.slide'",
            ),
            (r#"{"type":"session","gap":"0ms"}"#, "key 'window.gap'"),
            (
                r#"{"type":"column","start":"ts","end":"nope"}"#,
                "key 'window.end': column 'nope'",
            ),
        ];
        for (json, want) in cases {
            let spec = parse(json).expect(json);
            let e = spec.check(&input(), Some("ts")).expect_err(json);
            assert!(e.message().contains(want), "{json}: {e}");
        }
        let spec = parse(r#"{"type":"tumbling","size":"10s"}"#).expect("spec");
        let e = spec.check(&input(), Some("name")).expect_err("utf8 time");
        assert!(e.message().contains("event-time column 'name'"), "{e}");
        let e = spec.check(&input(), None).expect_err("no time");
        assert!(e.message().contains("key 'time'"), "{e}");
        assert!(parse(r#"{"type":"tumbling","size":"10s","slide":"1s"}"#).is_err());
        assert!(parse(r#"{"type":"tumbling","size":"ten"}"#).is_err());
    }

    #[test]
    fn assignment_and_spans() {
        let a = parse(r#"{"type":"hopping","size":"10s","slide":"2s"}"#)
            .expect("spec")
            .check(&input(), Some("ts"))
            .expect("check");
        assert_eq!(a.slot_start(4_999), 4_000);
        assert_eq!(a.slot_start(-1), -2_000);
        assert_eq!(a.last_window_end(4_000), 14_000);
        let t = Assigner::Tumbling {
            size: 10,
            offset: 3,
        };
        assert_eq!(t.slot_start(12), 3);
        assert_eq!(t.slot_start(13), 13);
        assert_eq!(t.slot_start(2), -7);
        assert_eq!(parse_span("-1m 30s"), Ok(Span(-90_000)));
        assert_eq!(parse_span("250ms"), Ok(Span(250)));
        assert_eq!(Span(-1500).to_string(), "-1s 500ms");
    }
}
