//! `decode_audio`: turns encoded audio files (WAV, FLAC, Ogg Vorbis, MP3) into a `weir.audio`
//! column of interleaved `f32` samples, optionally down-mixed to mono and resampled (rubato's FFT
//! resampler). Files that cannot be read are bad rows.

use crate::common::{
    BytesColumn, check_bytes_field, column_index, preview, report_bad_rows, schema_with,
};
use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, ListArray, StructArray, UInt16Array, UInt32Array,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use rayon::prelude::*;
use rubato::Resampler;
use std::sync::Arc;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_NULL, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;
use weir_runtime::kind;
use weir_runtime::{Emitter, Operator, OperatorContext};
use weir_types::multimodal::{audio_field, audio_fields};
use weir_types::{Error, Result};

fn default_bytes() -> String {
    "bytes".into()
}
fn default_audio() -> String {
    "audio".into()
}
fn default_true() -> bool {
    true
}

/// Options of a `decode_audio` operator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecodeAudioSpec {
    /// The input column of whole audio files (Binary, LargeBinary or BinaryView). Default `bytes`.
    #[serde(default = "default_bytes")]
    pub column: String,
    /// The output `weir.audio` column (replaces a column of that name, else is appended). Default
    /// `audio`.
    #[serde(default = "default_audio")]
    pub output: String,
    /// Resample to this rate (Hz) when set; otherwise keep the file's rate. Default none.
    #[serde(default)]
    pub sample_rate: Option<u32>,
    /// Average all channels into one. Default true.
    #[serde(default = "default_true")]
    pub mono: bool,
}

impl Default for DecodeAudioSpec {
    fn default() -> Self {
        DecodeAudioSpec {
            column: default_bytes(),
            output: default_audio(),
            sample_rate: None,
            mono: true,
        }
    }
}

impl DecodeAudioSpec {
    /// Plan time: checks the input column holds bytes and returns the output schema.
    pub fn output_schema(&self, input: &SchemaRef) -> Result<SchemaRef> {
        if self.sample_rate == Some(0) {
            return Err(Error::config("decode_audio: sample_rate must be positive"));
        }
        let i = column_index(input, &self.column, "decode_audio")?;
        check_bytes_field(input.field(i), "decode_audio")?;
        Ok(schema_with(input, audio_field(&self.output)))
    }

    /// Builds one running instance for that input schema.
    pub fn create(&self, input: &SchemaRef) -> Result<Box<dyn Operator>> {
        Ok(Box::new(DecodeAudio {
            schema: self.output_schema(input)?,
            spec: self.clone(),
        }))
    }

    /// One line for `weir validate`.
    pub fn describe(&self) -> String {
        format!(
            "decode_audio {} -> {}{}{}",
            self.column,
            self.output,
            if self.mono { " (mono)" } else { "" },
            self.sample_rate
                .map(|r| format!(" at {r} Hz"))
                .unwrap_or_default()
        )
    }
}

impl kind::Spec for DecodeAudioSpec {
    fn describe(&self) -> String {
        DecodeAudioSpec::describe(self)
    }
}

impl kind::OperatorSpec for DecodeAudioSpec {
    fn output_schema(&self, inputs: &[SchemaRef], _: &kind::PlanContext<'_>) -> Result<SchemaRef> {
        DecodeAudioSpec::output_schema(self, kind::first_input(inputs)?)
    }

    fn create(&self, ctx: &kind::CreateContext<'_>) -> Result<Box<dyn Operator>> {
        DecodeAudioSpec::create(self, ctx.input()?)
    }
}

/// Decoded audio.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioBuf {
    /// Interleaved samples in `[-1, 1]`.
    pub samples: Vec<f32>,
    /// Frames per second.
    pub sample_rate: u32,
    /// Channels.
    pub channels: u16,
}

fn sym_err(e: SymphoniaError) -> Error {
    Error::input(format!("unreadable audio: {e}"))
}

/// Decodes one audio file, optionally mixing down to mono and resampling to `rate`.
pub fn decode_audio(bytes: &[u8], mono: bool, rate: Option<u32>) -> Result<AudioBuf> {
    if bytes.is_empty() {
        return Err(Error::input("unreadable audio: empty input"));
    }
    let mss = MediaSourceStream::new(
        Box::new(std::io::Cursor::new(bytes.to_vec())),
        Default::default(),
    );
    let probed = symphonia::default::get_probe()
        .format(
            &Hint::new(),
            mss,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(sym_err)?;
    let mut format = probed.format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| Error::input("unreadable audio: no audio track"))?;
    let track_id = track.id;
    let mut sample_rate = track.codec_params.sample_rate.unwrap_or(0);
    let mut channels = track.codec_params.channels.map_or(0, |c| c.count());
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(sym_err)?;
    let mut samples: Vec<f32> = Vec::new();
    let mut buf: Option<SampleBuffer<f32>> = None;
    let mut decoded_packets = 0usize;
    loop {
        let packet = match format.next_packet() {
            Ok(p) => p,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(SymphoniaError::ResetRequired) => break,
            Err(e) => return Err(sym_err(e)),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A corrupt packet in the middle of a long file: skip it, like players do.
            Err(SymphoniaError::DecodeError(_)) if decoded_packets > 0 => continue,
            Err(e) => return Err(sym_err(e)),
        };
        decoded_packets += 1;
        let spec = *decoded.spec();
        sample_rate = spec.rate;
        channels = spec.channels.count();
        let needed = decoded.capacity() as u64;
        let b = match &mut buf {
            Some(b) if b.capacity() as u64 >= needed * channels as u64 => b,
            _ => buf.insert(SampleBuffer::<f32>::new(needed, spec)),
        };
        b.copy_interleaved_ref(decoded);
        samples.extend_from_slice(b.samples());
    }
    if decoded_packets == 0 || channels == 0 || sample_rate == 0 {
        return Err(Error::input("unreadable audio: no samples decoded"));
    }
    let mut audio = AudioBuf {
        samples,
        sample_rate,
        channels: u16::try_from(channels)
            .map_err(|_| Error::input(format!("audio has too many channels ({channels})")))?,
    };
    if mono && audio.channels > 1 {
        audio = to_mono(&audio);
    }
    if let Some(r) = rate
        && r != audio.sample_rate
    {
        audio = resample(&audio, r)?;
    }
    Ok(audio)
}

/// Averages the channels of interleaved audio.
pub fn to_mono(audio: &AudioBuf) -> AudioBuf {
    let c = audio.channels.max(1) as usize;
    let inv = 1.0 / c as f32;
    AudioBuf {
        samples: audio
            .samples
            .chunks_exact(c)
            .map(|f| f.iter().sum::<f32>() * inv)
            .collect(),
        sample_rate: audio.sample_rate,
        channels: 1,
    }
}

/// Resamples interleaved audio to `rate` with rubato's synchronous FFT resampler; the output has
/// `round(frames * rate / old_rate)` frames, aligned with the input (the filter delay removed).
pub fn resample(audio: &AudioBuf, rate: u32) -> Result<AudioBuf> {
    let c = audio.channels.max(1) as usize;
    let frames = audio.samples.len() / c;
    let err =
        |e: &dyn std::fmt::Display| Error::input(format!("resampling to {rate} Hz failed: {e}"));
    let mut planar: Vec<Vec<f32>> = vec![Vec::with_capacity(frames); c];
    for f in audio.samples.chunks_exact(c) {
        for (ch, v) in planar.iter_mut().zip(f) {
            ch.push(*v);
        }
    }
    let mut rs =
        rubato::FftFixedIn::<f32>::new(audio.sample_rate as usize, rate as usize, 1024, 2, c)
            .map_err(|e| err(&e))?;
    let expected = ((frames as u64 * rate as u64 + audio.sample_rate as u64 / 2)
        / audio.sample_rate as u64) as usize;
    let delay = rs.output_delay();
    let mut out: Vec<Vec<f32>> = vec![Vec::with_capacity(expected + delay + 2048); c];
    let mut pos = 0;
    while out[0].len() < expected + delay {
        let need = rs.input_frames_next();
        let chunk = if pos + need <= frames {
            let slices: Vec<&[f32]> = planar.iter().map(|ch| &ch[pos..pos + need]).collect();
            pos += need;
            rs.process(&slices, None).map_err(|e| err(&e))?
        } else if pos < frames {
            let slices: Vec<&[f32]> = planar.iter().map(|ch| &ch[pos..]).collect();
            pos = frames;
            rs.process_partial(Some(&slices), None)
                .map_err(|e| err(&e))?
        } else {
            rs.process_partial::<&[f32]>(None, None)
                .map_err(|e| err(&e))?
        };
        for (o, ch) in out.iter_mut().zip(chunk) {
            o.extend_from_slice(&ch);
        }
    }
    let mut samples = Vec::with_capacity(expected * c);
    for i in delay..delay + expected {
        for ch in &out {
            samples.push(ch[i]);
        }
    }
    Ok(AudioBuf {
        samples,
        sample_rate: rate,
        channels: audio.channels,
    })
}

/// A running `decode_audio`.
#[derive(Debug)]
pub struct DecodeAudio {
    schema: SchemaRef,
    spec: DecodeAudioSpec,
}

fn audio_array(rows: &[AudioBuf]) -> Result<ArrayRef> {
    let total: usize = rows.iter().map(|a| a.samples.len()).sum();
    if i32::try_from(total).is_err() {
        return Err(Error::input(format!(
            "a batch of {total} audio samples is too large for one column"
        )));
    }
    let mut values = Vec::with_capacity(total);
    for a in rows {
        values.extend_from_slice(&a.samples);
    }
    let samples = ListArray::try_new(
        Arc::new(Field::new_list_field(DataType::Float32, false)),
        OffsetBuffer::from_lengths(rows.iter().map(|a| a.samples.len())),
        Arc::new(Float32Array::new(ScalarBuffer::from(values), None)),
        None,
    )?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(samples),
        Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|a| a.sample_rate),
        )),
        Arc::new(UInt16Array::from_iter_values(
            rows.iter().map(|a| a.channels),
        )),
    ];
    Ok(Arc::new(StructArray::try_new(
        audio_fields(),
        columns,
        None,
    )?))
}

#[async_trait]
impl Operator for DecodeAudio {
    async fn process_batch(
        &mut self,
        batch: RecordBatch,
        ctx: &mut OperatorContext,
        out: &mut Emitter,
    ) -> Result<()> {
        let column = weir_types::planned_column(&batch, &self.spec.column, "decode_audio")?;
        let (mono, rate) = (self.spec.mono, self.spec.sample_rate);
        let results = ctx
            .spawn_cpu(
                move || -> Result<Vec<std::result::Result<AudioBuf, (Error, Vec<u8>)>>> {
                    let bytes = BytesColumn::new(&column).ok_or_else(|| {
                        Error::internal("decode_audio: input is not a bytes column")
                    })?;
                    Ok((0..column.len())
                        .into_par_iter()
                        .map(|row| match bytes.get(row) {
                            None => Err((Error::input("audio bytes are null"), Vec::new())),
                            Some(b) => decode_audio(b, mono, rate).map_err(|e| (e, preview(b))),
                        })
                        .collect())
                },
            )
            .await??;
        let mut good = Vec::with_capacity(results.len());
        let mut mask = Vec::with_capacity(results.len());
        let mut bad = Vec::new();
        for (row, r) in results.into_iter().enumerate() {
            match r {
                Ok(a) => {
                    good.push(a);
                    mask.push(true);
                }
                Err((e, raw)) => {
                    bad.push((row, e, Some(raw)));
                    mask.push(false);
                }
            }
        }
        let keep = (!bad.is_empty()).then(|| BooleanArray::from(mask));
        report_bad_rows(ctx, &batch, bad)?;
        let col = audio_array(&good)?;
        out.emit(crate::common::assemble(
            &batch,
            keep.as_ref(),
            &self.schema,
            &self.spec.output,
            col,
        )?);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A 16-bit PCM WAV of `frames` frames of a ramp, `channels` channels.
    pub(crate) fn wav(rate: u32, channels: u16, frames: usize) -> Vec<u8> {
        let data_len = frames * channels as usize * 2;
        let mut w = Vec::new();
        w.extend_from_slice(b"RIFF");
        w.extend_from_slice(&((36 + data_len) as u32).to_le_bytes());
        w.extend_from_slice(b"WAVEfmt ");
        w.extend_from_slice(&16u32.to_le_bytes());
        w.extend_from_slice(&1u16.to_le_bytes());
        w.extend_from_slice(&channels.to_le_bytes());
        w.extend_from_slice(&rate.to_le_bytes());
        w.extend_from_slice(&(rate * channels as u32 * 2).to_le_bytes());
        w.extend_from_slice(&(channels * 2).to_le_bytes());
        w.extend_from_slice(&16u16.to_le_bytes());
        w.extend_from_slice(b"data");
        w.extend_from_slice(&(data_len as u32).to_le_bytes());
        for i in 0..frames {
            for ch in 0..channels {
                let v =
                    ((i as f32 / frames as f32) * 16000.0) as i16 * if ch == 0 { 1 } else { -1 };
                w.extend_from_slice(&v.to_le_bytes());
            }
        }
        w
    }

    #[test]
    fn decodes_mixes_and_resamples_a_wav() {
        let w = wav(8000, 2, 8000);
        let a = decode_audio(&w, false, None).unwrap();
        assert_eq!(
            (a.sample_rate, a.channels, a.samples.len()),
            (8000, 2, 16000)
        );
        let m = decode_audio(&w, true, None).unwrap();
        assert_eq!(m.channels, 1);
        assert!(m.samples.iter().all(|v| v.abs() < 1e-3)); // the channels cancel out
        let r = decode_audio(&w, false, Some(16000)).unwrap();
        assert_eq!(
            (r.sample_rate, r.channels, r.samples.len()),
            (16000, 2, 32000)
        );
        // the ramp survives resampling, away from the edges
        let mid = r.samples[2 * 8000];
        assert!((mid - 0.244).abs() < 0.01, "{mid}");
    }

    #[test]
    fn garbage_is_refused() {
        assert!(decode_audio(b"definitely not audio", true, None).is_err());
        let w = wav(8000, 1, 100);
        assert!(decode_audio(&w[..30], true, None).is_err());
        assert!(decode_audio(b"", true, None).is_err());
    }
}
