//! End-to-end tests of the media operators on real photos and speech (installed by
//! `scripts/setup-models.sh` under `$WEIR_DATA`), plus bad inputs made here: truncated, flipped and
//! non-image bytes, a PNG header claiming 100000x100000 pixels, gray/RGBA/16-bit PNGs, and the
//! CMYK, EXIF-rotated and progressive JPEGs in `tests/data` (see `make_test_images.py`).
#![allow(clippy::unwrap_used)]

use arrow::array::{Array, ArrayRef, AsArray, BinaryArray, StringArray, StructArray, UInt64Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use image::ImageEncoder;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use weir_media::decode_image::decode;
use weir_media::*;
use weir_runtime::*;
use weir_types::multimodal::{ImageMode, fixed_tensor_shape, object_ref_field, object_ref_fields};

/// Where the set-up put what the tests need (`weir-testkit`'s `setup`, by path: a dependency on
/// `weir-testkit` would link the whole engine into these tests).
#[path = "../../weir-testkit/src/setup.rs"]
#[allow(dead_code)]
mod setup;

fn data_dir() -> PathBuf {
    let dir = setup::data_dir();
    assert!(
        dir.join("photos").is_dir(),
        "test data missing at {}: run scripts/setup-models.sh (and source .weir/env.sh)",
        dir.display()
    );
    dir
}

fn photo(name: &str) -> (String, Vec<u8>) {
    let p = data_dir().join("photos").join(name);
    let bytes = std::fs::read(&p).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}; run scripts/setup-models.sh",
            p.display()
        )
    });
    (p.display().to_string(), bytes)
}

fn test_file(name: &str) -> (String, Vec<u8>) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    (p.display().to_string(), std::fs::read(&p).unwrap())
}

fn png(data: &[u8], w: u32, h: u32, ct: image::ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(data, w, h, ct)
        .unwrap();
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for b in data {
        crc ^= *b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A valid PNG header claiming 100000x100000 RGB pixels, with a tiny body.
fn png_bomb() -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&100_000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    v.extend_from_slice(&13u32.to_be_bytes());
    v.extend_from_slice(&ihdr);
    v.extend_from_slice(&crc32(&ihdr).to_be_bytes());
    v.extend_from_slice(&0u32.to_be_bytes());
    v.extend_from_slice(b"IEND");
    v.extend_from_slice(&crc32(b"IEND").to_be_bytes());
    v
}

fn mean(pixels: &[u8], c: usize) -> Vec<f64> {
    let n = (pixels.len() / c) as f64;
    (0..c)
        .map(|k| {
            pixels
                .iter()
                .skip(k)
                .step_by(c)
                .map(|v| *v as f64)
                .sum::<f64>()
                / n
        })
        .collect()
}

// ------------------------------------------------------------------------------------------------
// Kernels on single images

#[test]
fn decodes_real_photos_of_every_kind() {
    let (_, jpg) = photo("opencv_fruits.jpg");
    let img = decode(&jpg, ImageMode::Rgb, 50_000_000).unwrap();
    assert_eq!(img.pixels.len(), (img.width * img.height * 3) as usize);
    assert!(img.width > 100 && img.height > 100);
    let (_, p) = photo("skimage_astronaut.png");
    let a = decode(&p, ImageMode::Rgb, 50_000_000).unwrap();
    assert_eq!((a.width, a.height), (512, 512));
    let l = decode(&p, ImageMode::L, 50_000_000).unwrap();
    assert_eq!(l.pixels.len(), 512 * 512);
    let rgba = decode(&jpg, ImageMode::Rgba, 50_000_000).unwrap();
    assert!(rgba.pixels.chunks_exact(4).all(|p| p[3] == 255));
    let gray = decode(&jpg, ImageMode::L, 50_000_000).unwrap();
    assert_eq!(gray.pixels.len(), (img.width * img.height) as usize);
}

#[test]
fn every_installed_photo_decodes() {
    let dir = data_dir().join("photos");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        let img = decode(&bytes, ImageMode::Rgb, 50_000_000)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        assert_eq!(img.pixels.len(), (img.width * img.height * 3) as usize);
        n += 1;
    }
    assert!(n >= 50, "only {n} photos in {}", dir.display());
}

#[test]
fn pngs_of_other_layouts_convert_to_the_requested_mode() {
    let gray = png(&[7u8; 6], 3, 2, image::ExtendedColorType::L8);
    let g = decode(&gray, ImageMode::Rgb, 100).unwrap();
    assert_eq!((g.width, g.height, g.mode), (3, 2, ImageMode::Rgb));
    assert!(g.pixels.iter().all(|v| *v == 7));

    let rgba = png(
        &[10, 20, 30, 40].repeat(4),
        2,
        2,
        image::ExtendedColorType::Rgba8,
    );
    assert_eq!(
        decode(&rgba, ImageMode::Rgb, 100).unwrap().pixels,
        [10, 20, 30].repeat(4)
    );
    assert_eq!(
        decode(&rgba, ImageMode::Rgba, 100).unwrap().pixels,
        [10, 20, 30, 40].repeat(4)
    );

    // 16-bit: every sample 0x8080 -> 128 in 8 bits
    let wide = png(&[0x80u8; 2 * 3 * 4], 2, 2, image::ExtendedColorType::Rgb16);
    let w = decode(&wide, ImageMode::Rgb, 100).unwrap();
    assert_eq!(w.pixels, vec![128; 12]);
}

#[test]
fn cmyk_progressive_and_rotated_jpegs() {
    let (_, cmyk) = test_file("cmyk.jpg");
    let (_, prog) = test_file("progressive.jpg");
    let c = decode(&cmyk, ImageMode::Rgb, 1_000_000).unwrap();
    let p = decode(&prog, ImageMode::Rgb, 1_000_000).unwrap();
    assert_eq!((c.width, c.height), (96, 64));
    assert_eq!((p.width, p.height), (96, 64));
    // same photo: the CMYK file's colours, converted back, are close to the RGB one
    let (mc, mp) = (mean(&c.pixels, 3), mean(&p.pixels, 3));
    for k in 0..3 {
        assert!(
            (mc[k] - mp[k]).abs() < 25.0,
            "channel {k}: cmyk {mc:?} vs rgb {mp:?}"
        );
    }
    let cl = decode(&cmyk, ImageMode::L, 1_000_000).unwrap();
    assert_eq!(cl.pixels.len(), 96 * 64);

    let (_, rot) = test_file("exif_rotated.jpg");
    let r = decode(&rot, ImageMode::Rgb, 1000).unwrap();
    // stored 40x20 (red left, blue right) with orientation 6: upright 20x40, red on top
    assert_eq!((r.width, r.height), (20, 40));
    let top = &r.pixels[(5 * 20 + 10) * 3..][..3];
    let bottom = &r.pixels[(35 * 20 + 10) * 3..][..3];
    assert!(top[0] > 200 && top[2] < 60, "top {top:?}");
    assert!(bottom[2] > 200 && bottom[0] < 60, "bottom {bottom:?}");
}

#[test]
fn bad_images_say_why() {
    let (_, jpg) = photo("opencv_fruits.jpg");
    let e = decode(&jpg[..jpg.len() / 2], ImageMode::Rgb, 50_000_000).unwrap_err();
    assert!(e.message().contains("jpeg"), "{e}");
    let e = decode(&png_bomb(), ImageMode::Rgb, 50_000_000).unwrap_err();
    assert!(
        e.message().contains("100000x100000") && e.message().contains("max_pixels"),
        "{e}"
    );
    let e = decode(&jpg, ImageMode::Rgb, 1000).unwrap_err();
    assert!(e.message().contains("max_pixels"), "{e}");
    let mut flipped = jpg.clone();
    for b in &mut flipped[..16] {
        *b = !*b;
    }
    assert!(
        decode(&flipped, ImageMode::Rgb, 50_000_000)
            .unwrap_err()
            .message()
            .contains("not an image")
    );
    let (_, p) = photo("skimage_astronaut.png");
    let e = decode(&p[..p.len() / 3], ImageMode::Rgb, 50_000_000).unwrap_err();
    assert!(e.message().contains("png"), "{e}");
}

// ------------------------------------------------------------------------------------------------
// Pipelines through the runtime

/// Emits one fixed batch.
struct OneBatch(Option<RecordBatch>, SchemaRef);

#[async_trait]
impl Source for OneBatch {
    fn schema(&self) -> SchemaRef {
        self.1.clone()
    }
    async fn next(&mut self, _ctx: &mut OperatorContext) -> weir_types::Result<SourceEvent> {
        Ok(match self.0.take() {
            Some(b) => SourceEvent::Batch(b),
            None => SourceEvent::Finished,
        })
    }
}

/// Keeps every batch it receives.
struct Keep(Arc<Mutex<Vec<RecordBatch>>>);

#[async_trait]
impl Operator for Keep {
    async fn process_batch(
        &mut self,
        b: RecordBatch,
        _: &mut OperatorContext,
        _: &mut Emitter,
    ) -> weir_types::Result<()> {
        self.0.lock().unwrap().push(b);
        Ok(())
    }
}

type Factory = Box<
    dyn Fn(
        &SchemaRef,
    ) -> weir_types::Result<(
        SchemaRef,
        Arc<dyn Fn() -> weir_types::Result<Box<dyn Operator>> + Send + Sync>,
    )>,
>;

/// One planned step: its output schema and a factory, as the planner would make them.
fn step<S: Clone + Send + Sync + 'static>(
    spec: S,
    out: fn(&S, &SchemaRef) -> weir_types::Result<SchemaRef>,
    create: fn(&S, &SchemaRef) -> weir_types::Result<Box<dyn Operator>>,
) -> Factory {
    Box::new(move |input: &SchemaRef| {
        let schema = out(&spec, input)?;
        let (spec, input) = (spec.clone(), input.clone());
        let f: Arc<dyn Fn() -> weir_types::Result<Box<dyn Operator>> + Send + Sync> =
            Arc::new(move || create(&spec, &input));
        Ok((schema, f))
    })
}

struct Outcome {
    rows: Vec<RecordBatch>,
    dead: Vec<RecordBatch>,
    schema: SchemaRef,
}

/// Runs `batch` through the steps under the dead-letter policy.
fn run(batch: RecordBatch, steps: Vec<Factory>) -> Outcome {
    let mut g = JobGraph::new(JobConfig::default());
    g.config.error_policy = ErrorPolicy::DeadLetter;
    let schema = batch.schema();
    let mut prev = g.add_source("source", 1, {
        let (b, s) = (batch.clone(), schema.clone());
        move |_| Ok(Box::new(OneBatch(Some(b.clone()), s.clone())))
    });
    let mut current = schema;
    for (i, s) in steps.iter().enumerate() {
        let (next, factory) = s(&current).unwrap();
        let id = g.add_operator(&format!("step{i}"), 1, move |_| factory());
        g.connect(prev, id, Partitioning::Forward);
        prev = id;
        current = next;
    }
    let rows = Arc::new(Mutex::new(Vec::new()));
    let dead = Arc::new(Mutex::new(Vec::new()));
    let (r, d) = (rows.clone(), dead.clone());
    let sink = g.add_sink("sink", 1, move |_| Ok(Box::new(Keep(r.clone()))));
    let dl = g.add_sink("dead", 1, move |_| Ok(Box::new(Keep(d.clone()))));
    g.connect(prev, sink, Partitioning::Forward);
    g.dead_letter = Some(dl);
    Runtime::new(2).unwrap().run(g).unwrap();
    let rows = rows.lock().unwrap().clone();
    let dead = dead.lock().unwrap().clone();
    Outcome {
        rows,
        dead,
        schema: current,
    }
}

fn strings(batches: &[RecordBatch], col: &str) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(col).unwrap().as_string::<i32>().clone();
            (0..a.len())
                .map(move |i| a.value(i).to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

fn uri_bytes_batch(rows: Vec<(String, Vec<u8>)>) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("uri", DataType::Utf8, false),
        Field::new("bytes", DataType::Binary, false),
    ]));
    let uris: ArrayRef = Arc::new(StringArray::from_iter_values(
        rows.iter().map(|r| r.0.clone()),
    ));
    let bytes: ArrayRef = Arc::new(BinaryArray::from_iter_values(
        rows.iter().map(|r| r.1.clone()),
    ));
    RecordBatch::try_new(schema, vec![uris, bytes]).unwrap()
}

fn spec<T: serde::de::DeserializeOwned>(json: &str) -> T {
    serde_json::from_str(json).unwrap()
}

#[test]
fn image_pipeline_keeps_good_rows_in_order_and_dead_letters_the_rest() {
    let (fruits_uri, fruits) = photo("opencv_fruits.jpg");
    let (baboon_uri, baboon) = photo("opencv_baboon.jpg");
    let (astro_uri, astro) = photo("skimage_astronaut.png");
    let rows = vec![
        (fruits_uri.clone(), fruits.clone()),
        (
            "mem://truncated.jpg".to_owned(),
            fruits[..fruits.len() / 2].to_vec(),
        ),
        (astro_uri.clone(), astro),
        (
            "mem://flipped.jpg".to_owned(),
            fruits.iter().take(64).map(|b| !b).collect(),
        ),
        ("mem://bomb.png".to_owned(), png_bomb()),
        (
            "mem://gray.png".to_owned(),
            png(&[90u8; 300 * 200], 300, 200, image::ExtendedColorType::L8),
        ),
        (
            "mem://rgba.png".to_owned(),
            png(
                &[1u8, 2, 3, 4].repeat(250 * 250),
                250,
                250,
                image::ExtendedColorType::Rgba8,
            ),
        ),
        (
            "mem://wide.png".to_owned(),
            png(
                &[0x40u8; 240 * 240 * 6],
                240,
                240,
                image::ExtendedColorType::Rgb16,
            ),
        ),
        test_file("cmyk.jpg"),
        test_file("exif_rotated.jpg"),
        test_file("progressive.jpg"),
        ("mem://hello.txt".to_owned(), b"hello, world".to_vec()),
        (baboon_uri.clone(), baboon),
    ];
    let expected_good: Vec<String> = rows
        .iter()
        .map(|r| r.0.clone())
        .filter(|u| {
            !["truncated", "flipped", "bomb", "hello"]
                .iter()
                .any(|b| u.contains(b))
        })
        .collect();
    let batch = uri_bytes_batch(rows);
    let out = run(
        batch,
        vec![
            step(
                spec::<DecodeImageSpec>("{}"),
                DecodeImageSpec::output_schema,
                DecodeImageSpec::create,
            ),
            step(
                spec::<ResizeSpec>(r#"{"shorter_side": 256}"#),
                ResizeSpec::output_schema,
                ResizeSpec::create,
            ),
            step(
                spec::<CenterCropSpec>(r#"{"width": 224, "height": 224}"#),
                CenterCropSpec::output_schema,
                CenterCropSpec::create,
            ),
            step(
                spec::<ToTensorSpec>(r#"{"channel_order": "BGR", "mean": [104, 117, 123]}"#),
                ToTensorSpec::output_schema,
                ToTensorSpec::create,
            ),
        ],
    );
    // planned schema: bytes kept, image decoded and cropped, tensor [224, 224, 3] f32
    let tensor_field = out.schema.field_with_name("tensor").unwrap();
    assert_eq!(
        fixed_tensor_shape(tensor_field),
        Some((DataType::Float32, vec![224, 224, 3]))
    );
    assert_eq!(strings(&out.rows, "uri"), expected_good);
    let n: usize = out.rows.iter().map(|b| b.num_rows()).sum();
    assert_eq!(n, 9);
    for b in &out.rows {
        assert_eq!(b.schema(), out.schema);
        let t = b.column_by_name("tensor").unwrap().as_fixed_size_list();
        assert_eq!(t.value_length(), 224 * 224 * 3);
        let v = t.values().as_primitive::<arrow::datatypes::Float32Type>();
        // BGR minus the mean: every value is within [-123, 255-104]
        assert!(v.values().iter().all(|x| (-123.0..=151.0).contains(x)));
    }
    // the gray PNG (value 90) becomes B=90-104, G=90-117, R=90-123 everywhere
    let gray_row = expected_good
        .iter()
        .position(|u| u.contains("gray"))
        .unwrap();
    let mut seen = 0;
    for b in &out.rows {
        if gray_row < seen + b.num_rows() {
            let t = b.column_by_name("tensor").unwrap().as_fixed_size_list();
            let px = t.value(gray_row - seen);
            let px = px.as_primitive::<arrow::datatypes::Float32Type>();
            assert_eq!(&px.values()[..3], &[-14.0, -27.0, -33.0]);
            break;
        }
        seen += b.num_rows();
    }

    let dead: Vec<(String, String)> = out
        .dead
        .iter()
        .flat_map(|b| {
            let input = b
                .column_by_name("input")
                .unwrap()
                .as_string::<i32>()
                .clone();
            let err = b
                .column_by_name("error")
                .unwrap()
                .as_string::<i32>()
                .clone();
            (0..b.num_rows())
                .map(move |i| (input.value(i).to_owned(), err.value(i).to_owned()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert!(
        dead[0].0.contains("truncated") && dead[0].1.contains("jpeg"),
        "{dead:?}"
    );
    assert!(
        dead[1].0.contains("flipped") && dead[1].1.contains("not an image"),
        "{dead:?}"
    );
    assert!(
        dead[2].0.contains("bomb") && dead[2].1.contains("max_pixels"),
        "{dead:?}"
    );
    assert!(
        dead[3].0.contains("hello") && dead[3].1.contains("not an image"),
        "{dead:?}"
    );
    assert!(dead.iter().all(|d| d.1.contains("step0")), "{dead:?}");
}

#[test]
fn to_tensor_refuses_rows_of_another_size() {
    // resize to a fixed size, but one row is smaller than the crop: center_crop dead-letters it
    let (u, jpg) = photo("opencv_fruits.jpg");
    let tiny = png(&[1u8; 30], 1, 10, image::ExtendedColorType::Rgb8);
    let batch = uri_bytes_batch(vec![(u.clone(), jpg), ("mem://tiny.png".into(), tiny)]);
    let out = run(
        batch,
        vec![
            step(
                spec::<DecodeImageSpec>("{}"),
                DecodeImageSpec::output_schema,
                DecodeImageSpec::create,
            ),
            step(
                spec::<ResizeSpec>(r#"{"height": 64}"#),
                ResizeSpec::output_schema,
                ResizeSpec::create,
            ),
            step(
                spec::<CenterCropSpec>(r#"{"width": 64, "height": 64}"#),
                CenterCropSpec::output_schema,
                CenterCropSpec::create,
            ),
            step(
                spec::<ToTensorSpec>(r#"{"layout": "NCHW", "scale": 0.00392156862}"#),
                ToTensorSpec::output_schema,
                ToTensorSpec::create,
            ),
        ],
    );
    assert_eq!(strings(&out.rows, "uri"), vec![u]);
    assert_eq!(
        fixed_tensor_shape(out.schema.field_with_name("tensor").unwrap()),
        Some((DataType::Float32, vec![3, 64, 64]))
    );
    let errors = strings(&out.dead, "error");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].contains("6x64") && errors[0].contains("smaller than the crop"),
        "{errors:?}"
    );

    // without a crop the size is not fixed: a plan-time error
    let s = Arc::new(Schema::new(vec![Field::new(
        "bytes",
        DataType::Binary,
        false,
    )]));
    let decoded = spec::<DecodeImageSpec>("{}").output_schema(&s).unwrap();
    let e = spec::<ToTensorSpec>("{}")
        .output_schema(&decoded)
        .unwrap_err();
    assert!(e.message().contains("center_crop"), "{e}");
}

#[test]
fn fetch_reads_paths_file_uris_and_object_refs_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (_, jpg) = photo("opencv_fruits.jpg");
    let a = dir.path().join("a.jpg");
    let big = dir.path().join("big.bin");
    std::fs::write(&a, &jpg).unwrap();
    std::fs::write(&big, vec![0u8; jpg.len() + 100]).unwrap();
    let a_s = a.display().to_string();
    let uris = [
        a_s.clone(),
        format!("file://{a_s}"),
        dir.path().join("missing.jpg").display().to_string(),
        big.display().to_string(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "gs://bucket/x".to_owned(),
        a_s.clone(),
    ];
    let schema = Arc::new(Schema::new(vec![Field::new("uri", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(
        schema,
        vec![Arc::new(StringArray::from_iter_values(
            uris.iter().cloned(),
        ))],
    )
    .unwrap();
    let limit = jpg.len() + 10;
    let fetch: FetchSpec = spec(&format!(
        r#"{{"max_size": "{limit}", "max_concurrency": 3, "roots": ["{}"]}}"#,
        dir.path().display()
    ));
    let out = run(
        batch,
        vec![
            step(fetch, FetchSpec::output_schema, FetchSpec::create),
            step(
                spec::<DecodeImageSpec>("{}"),
                DecodeImageSpec::output_schema,
                DecodeImageSpec::create,
            ),
        ],
    );
    assert_eq!(
        strings(&out.rows, "uri"),
        vec![a_s.clone(), format!("file://{a_s}"), a_s.clone()]
    );
    for b in &out.rows {
        let bytes = b.column_by_name("bytes").unwrap().as_binary::<i32>();
        assert!(bytes.iter().all(|v| v == Some(&jpg[..])));
    }
    let errors = strings(&out.dead, "error");
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(
        errors[0].contains("not found") && errors[0].contains("missing.jpg"),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("max_size") && errors[1].contains("big.bin"),
        "{errors:?}"
    );
    assert!(
        errors[2].contains("169.254.169.254") && errors[2].contains("link-local"),
        "{errors:?}"
    );
    assert!(errors[3].contains("gs"), "{errors:?}");

    // Without roots no local file is read: every local row is a bad row, the job goes on.
    let schema = Arc::new(Schema::new(vec![Field::new("uri", DataType::Utf8, false)]));
    let hostile = [
        a_s.clone(),
        format!("file://{a_s}"),
        "file:///etc/shadow".to_owned(),
        "/etc/passwd".to_owned(),
    ];
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(StringArray::from_iter_values(
            hostile.iter().cloned(),
        ))],
    )
    .unwrap();
    let out = run(
        batch,
        vec![step(
            spec::<FetchSpec>("{}"),
            FetchSpec::output_schema,
            FetchSpec::create,
        )],
    );
    assert!(out.rows.iter().all(|b| b.num_rows() == 0), "nothing read");
    let errors = strings(&out.dead, "error");
    assert_eq!(errors.len(), 4, "{errors:?}");
    assert!(errors.iter().all(|e| e.contains("refused")), "{errors:?}");

    // With a root, escapes out of it are refused: `..`, `%2e%2e`, an encoded slash, a symlink.
    let inner = dir.path().join("inner");
    std::fs::create_dir(&inner).unwrap();
    std::fs::write(inner.join("ok.jpg"), &jpg).unwrap();
    std::os::unix::fs::symlink(&a, inner.join("link.jpg")).unwrap();
    let i = std::fs::canonicalize(&inner).unwrap().display().to_string();
    let tries = [
        format!("file://{i}/ok.jpg"),
        format!("file://{i}/../a.jpg"),
        format!("file://{i}/%2e%2e/a.jpg"),
        format!("file://{i}/..%2Fa.jpg"),
        format!("{i}/../a.jpg"),
        format!("file://{i}/link.jpg"),
    ];
    let batch = RecordBatch::try_new(
        schema,
        vec![Arc::new(StringArray::from_iter_values(
            tries.iter().cloned(),
        ))],
    )
    .unwrap();
    let out = run(
        batch,
        vec![step(
            spec::<FetchSpec>(&format!(r#"{{"roots": ["{i}"]}}"#)),
            FetchSpec::output_schema,
            FetchSpec::create,
        )],
    );
    assert_eq!(strings(&out.rows, "uri"), vec![tries[0].clone()]);
    let errors = strings(&out.dead, "error");
    assert_eq!(errors.len(), 5, "{errors:?}");
    assert!(
        errors
            .iter()
            .all(|e| e.contains("outside the declared roots")),
        "{errors:?}"
    );

    // object references: byte ranges of one file
    let refs = StructArray::try_new(
        object_ref_fields(),
        vec![
            Arc::new(StringArray::from(vec![
                a_s.clone(),
                a_s.clone(),
                a_s.clone(),
            ])),
            Arc::new(UInt64Array::from(vec![0, 2, 6])),
            Arc::new(UInt64Array::from(vec![Some(2), Some(4), None])),
            Arc::new(StringArray::from(vec![None::<&str>, None, None])),
        ],
        None,
    )
    .unwrap();
    let schema = Arc::new(Schema::new(vec![object_ref_field("ref")]));
    let batch = RecordBatch::try_new(schema, vec![Arc::new(refs)]).unwrap();
    let out = run(
        batch,
        vec![step(
            spec::<FetchSpec>(&format!(
                r#"{{"column": "ref", "roots": ["{}"]}}"#,
                dir.path().display()
            )),
            FetchSpec::output_schema,
            FetchSpec::create,
        )],
    );
    let got: Vec<Vec<u8>> = out
        .rows
        .iter()
        .flat_map(|b| {
            let a = b
                .column_by_name("bytes")
                .unwrap()
                .as_binary::<i32>()
                .clone();
            (0..a.len())
                .map(move |i| a.value(i).to_vec())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        got,
        vec![jpg[0..2].to_vec(), jpg[2..6].to_vec(), jpg[6..].to_vec()]
    );
}

#[test]
fn fetch_plan_checks() {
    let s = Arc::new(Schema::new(vec![Field::new("uri", DataType::Int64, false)]));
    let e = spec::<FetchSpec>("{}").output_schema(&s).unwrap_err();
    assert!(
        e.message().contains("'uri'") && e.message().contains("Int64"),
        "{e}"
    );
    let s = Arc::new(Schema::new(vec![Field::new("uri", DataType::Utf8, false)]));
    assert!(
        spec::<FetchSpec>(r#"{"max_size": "huge"}"#)
            .output_schema(&s)
            .is_err()
    );
    assert!(
        spec::<FetchSpec>(r#"{"allow_schemes": ["ftp"]}"#)
            .output_schema(&s)
            .is_err()
    );
    assert!(serde_json::from_str::<FetchSpec>(r#"{"concurrency": 3}"#).is_err());
}

#[test]
fn audio_pipeline_decodes_and_resamples_speech() {
    let speech = data_dir().join("speech");
    let mut rows = Vec::new();
    for i in [1, 2] {
        let p = speech.join(format!("speech_0{i}.wav"));
        rows.push((p.display().to_string(), std::fs::read(&p).unwrap()));
    }
    rows.insert(
        1,
        (
            "mem://noise.wav".to_owned(),
            b"RIFF\x10\x00\x00\x00WAVEjunk".to_vec(),
        ),
    );
    let batch = uri_bytes_batch(rows);
    let out = run(
        batch,
        vec![step(
            spec::<DecodeAudioSpec>(r#"{"sample_rate": 16000}"#),
            DecodeAudioSpec::output_schema,
            DecodeAudioSpec::create,
        )],
    );
    assert_eq!(
        out.schema
            .field_with_name("audio")
            .unwrap()
            .extension_type_name(),
        Some("weir.audio")
    );
    let uris = strings(&out.rows, "uri");
    assert_eq!(uris.len(), 2);
    assert!(uris[0].ends_with("speech_01.wav") && uris[1].ends_with("speech_02.wav"));
    let b = &out.rows[0];
    let audio = b.column_by_name("audio").unwrap().as_struct();
    let rates = audio
        .column_by_name("sample_rate")
        .unwrap()
        .as_primitive::<arrow::datatypes::UInt32Type>();
    let chans = audio
        .column_by_name("channels")
        .unwrap()
        .as_primitive::<arrow::datatypes::UInt16Type>();
    let samples = audio.column_by_name("samples").unwrap().as_list::<i32>();
    assert_eq!(rates.value(0), 16000);
    assert_eq!(chans.value(0), 1);
    // the 16 kHz copy made by setup (with sox/ffmpeg) has about as many samples
    let reference = weir_media::decode_audio::decode_audio(
        &std::fs::read(speech.join("16k/speech_01.wav")).unwrap(),
        true,
        None,
    )
    .unwrap();
    assert_eq!(reference.sample_rate, 16000);
    let got = samples.value(0).len() as i64;
    assert!(
        (got - reference.samples.len() as i64).abs() < 200,
        "{got} vs {}",
        reference.samples.len()
    );
    let errors = strings(&out.dead, "error");
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("unreadable audio"), "{errors:?}");
}

#[test]
fn under_the_fail_policy_a_bad_image_fails_the_job_naming_it() {
    let (u, jpg) = photo("opencv_fruits.jpg");
    let batch = uri_bytes_batch(vec![
        (u, jpg.clone()),
        ("mem://cut.jpg".into(), jpg[..jpg.len() / 3].to_vec()),
    ]);
    let schema = batch.schema();
    let mut g = JobGraph::new(JobConfig::default());
    let src = g.add_source("source", 1, move |_| {
        Ok(Box::new(OneBatch(Some(batch.clone()), schema.clone())))
    });
    let decode_spec = DecodeImageSpec::default();
    let input = src_schema();
    let dec = g.add_operator("decode", 1, move |_| decode_spec.create(&input));
    let kept = Arc::new(Mutex::new(Vec::new()));
    let k = kept.clone();
    let sink = g.add_sink("sink", 1, move |_| Ok(Box::new(Keep(k.clone()))));
    g.connect(src, dec, Partitioning::Forward);
    g.connect(dec, sink, Partitioning::Forward);
    let e = Runtime::new(1).unwrap().run(g).unwrap_err().to_string();
    assert!(
        e.contains("decode") && e.contains("mem://cut.jpg") && e.contains("jpeg"),
        "{e}"
    );
}

fn src_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("uri", DataType::Utf8, false),
        Field::new("bytes", DataType::Binary, false),
    ]))
}

#[test]
fn fetch_cuts_its_output_by_predicted_decoded_bytes() {
    // Object references (as `files` emits them with include_bytes: false) materialised by fetch
    // come out in batches bounded like the files source's own byte batches: each image counts as
    // its decoded size predicted from its header.
    let dir = tempfile::tempdir().unwrap();
    let (_, jpg) = photo("opencv_fruits.jpg");
    let (w, h) = weir_media::decode_image::header_dims(&jpg).unwrap();
    let decoded = u64::from(w) * u64::from(h) * 3;
    let mut uris = Vec::new();
    for i in 0..7 {
        let p = dir.path().join(format!("{i}.jpg"));
        std::fs::write(&p, &jpg).unwrap();
        uris.push(weir_store::file_uri(&std::fs::canonicalize(&p).unwrap()).unwrap());
    }
    let schema = Arc::new(Schema::new(vec![Field::new("uri", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(
        schema,
        vec![Arc::new(StringArray::from_iter_values(
            uris.iter().cloned(),
        ))],
    )
    .unwrap();
    let budget = decoded * 5 / 2;
    let out = run(
        batch,
        vec![step(
            spec::<FetchSpec>(&format!(
                r#"{{"roots": ["{}"], "max_batch_bytes": "{budget}"}}"#,
                dir.path().display()
            )),
            FetchSpec::output_schema,
            FetchSpec::create,
        )],
    );
    let sizes: Vec<usize> = out.rows.iter().map(|b| b.num_rows()).collect();
    assert_eq!(
        sizes,
        vec![2, 2, 2, 1],
        "each batch holds at most 2.5 decoded images"
    );
    assert_eq!(strings(&out.rows, "uri"), uris);
}
