//! `vad`: voice-activity detection with Silero VAD (`silero_vad_16k_op15.onnx`), turning each
//! `weir.audio` row into one output row per speech segment (`segment`, `start_s`, `end_s`).
//!
//! Silero is stateful: the audio is cut into windows of 512 new samples (32 ms at 16 kHz), each
//! given to the model prefixed by the last 64 samples of the window before (zeros for the first),
//! together with the recurrent `state` (`[2, 1, 128]`, zeros at the start of every audio and fed
//! back from `stateN`) and the sample rate `sr`. The model returns the window's speech
//! probability. Probabilities become segments the way silero's own `get_speech_timestamps` does:
//! speech starts at the first window at or above `threshold`; once in speech, a window below
//! `neg_threshold` opens a possible end, which becomes the end when the probability stays below
//! `threshold` for `min_silence`; segments shorter than `min_speech` are dropped; then every
//! segment is widened by `speech_pad` on each side (half the gap when two segments are closer than
//! twice that). Segments are not split by length.
//!
//! Each row's windows run one after the other (the state chains them), so one batch is processed
//! in one `spawn_cpu` call on the operator's own model session. Rows whose audio is not 16 kHz,
//! is null or holds non-finite samples are bad rows.

use crate::backend::{Backend, BackendOptions, HostTensor, OrtBackend};
use crate::model::{ElementType, ModelInfo};
use arrow::array::{
    Array, ArrayRef, AsArray, Float32Array, Float64Array, Int64Array, RecordBatch, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Float32Type, Schema, SchemaRef, UInt16Type, UInt32Type};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::{Error, Result};

/// The only sample rate the 16 kHz Silero model accepts.
pub const VAD_SAMPLE_RATE: u32 = 16_000;
/// New samples per window.
pub const WINDOW: usize = 512;
/// Samples of the previous window prefixed to each window.
pub const CONTEXT: usize = 64;

fn default_audio() -> String {
    "audio".into()
}
fn default_threshold() -> f32 {
    0.5
}
fn default_min_speech() -> Duration {
    Duration::from_millis(250)
}
fn default_min_silence() -> Duration {
    Duration::from_millis(100)
}
fn default_speech_pad() -> Duration {
    Duration::from_millis(30)
}

/// Options of a `vad` operator. Durations are written like `100ms` or `1s`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VadSpec {
    /// Path of the Silero VAD model (`silero_vad_16k_op15.onnx`; relative paths are relative to the
    /// working directory). Required.
    pub model: PathBuf,
    /// The input `weir.audio` column, 16 kHz (use `decode_audio` with `sample_rate: 16000`); several
    /// channels are averaged. It is not in the output. Default `audio`.
    #[serde(default = "default_audio")]
    pub column: String,
    /// Speech starts at a window whose probability is at least this. Default 0.5.
    #[serde(default = "default_threshold")]
    pub threshold: f32,
    /// Once in speech, a window below this may end it. Default `threshold - 0.15` (at least 0.01).
    #[serde(default)]
    pub neg_threshold: Option<f32>,
    /// Shorter segments are dropped. Default `250ms`.
    #[serde(
        default = "default_min_speech",
        deserialize_with = "crate::spec::duration",
        serialize_with = "crate::spec::ser_duration"
    )]
    pub min_speech: Duration,
    /// Silence (probability below `threshold` after falling below `neg_threshold`) that ends a
    /// segment. Default `100ms`.
    #[serde(
        default = "default_min_silence",
        deserialize_with = "crate::spec::duration",
        serialize_with = "crate::spec::ser_duration"
    )]
    pub min_silence: Duration,
    /// Added before and after every segment (half the gap when two segments are closer than
    /// twice this; never beyond the audio). Default `30ms`.
    #[serde(
        default = "default_speech_pad",
        deserialize_with = "crate::spec::duration",
        serialize_with = "crate::spec::ser_duration"
    )]
    pub speech_pad: Duration,
    /// Intra-op threads of the model session. Default 1.
    #[serde(default = "one")]
    pub cpus: usize,
}

fn one() -> usize {
    1
}

impl VadSpec {
    /// A spec with every default for the model at `model`.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        VadSpec {
            model: model.into(),
            column: default_audio(),
            threshold: default_threshold(),
            neg_threshold: None,
            min_speech: default_min_speech(),
            min_silence: default_min_silence(),
            speech_pad: default_speech_pad(),
            cpus: 1,
        }
    }

    fn neg(&self) -> f32 {
        self.neg_threshold
            .unwrap_or((self.threshold - 0.15).max(0.01))
    }

    /// The segmentation parameters in samples at 16 kHz.
    pub fn params(&self) -> SegmentParams {
        let samples = |d: Duration| (d.as_secs_f64() * f64::from(VAD_SAMPLE_RATE)).round() as usize;
        SegmentParams {
            threshold: self.threshold,
            neg_threshold: self.neg(),
            min_speech: samples(self.min_speech),
            min_silence: samples(self.min_silence),
            speech_pad: samples(self.speech_pad),
        }
    }

    fn check_model(info: &ModelInfo) -> Result<()> {
        let model = info.file_name();
        let want_in = [
            ("input", ElementType::F32),
            ("state", ElementType::F32),
            ("sr", ElementType::I64),
        ];
        for (name, el) in want_in {
            match info.input(name) {
                Some(t) if t.element == el => {}
                Some(t) => {
                    return Err(Error::config(format!(
                        "vad: input '{name}' of model {model} is {} but a silero vad model has {el}",
                        t.element
                    )));
                }
                None => {
                    return Err(Error::config(format!(
                        "vad: model {model} has no input '{name}'; expected a silero vad model (inputs input, state, sr)"
                    )));
                }
            }
        }
        for name in ["output", "stateN"] {
            if info.output(name).is_none() {
                return Err(Error::config(format!(
                    "vad: model {model} has no output '{name}'; expected a silero vad model (outputs output, stateN)"
                )));
            }
        }
        Ok(())
    }

    /// Plan time: checks the options, the audio column and the model's inputs and outputs, and
    /// returns the output schema: the input's columns without the audio column, then `segment`
    /// (UInt32, 0-based within its audio), `start_s` and `end_s` (Float64 seconds).
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        for (what, v) in [("threshold", self.threshold), ("neg_threshold", self.neg())] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::config(format!(
                    "vad: {what} must be between 0 and 1, got {v}"
                )));
            }
        }
        if self.neg() > self.threshold {
            return Err(Error::config(format!(
                "vad: neg_threshold {} is above threshold {}",
                self.neg(),
                self.threshold
            )));
        }
        if self.cpus == 0 {
            return Err(Error::config("vad: cpus must be at least 1"));
        }
        let (_, field) = input.column_with_name(&self.column).ok_or_else(|| {
            Error::schema(format!(
                "vad: column '{}' does not exist (columns: {})",
                self.column,
                input
                    .fields()
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let is_audio = match field.data_type() {
            DataType::Struct(fields) => ["samples", "sample_rate", "channels"]
                .iter()
                .all(|n| fields.iter().any(|f| f.name() == n)),
            _ => false,
        };
        if !is_audio {
            return Err(Error::schema(format!(
                "vad: column '{}' is {} but a weir.audio column is needed (put decode_audio before)",
                self.column,
                field.data_type()
            )));
        }
        Self::check_model(&ModelInfo::load(&self.model)?)?;
        let mut fields: Vec<Field> = input
            .fields()
            .iter()
            .filter(|f| f.name() != &self.column)
            .map(|f| f.as_ref().clone())
            .collect();
        for name in ["segment", "start_s", "end_s"] {
            if fields.iter().any(|f| f.name() == name) {
                return Err(Error::schema(format!(
                    "vad: the input already has a column '{name}'; rename or drop it first"
                )));
            }
        }
        fields.push(Field::new("segment", DataType::UInt32, false));
        fields.push(Field::new("start_s", DataType::Float64, false));
        fields.push(Field::new("end_s", DataType::Float64, false));
        Ok(Arc::new(Schema::new_with_metadata(
            fields,
            input.metadata().clone(),
        )))
    }

    /// Builds one running instance (the model is loaded when it opens).
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        let schema = self.output_schema(input)?;
        Ok(Box::new(VadOperator {
            spec: self.clone(),
            schema,
            backend: None,
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        format!(
            "vad {} with {} (threshold {}, neg_threshold {}, min_speech {:?}, min_silence {:?}, speech_pad {:?})",
            self.column,
            crate::model::model_name(&self.model),
            self.threshold,
            self.neg(),
            self.min_speech,
            self.min_silence,
            self.speech_pad
        )
    }
}

impl kind::Spec for VadSpec {
    fn describe(&self) -> String {
        VadSpec::describe(self)
    }
}

impl kind::OperatorSpec for VadSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        VadSpec::output_schema(self, kind::first_input(inputs)?)
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        VadSpec::create(self, ctx.input()?)
    }
}

/// Segmentation parameters, durations in samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SegmentParams {
    /// Speech starts at or above this probability.
    pub threshold: f32,
    /// Below this a segment may end.
    pub neg_threshold: f32,
    /// Shortest kept segment.
    pub min_speech: usize,
    /// Silence that ends a segment.
    pub min_silence: usize,
    /// Padding on each side.
    pub speech_pad: usize,
}

/// Speech segments `(start, end)` in samples from per-window probabilities (window `i` covers
/// samples `i * WINDOW ..`) of an audio of `len` samples; silero's `get_speech_timestamps`
/// without its length split.
pub fn segments(probs: &[f32], len: usize, p: &SegmentParams) -> Vec<(usize, usize)> {
    let mut speeches: Vec<(usize, usize)> = Vec::new();
    let mut triggered = false;
    let mut start = 0usize;
    let mut temp_end = 0usize;
    for (i, &prob) in probs.iter().enumerate() {
        let pos = WINDOW * i;
        if prob >= p.threshold && temp_end != 0 {
            temp_end = 0;
        }
        if prob >= p.threshold && !triggered {
            triggered = true;
            start = pos;
            continue;
        }
        if prob < p.neg_threshold && triggered {
            if temp_end == 0 {
                temp_end = pos;
            }
            if pos - temp_end < p.min_silence {
                continue;
            }
            if temp_end - start > p.min_speech {
                speeches.push((start, temp_end));
            }
            temp_end = 0;
            triggered = false;
        }
    }
    if triggered && len.saturating_sub(start) > p.min_speech {
        speeches.push((start, len));
    }
    let n = speeches.len();
    for i in 0..n {
        if i == 0 {
            speeches[i].0 = speeches[i].0.saturating_sub(p.speech_pad);
        }
        if i + 1 < n {
            let gap = speeches[i + 1].0.saturating_sub(speeches[i].1);
            if gap < 2 * p.speech_pad {
                speeches[i].1 += gap / 2;
                speeches[i + 1].0 = speeches[i + 1].0.saturating_sub(gap / 2);
            } else {
                speeches[i].1 = (speeches[i].1 + p.speech_pad).min(len);
                speeches[i + 1].0 = speeches[i + 1].0.saturating_sub(p.speech_pad);
            }
        } else {
            speeches[i].1 = (speeches[i].1 + p.speech_pad).min(len);
        }
    }
    speeches
}

/// The speech probability of every window of `samples` (16 kHz mono), chaining the model's state
/// from window to window; the last window is padded with zeros.
pub fn speech_probabilities(backend: &mut dyn Backend, samples: &[f32]) -> Result<Vec<f32>> {
    let mut probs = Vec::with_capacity(samples.len().div_ceil(WINDOW));
    let mut state: ArrayRef = Arc::new(Float32Array::from(vec![0f32; 2 * 128]));
    let mut context = [0f32; CONTEXT];
    let sr: ArrayRef = Arc::new(Int64Array::from(vec![i64::from(VAD_SAMPLE_RATE)]));
    let mut frame = vec![0f32; CONTEXT + WINDOW];
    for chunk in samples.chunks(WINDOW) {
        frame[..CONTEXT].copy_from_slice(&context);
        frame[CONTEXT..CONTEXT + chunk.len()].copy_from_slice(chunk);
        frame[CONTEXT + chunk.len()..].fill(0.0);
        context.copy_from_slice(&frame[WINDOW..]);
        let inputs = vec![
            (
                "input".to_string(),
                HostTensor::try_new(
                    vec![1, CONTEXT + WINDOW],
                    Arc::new(Float32Array::from(frame.clone())),
                )?,
            ),
            (
                "state".to_string(),
                HostTensor::try_new(vec![2, 1, 128], state.clone())?,
            ),
            ("sr".to_string(), HostTensor::try_new(vec![], sr.clone())?),
        ];
        let outputs = backend.run(inputs)?;
        let mut prob = None;
        for (name, t) in outputs {
            match name.as_str() {
                "output" => {
                    prob = t
                        .data
                        .as_primitive_opt::<Float32Type>()
                        .and_then(|a| a.values().first().copied())
                }
                "stateN" => {
                    if t.data.len() != 2 * 128 {
                        return Err(Error::external(format!(
                            "vad model returned a state of {} values, expected 256",
                            t.data.len()
                        )));
                    }
                    state = t.data;
                }
                _ => {}
            }
        }
        probs.push(
            prob.ok_or_else(|| Error::external("vad model returned no f32 'output' probability"))?,
        );
    }
    Ok(probs)
}

/// A running `vad`.
pub struct VadOperator {
    spec: VadSpec,
    schema: SchemaRef,
    backend: Option<Box<dyn Backend>>,
}

impl std::fmt::Debug for VadOperator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VadOperator")
            .field("model", &self.spec.model)
            .finish()
    }
}

/// One row's outcome: its segments in seconds, or why it was refused.
type RowResult = std::result::Result<Vec<(f64, f64)>, Error>;

/// The mono samples of row `r` of an audio struct column, or why they cannot be used.
fn mono_samples(audio: &arrow::array::StructArray, r: usize) -> Result<Vec<f32>> {
    if audio.is_null(r) {
        return Err(Error::input("audio is null"));
    }
    let col = |name: &str| {
        audio
            .column_by_name(name)
            .ok_or_else(|| Error::input(format!("audio column has no '{name}' field")))
    };
    let rate = col("sample_rate")?
        .as_primitive_opt::<UInt32Type>()
        .map(|a| a.value(r))
        .ok_or_else(|| Error::input("audio sample_rate is not UInt32"))?;
    if rate != VAD_SAMPLE_RATE {
        return Err(Error::input(format!(
            "vad needs {VAD_SAMPLE_RATE} Hz audio but this row is {rate} Hz: set sample_rate: {VAD_SAMPLE_RATE} on decode_audio"
        )));
    }
    let channels = col("channels")?
        .as_primitive_opt::<UInt16Type>()
        .map(|a| usize::from(a.value(r).max(1)))
        .ok_or_else(|| Error::input("audio channels is not UInt16"))?;
    let samples = col("samples")?
        .as_list_opt::<i32>()
        .ok_or_else(|| Error::input("audio samples are not a list"))?
        .value(r);
    let samples = samples
        .as_primitive_opt::<Float32Type>()
        .ok_or_else(|| Error::input("audio samples are not f32"))?;
    let values = samples.values();
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::input(format!("audio sample {i} is not finite")));
    }
    if channels == 1 {
        return Ok(values.to_vec());
    }
    Ok(values
        .chunks(channels)
        .map(|f| f.iter().sum::<f32>() / f.len() as f32)
        .collect())
}

impl VadOperator {
    async fn ensure_backend(&mut self, ctx: &OperatorContext) -> Result<()> {
        if self.backend.is_some() {
            return Ok(());
        }
        let path = self.spec.model.clone();
        let opts = BackendOptions {
            cpus: self.spec.cpus,
            gpus: 0,
            spin: false,
        };
        let b = ctx
            .spawn_cpu(move || OrtBackend::load(&path, &opts))
            .await??;
        self.backend = Some(Box::new(b));
        Ok(())
    }
}

#[async_trait]
impl Operator for VadOperator {
    async fn open(&mut self, ctx: &mut OperatorContext) -> Result<()> {
        self.ensure_backend(ctx).await
    }

    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        self.ensure_backend(ctx).await?;
        let mut backend = self
            .backend
            .take()
            .ok_or_else(|| Error::internal("vad: model not loaded"))?;
        let column = weir_types::planned_column(&batch, &self.spec.column, "vad")?;
        let params = self.spec.params();
        let (backend, results) = ctx
            .spawn_cpu(move || {
                let results: Vec<RowResult> = match column.as_struct_opt() {
                    None => vec![Err(Error::internal("vad: audio column is not a struct"))],
                    Some(audio) => (0..audio.len())
                        .map(|r| {
                            let samples = mono_samples(audio, r)?;
                            let probs = speech_probabilities(backend.as_mut(), &samples)?;
                            let rate = f64::from(VAD_SAMPLE_RATE);
                            Ok(segments(&probs, samples.len(), &params)
                                .into_iter()
                                .map(|(s, e)| (s as f64 / rate, e as f64 / rate))
                                .collect())
                        })
                        .collect(),
                };
                (backend, results)
            })
            .await?;
        self.backend = Some(backend);
        let uri_col = batch
            .column_by_name("uri")
            .and_then(|c| c.as_string_opt::<i32>().cloned());
        let mut take = Vec::new();
        let mut seg = Vec::new();
        let mut starts = Vec::new();
        let mut ends = Vec::new();
        for (row, r) in results.into_iter().enumerate() {
            match r {
                Ok(list) => {
                    for (i, (s, e)) in list.into_iter().enumerate() {
                        take.push(row as u32);
                        seg.push(i as u32);
                        starts.push(s);
                        ends.push(e);
                    }
                }
                Err(e) => {
                    let input = uri_col
                        .as_ref()
                        .filter(|u| row < u.len() && u.is_valid(row))
                        .map(|u| u.value(row).to_string());
                    ctx.bad_row(e, input, Some(format!("row {row}")), None)?;
                }
            }
        }
        if take.is_empty() {
            return Ok(());
        }
        let indices = UInt32Array::from(take);
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for f in self.schema.fields().iter() {
            let c: ArrayRef = match f.name().as_str() {
                "segment" => Arc::new(UInt32Array::from(std::mem::take(&mut seg))),
                "start_s" => Arc::new(Float64Array::from(std::mem::take(&mut starts))),
                "end_s" => Arc::new(Float64Array::from(std::mem::take(&mut ends))),
                name => {
                    let src = weir_types::planned_column(&batch, name, "vad")?;
                    arrow::compute::take(src.as_ref(), &indices, None)?
                }
            };
            cols.push(c);
        }
        out.emit(RecordBatch::try_new(self.schema.clone(), cols)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SegmentParams {
        VadSpec::new("unused.onnx").params()
    }

    #[test]
    fn defaults_in_samples() {
        let p = params();
        assert_eq!(p.threshold, 0.5);
        assert!((p.neg_threshold - 0.35).abs() < 1e-6);
        assert_eq!(
            (p.min_speech, p.min_silence, p.speech_pad),
            (4000, 1600, 480)
        );
    }

    #[test]
    fn segments_follow_silero_rules() {
        let p = params();
        // 1 s of silence, 1 s of speech, 1 s of silence (31.25 windows per second).
        let mut probs = vec![0.0; 31];
        probs.extend(vec![0.9; 31]);
        probs.extend(vec![0.0; 32]);
        let len = probs.len() * WINDOW;
        let s = segments(&probs, len, &p);
        assert_eq!(s, vec![(31 * WINDOW - 480, 62 * WINDOW + 480)]);
        // A dip shorter than min_silence does not split; one between neg and threshold never ends.
        let mut probs = vec![0.9; 20];
        probs.extend(vec![0.1; 2]);
        probs.extend(vec![0.9; 20]);
        probs.extend(vec![0.4; 40]);
        let s = segments(&probs, probs.len() * WINDOW, &p);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].1, probs.len() * WINDOW);
        // Too short a burst is dropped.
        let mut probs = vec![0.0; 10];
        probs.extend(vec![0.9; 5]);
        probs.extend(vec![0.0; 60]);
        assert!(segments(&probs, probs.len() * WINDOW, &p).is_empty());
        // Close segments share the gap.
        let mut probs = vec![0.9; 20];
        probs.extend(vec![0.0; 2 + 4]);
        probs.extend(vec![0.9; 20]);
        probs.extend(vec![0.0; 10]);
        let p2 = SegmentParams {
            min_silence: 2 * WINDOW,
            speech_pad: 4 * WINDOW,
            ..p
        };
        let s = segments(&probs, probs.len() * WINDOW, &p2);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].1, s[1].0);
    }
}
