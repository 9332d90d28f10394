//! The YAML pipeline spec: parsing, `--set` overrides, and errors that point at the offending key.
//!
//! A spec is a mapping with job-wide options and a list of `steps`. Each step names its kind with
//! exactly one of `source:`, `op:` or `sink:`; its other keys are that kind's options. A step reads
//! from the step before it unless it says `input:` (one step) or `inputs:` (several). See
//! `docs/pipeline-spec.md` for every option and its default.

use serde::{Deserialize, Serialize};
use serde_norway::Mapping;
/// A parsed YAML value (what [`substitute`] returns and [`parse_value`] reads).
pub use serde_norway::Value;
use weir_types::{Error, Result};

pub use weir_runtime::kind::Role;

/// What to do with rows that cannot be processed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop the job with an error naming the operator, input, row and column (default).
    #[default]
    Fail,
    /// Write the row to the dead-letter output and go on.
    DeadLetter,
}

fn default_name() -> String {
    "pipeline".into()
}
fn default_parallelism() -> u32 {
    1
}
fn default_max_parallelism() -> u32 {
    128
}
fn default_channel_capacity() -> String {
    "16MiB".into()
}

/// Job-wide options (everything but the steps' own options).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineSpec {
    /// The job's name, used in logs and default file names. Default: `pipeline`.
    #[serde(default = "default_name")]
    pub name: String,
    /// Parallelism of every step that does not set its own. Default: 1.
    #[serde(default = "default_parallelism")]
    pub parallelism: u32,
    /// Number of key groups: the upper bound of any step's parallelism. Default: 128.
    #[serde(default = "default_max_parallelism")]
    pub max_parallelism: u32,
    /// `fail` (default) or `dead_letter`.
    #[serde(default)]
    pub on_error: OnError,
    /// The sink for dead-letter rows (a step-like mapping with `sink:`), used with
    /// `on_error: dead_letter`. Default: `{sink: jsonl, path: <name>.dead-letter.jsonl}`.
    #[serde(default)]
    pub dead_letter: Option<Mapping>,
    /// Bytes each channel between two tasks may hold before the producer waits. Default: `16MiB`.
    #[serde(default = "default_channel_capacity")]
    pub channel_capacity: String,
    /// Checkpoints (exactly-once results, `--resume`): absent means no checkpoints. Keys: `store`
    /// (a directory or object-store URL; default `.weir/checkpoints/<name>`) and the options of
    /// `weir_checkpoint::CheckpointConfig` (`interval` 10s, `timeout` 10m, `max_concurrent` 1,
    /// `min_pause` 0s, `mode` aligned, `retain` 3).
    #[serde(default)]
    pub checkpoint: Option<Mapping>,
    /// How many dead letters a run may make before it fails. Default: more than half of the rows
    /// read fail it (`{max_fraction: 0.5, min_rows: 1000}`).
    #[serde(default)]
    pub error_budget: ErrorBudget,
    /// What to do when the job fails: restart it in this process from the newest complete
    /// checkpoint. Default: no restarts.
    #[serde(default)]
    pub restart: Option<RestartSpec>,
    /// Model services (`weir_serve::ServiceSpec` each) that `infer` steps call by name with
    /// `service: NAME`. Default: none.
    #[serde(default)]
    pub services: Vec<Mapping>,
    /// The steps, in order.
    pub steps: Vec<Mapping>,
}

/// How many rows may become dead letters: a run whose dead letters are more than `max_fraction`
/// of the rows its sources read fails (exit status 3) with the most frequent reasons. Checked
/// while the job runs once `min_rows` rows were read, and at its end.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBudget {
    /// The largest share of dead letters allowed, `0.0`..=`1.0` (`1.0` never fails). Default 0.5.
    #[serde(default = "default_max_fraction")]
    pub max_fraction: f64,
    /// Rows the sources must have read before the budget is checked while the job runs (the end
    /// of a run is always checked), so a file that starts with a few bad rows is not failed before
    /// the good ones are read. Default 1000.
    #[serde(default = "default_min_rows")]
    pub min_rows: u64,
}

fn default_max_fraction() -> f64 {
    0.5
}

fn default_min_rows() -> u64 {
    1000
}

impl Default for ErrorBudget {
    fn default() -> Self {
        ErrorBudget {
            max_fraction: default_max_fraction(),
            min_rows: default_min_rows(),
        }
    }
}

fn default_backoff() -> String {
    "1s".into()
}

/// The restart strategy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartSpec {
    /// Restarts allowed before the job fails for good. Default: 3.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Wait before the first restart, doubled for each further one. Default: `1s`.
    #[serde(default = "default_backoff")]
    pub backoff: String,
}

fn default_attempts() -> u32 {
    3
}

/// One step, with its common keys taken out.
#[derive(Debug, Clone)]
pub struct StepSpec {
    /// Index in `steps`.
    pub index: usize,
    /// The step's name (`name:`, default `<kind>_<index>`).
    pub name: String,
    /// Role and kind (`op: filter` → `(Op, "filter")`).
    pub role: Role,
    /// The kind's name.
    pub kind: String,
    /// Names of the steps it reads from; `None` means the previous step.
    pub inputs: Option<Vec<String>>,
    /// `parallelism:` if set.
    pub parallelism: Option<u32>,
    /// `watermark:` (sources only): the event-time column and how watermarks are made from it.
    pub watermark: Option<weir_runtime::WatermarkSpec>,
    /// The remaining keys: the kind's options.
    pub options: Mapping,
}

impl StepSpec {
    /// Where the step is, for error messages: `steps[2] ('keep', op: filter)`.
    pub fn locator(&self) -> String {
        format!(
            "steps[{}] ('{}', {}: {})",
            self.index,
            self.name,
            self.role.key(),
            self.kind
        )
    }

    /// Deserializes the kind's options into `T`, with errors naming the step and the key.
    pub fn options<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        from_value(Value::Mapping(self.options.clone()), &self.locator())
    }

    /// The kind's options as the neutral JSON value step kinds parse from.
    pub fn options_json(&self) -> Result<serde_json::Value> {
        to_json(&Value::Mapping(self.options.clone()), &self.locator())
    }
}

/// Deserializes `value` into `T`; errors say where (`at`, plus the path inside) and what was
/// expected, and suggest the closest key for a misspelled one.
pub fn from_value<T: serde::de::DeserializeOwned>(value: Value, at: &str) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        weir_runtime::kind::key_error(at, &e.path().to_string(), &e.into_inner().to_string())
    })
}

/// A YAML value as the neutral JSON value step kinds parse from; `at` names it in errors.
pub fn to_json(value: &Value, at: &str) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| {
        Error::config(format!(
            "{at}: cannot be read as JSON (mapping keys must be strings)"
        ))
        .with_source(e)
    })
}

/// A parsed spec: job options and steps.
#[derive(Debug, Clone)]
pub struct ParsedSpec {
    /// Job-wide options.
    pub pipeline: PipelineSpec,
    /// The steps.
    pub steps: Vec<StepSpec>,
}

/// Parses the YAML `text` and replaces `${NAME}` in its scalars by `vars[NAME]`, else the
/// environment variable `NAME`; `${NAME:-default}` falls back to `default`; `$${` stays a literal
/// `${`. An unset name without a default is an error naming it.
///
/// Values are substituted as YAML *scalars*, never as text: the YAML is parsed first (each
/// reference stands in as an opaque token), then the references are resolved inside the parsed
/// scalars, so a value with a newline, `: `, `#`, brackets or quotes stays one value and can never
/// change the spec's structure. A scalar that is one unquoted reference and nothing else
/// (`parallelism: ${N}`) takes the type the value would have as a plain YAML scalar (null, bool,
/// integer, float) when it is one, else it is a string; a quoted reference (`"${N}"`) and a
/// reference within other text are always strings. References in comments are not resolved.
pub fn substitute(
    text: &str,
    origin: &str,
    vars: &std::collections::HashMap<String, String>,
) -> Result<Value> {
    if text.contains(MARK) {
        return Err(Error::config(format!(
            "{origin}: contains the character U+E000, which weir reserves while substituting variables"
        )));
    }
    let mut refs: Vec<VarRef> = Vec::new();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("${") {
        if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let Some(end) = after.find('}') else {
            return Err(Error::config(format!(
                "{origin}: unclosed '${{' in the spec"
            )));
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let before = out.chars().next_back();
        let next = after[end + 1..].chars().next();
        let quoted = matches!(
            (before, next),
            (Some('"'), Some('"')) | (Some('\''), Some('\''))
        );
        out.push(MARK);
        out.push_str(&refs.len().to_string());
        out.push(MARK);
        refs.push(VarRef {
            name: name.to_string(),
            default: default.map(String::from),
            quoted,
        });
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    let mut value: Value = serde_norway::from_str(&out)
        .map_err(|e| Error::config(format!("{origin} is not valid YAML: {e}")))?;
    if !refs.is_empty() {
        let resolve = |r: &VarRef| -> Result<String> {
            vars.get(&r.name)
                .cloned()
                .or_else(|| std::env::var(&r.name).ok())
                .or_else(|| r.default.clone())
                .ok_or_else(|| {
                    Error::config(format!(
                        "{origin}: variable '{}' is not set (give --var {}=VALUE, set it in the environment, or write ${{{}:-default}})",
                        r.name, r.name, r.name
                    ))
                })
        };
        fill(&mut value, &refs, &resolve)?;
    }
    Ok(value)
}

/// Stands in for a `${...}` reference while the YAML is parsed: `MARK index MARK`.
const MARK: char = '\u{E000}';

/// One `${NAME}` / `${NAME:-default}` reference of a spec's text.
struct VarRef {
    name: String,
    default: Option<String>,
    /// Written as `"${NAME}"` or `'${NAME}'`: always a string.
    quoted: bool,
}

/// Resolves the references in every scalar (and mapping key) of `value`.
fn fill(
    value: &mut Value,
    refs: &[VarRef],
    resolve: &dyn Fn(&VarRef) -> Result<String>,
) -> Result<()> {
    match value {
        Value::String(s) if s.contains(MARK) => *value = fill_scalar(s, refs, resolve)?,
        Value::Sequence(items) => {
            for v in items {
                fill(v, refs, resolve)?;
            }
        }
        Value::Mapping(m) => {
            if m.keys()
                .any(|k| matches!(k, Value::String(s) if s.contains(MARK)))
            {
                let old = std::mem::take(m);
                for (mut k, mut v) in old {
                    fill(&mut k, refs, resolve)?;
                    fill(&mut v, refs, resolve)?;
                    m.insert(k, v);
                }
            } else {
                for (_, v) in m.iter_mut() {
                    fill(v, refs, resolve)?;
                }
            }
        }
        Value::Tagged(t) => fill(&mut t.value, refs, resolve)?,
        _ => {}
    }
    Ok(())
}

/// The value of a scalar holding references: a typed plain scalar for one unquoted reference
/// alone, else the text with every reference replaced.
fn fill_scalar(
    s: &str,
    refs: &[VarRef],
    resolve: &dyn Fn(&VarRef) -> Result<String>,
) -> Result<Value> {
    let mut out = String::with_capacity(s.len());
    let mut whole = None;
    let mut parts = s.split(MARK);
    out.push_str(parts.next().unwrap_or_default());
    while let (Some(index), Some(text)) = (parts.next(), parts.next()) {
        let r = index.parse::<usize>().ok().and_then(|i| refs.get(i));
        let Some(r) = r else {
            // Not ours (cannot happen: the text held no MARK before substitution); keep it.
            out.push(MARK);
            out.push_str(index);
            out.push(MARK);
            out.push_str(text);
            continue;
        };
        if out.is_empty() && text.is_empty() && s.len() == index.len() + 2 * MARK.len_utf8() {
            whole = Some(r);
        }
        out.push_str(&resolve(r)?);
        out.push_str(text);
    }
    // Typed like the same text written as a plain scalar, but only as a scalar: anything that
    // YAML would read as a structure (or a quoted/tagged string) stays the string it is.
    if whole.is_some_and(|r| !r.quoted)
        && !out.contains(['\n', '\r'])
        && let Ok(v) = serde_norway::from_str::<Value>(&out)
        && matches!(v, Value::Null | Value::Bool(_) | Value::Number(_))
    {
        return Ok(v);
    }
    Ok(Value::String(out))
}

/// Parses YAML text (with no `${...}` to substitute; see [`substitute`]) after applying
/// `overrides`.
pub fn parse(yaml: &str, origin: &str, overrides: &[String]) -> Result<ParsedSpec> {
    let value: Value = serde_norway::from_str(yaml)
        .map_err(|e| Error::config(format!("{origin} is not valid YAML: {e}")))?;
    parse_value(value, origin, overrides)
}

/// Parses a YAML value (as [`substitute`] returns it) after applying `overrides` (`key.path=value`,
/// see [`apply_override`]).
pub fn parse_value(mut value: Value, origin: &str, overrides: &[String]) -> Result<ParsedSpec> {
    for o in overrides {
        apply_override(&mut value, o)?;
    }
    if !value.is_mapping() {
        return Err(Error::config(format!(
            "{origin}: expected a mapping with 'steps' at the top level"
        )));
    }
    let pipeline: PipelineSpec = from_value(value, origin)?;
    if pipeline.steps.is_empty() {
        return Err(Error::config(format!(
            "{origin}: key 'steps': expected at least one step"
        )));
    }
    if !(0.0..=1.0).contains(&pipeline.error_budget.max_fraction) {
        return Err(Error::config(format!(
            "{origin}: key 'error_budget.max_fraction': expected a share between 0.0 and 1.0, found {}",
            pipeline.error_budget.max_fraction
        )));
    }
    if pipeline.parallelism == 0 {
        return Err(Error::config(format!(
            "{origin}: key 'parallelism': expected at least 1"
        )));
    }
    let steps = pipeline
        .steps
        .iter()
        .enumerate()
        .map(|(i, m)| parse_step(i, m))
        .collect::<Result<Vec<_>>>()?;
    Ok(ParsedSpec { pipeline, steps })
}

fn parse_step(index: usize, m: &Mapping) -> Result<StepSpec> {
    let at = format!("steps[{index}]");
    let mut options = m.clone();
    let mut role_kind = None;
    for role in [Role::Source, Role::Op, Role::Sink] {
        if let Some(v) = options.remove(role.key()) {
            let Some(kind) = v.as_str() else {
                return Err(Error::config(format!(
                    "{at}: key '{}': expected the name of a kind, found {v:?}",
                    role.key()
                )));
            };
            if let Some((r, _)) = role_kind {
                return Err(Error::config(format!(
                    "{at}: has both '{}' and '{}'; a step is exactly one of source, op or sink",
                    Role::key(r),
                    role.key()
                )));
            }
            role_kind = Some((role, kind.to_string()));
        }
    }
    let Some((role, kind)) = role_kind else {
        return Err(Error::config(format!(
            "{at}: expected one of the keys 'source', 'op' or 'sink' naming the step's kind"
        )));
    };
    let name = match options.remove("name") {
        None => format!("{kind}_{index}"),
        Some(Value::String(s)) if !s.is_empty() => s,
        Some(v) => {
            return Err(Error::config(format!(
                "{at}: key 'name': expected a string, found {v:?}"
            )));
        }
    };
    let one = options.remove("input");
    // `inputs` as a list names input steps; as a mapping it is the kind's own option (the
    // model-input binding of `op: infer`) and stays with the options.
    let many = match options.remove("inputs") {
        Some(v @ Value::Mapping(_)) => {
            options.insert(Value::String("inputs".into()), v);
            None
        }
        other => other,
    };
    let inputs = match (one, many) {
        (Some(_), Some(_)) => {
            return Err(Error::config(format!(
                "{at}: give either 'input' or 'inputs', not both"
            )));
        }
        (Some(Value::String(s)), None) => Some(vec![s]),
        (Some(v), None) => {
            return Err(Error::config(format!(
                "{at}: key 'input': expected a step name, found {v:?}"
            )));
        }
        (None, Some(v)) => Some(from_value::<Vec<String>>(
            v,
            &format!("{at}: key 'inputs'"),
        )?),
        (None, None) => None,
    };
    let parallelism = match options.remove("parallelism") {
        None => None,
        Some(v) => {
            let p: u32 = from_value(v, &format!("{at}: key 'parallelism'"))?;
            if p == 0 {
                return Err(Error::config(format!(
                    "{at}: key 'parallelism': expected at least 1"
                )));
            }
            Some(p)
        }
    };
    let watermark = match options.remove("watermark") {
        None => None,
        Some(v) => {
            if role != Role::Source {
                return Err(Error::config(format!(
                    "{at}: key 'watermark': only a source declares event time"
                )));
            }
            Some(from_value(v, &format!("{at}: key 'watermark'"))?)
        }
    };
    Ok(StepSpec {
        index,
        name,
        role,
        kind,
        inputs,
        parallelism,
        watermark,
        options,
    })
}

/// Applies one `--set key.path=value` override. Path segments are mapping keys; inside `steps`, a
/// segment may be a step's name or its index. The value is parsed as YAML (`2`, `true`, `"x"`,
/// `[a, b]`), so `--set parallelism=4` sets a number.
pub fn apply_override(root: &mut Value, assignment: &str) -> Result<()> {
    let Some((path, raw)) = assignment.split_once('=') else {
        return Err(Error::config(format!(
            "--set '{assignment}': expected key.path=value"
        )));
    };
    let new: Value = serde_norway::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    let segments: Vec<&str> = path.split('.').collect();
    let mut cur = root;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        cur = match cur {
            Value::Mapping(m) => {
                if last {
                    m.insert(Value::String(seg.to_string()), new);
                    return Ok(());
                }
                m.entry(Value::String(seg.to_string()))
                    .or_insert(Value::Mapping(Mapping::new()))
            }
            Value::Sequence(items) => {
                let idx = match seg.parse::<usize>() {
                    Ok(i) => Some(i),
                    Err(_) => items
                        .iter()
                        .position(|s| s.get("name").and_then(|n| n.as_str()) == Some(*seg)),
                };
                let Some(item) = idx.and_then(|i| items.get_mut(i)) else {
                    return Err(Error::config(format!(
                        "--set '{assignment}': no step named or numbered '{seg}'"
                    )));
                };
                if last {
                    *item = new;
                    return Ok(());
                }
                item
            }
            _ => {
                return Err(Error::config(format!(
                    "--set '{assignment}': '{}' is not a mapping",
                    segments[..i].join(".")
                )));
            }
        };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
name: t
steps:
  - name: read
    source: csv
    path: a.csv
  - op: filter
    predicate: "x > 1"
  - sink: console
"#;

    #[test]
    fn parses_steps_with_default_names_and_inputs() {
        let p = parse(SPEC, "t.yaml", &[]).expect("parse");
        assert_eq!(p.pipeline.name, "t");
        assert_eq!(p.pipeline.parallelism, 1);
        assert_eq!(p.steps[1].name, "filter_1");
        assert_eq!(p.steps[1].role, Role::Op);
        assert!(p.steps[1].inputs.is_none());
        assert_eq!(
            p.steps[2].locator(),
            "steps[2] ('console_2', sink: console)"
        );
    }

    #[test]
    fn overrides_address_steps_by_name_or_index() {
        let p = parse(
            SPEC,
            "t.yaml",
            &[
                "parallelism=4".into(),
                "steps.read.path=b.csv".into(),
                "steps.1.predicate=x > 2".into(),
            ],
        )
        .expect("parse");
        assert_eq!(p.pipeline.parallelism, 4);
        assert_eq!(
            p.steps[0].options.get("path").and_then(|v| v.as_str()),
            Some("b.csv")
        );
        assert_eq!(
            p.steps[1].options.get("predicate").and_then(|v| v.as_str()),
            Some("x > 2")
        );
        let err = parse(SPEC, "t.yaml", &["steps.nope.path=x".into()]).expect_err("unknown step");
        assert!(
            err.to_string().contains("no step named or numbered 'nope'"),
            "{err}"
        );
    }

    fn vars(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn yaml(text: &str) -> Value {
        serde_norway::from_str(text).expect("yaml")
    }

    #[test]
    fn substitutes_variables() {
        let v = vars(&[("ROOT", "/data"), ("N", "3"), ("B", "true"), ("E", "")]);
        let out = substitute(
            "path: ${ROOT}/a.csv\nx: ${WEIR_SURELY_UNSET:-d}\ny: $${KEEP}\nn: ${N}\nq: \"${N}\"\n\
             b: ${B}\ne: ${E}\nf: {p: ${ROOT}/x, d: ${WEIR_SURELY_UNSET:-a, b: c}}\n\
             # ${WEIR_SURELY_UNSET} in a comment is not resolved\n",
            "t",
            &v,
        )
        .expect("subst");
        assert_eq!(
            out,
            yaml(
                "path: /data/a.csv\nx: d\ny: ${KEEP}\nn: 3\nq: '3'\nb: true\ne: null\n\
                 f: {p: /data/x, d: 'a, b: c'}\n"
            )
        );
        let err = substitute("a: ${WEIR_SURELY_UNSET}", "t", &v).expect_err("unset");
        assert!(
            err.to_string().contains("'WEIR_SURELY_UNSET' is not set"),
            "{err}"
        );
    }

    #[test]
    fn variables_are_values_never_yaml() {
        // F9: a value with newlines or YAML syntax stays one scalar; the structure cannot change.
        let spec = "name: ${N}\nparallelism: 2\nsteps:\n  - source: files\n    url: \"${U}\"\n    \
                    batch_size: ${B}\n";
        let hostile = [
            "x\nparallelism: 3",
            "x\n  - sink: console",
            "{parallelism: 3}",
            "[1, 2]",
            "a: b",
            "x # comment",
            "\"quoted\"",
            "'single'",
            "!!binary aGk=",
            "&a x",
            "*a",
            "|\n  block",
            "${N}",
            "---\nsteps: []",
        ];
        for h in hostile {
            let out = substitute(spec, "t", &vars(&[("N", h), ("U", h), ("B", h)]))
                .unwrap_or_else(|e| panic!("{h:?}: {}", e.report()));
            let mut want = yaml(
                "name: ''\nparallelism: 2\nsteps:\n  - {source: files, url: '', batch_size: ''}\n",
            );
            let text = Value::String(h.to_string());
            want["name"] = text.clone();
            want["steps"][0]["url"] = text.clone();
            want["steps"][0]["batch_size"] = text;
            assert_eq!(out, want, "value {h:?}");
        }
        // Through the parser: the value reaches the option whole, parallelism is untouched.
        let parsed = parse_value(
            substitute(
                spec,
                "t",
                &vars(&[("N", "x\nparallelism: 3"), ("U", "u"), ("B", "8")]),
            )
            .expect("subst"),
            "t",
            &[],
        )
        .expect("parse");
        assert_eq!(parsed.pipeline.name, "x\nparallelism: 3");
        assert_eq!(parsed.pipeline.parallelism, 2);
        assert_eq!(parsed.steps.len(), 1);
    }

    #[test]
    fn errors_point_at_the_key() {
        let err = parse("name: t\nparalelism: 2\nsteps: []\n", "t.yaml", &[]).expect_err("typo");
        assert!(err.to_string().contains("paralelism"), "{err}");
        assert!(err.to_string().contains("expected one of"), "{err}");
        assert!(
            err.to_string().contains("did you mean 'parallelism'?"),
            "{err}"
        );
        let err = parse("steps:\n  - path: a.csv\n", "t.yaml", &[]).expect_err("no kind");
        assert!(
            err.to_string()
                .contains("steps[0]: expected one of the keys 'source', 'op' or 'sink'"),
            "{err}"
        );
        let err = parse("steps:\n  - source: csv\n    op: filter\n", "t.yaml", &[])
            .expect_err("two kinds");
        assert!(err.to_string().contains("exactly one of"), "{err}");
        let err =
            parse("parallelism: many\nsteps: [{source: csv}]\n", "t.yaml", &[]).expect_err("type");
        assert!(err.to_string().contains("key 'parallelism'"), "{err}");
        let err =
            parse("steps: [{source: csv, parallelism: 0}]\n", "t.yaml", &[]).expect_err("zero");
        assert!(err.to_string().contains("at least 1"), "{err}");
    }
}
