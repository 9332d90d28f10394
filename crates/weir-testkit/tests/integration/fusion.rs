//! Step fusion: `resize`, `center_crop` and `to_tensor` right after the `decode_image` they read
//! are rewritten with it into one `decode_image_fused` node, which does them image by image. The fused pipeline's tensors (and images) equal, byte
//! for byte, those of the same pipeline with the fusion prevented (the resize step given a
//! parallelism of its own), for each tensor element type and layout, over real photos and the odd
//! JPEGs that take the decoder's row-by-row path (CMYK, progressive, EXIF-rotated).

use std::path::{Path, PathBuf};
use weir_plan::{PlanOptions, plan_str};
use weir_testkit::{read_rows, repo_root, run_spec};

fn spec(images: &Path, resize_parallelism: &str, tensor: &str, keep: &str) -> String {
    format!(
        r#"name: fusion
steps:
  - name: images
    source: files
    url: {images}
    glob: "*.jpg"
    batch_size: 4
  - name: decode
    op: decode_image
  - name: resize
    op: resize
    shorter_side: 80
{resize_parallelism}  - op: center_crop
    width: 64
    height: 64
  - op: to_tensor
    output: t
{tensor}
  - op: select
    columns: [{keep}]
  - sink: jsonl
    path: ${{OUT}}/out
"#,
        images = images.display()
    )
}

/// A folder of a few real photos (from the data the set-up installs) and the odd test JPEGs.
fn images(dir: &Path) -> PathBuf {
    let folder = dir.join("images");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let photos = weir_testkit::setup::data_dir().join("photos");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&photos)
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/setup-models.sh)", photos.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    names.sort();
    for p in names.iter().take(10) {
        let name = p.file_name().expect("name");
        std::fs::copy(p, folder.join(name)).expect("copy photo");
    }
    for odd in ["cmyk.jpg", "progressive.jpg", "exif_rotated.jpg"] {
        std::fs::copy(
            repo_root().join("crates/weir-media/tests/data").join(odd),
            folder.join(odd),
        )
        .expect("copy test image");
    }
    folder
}

/// The tensor options tried, and the columns kept.
const TENSORS: [(&str, &str); 3] = [
    ("    dtype: uint8", "uri, t"),
    (
        "    channel_order: BGR\n    mean: [104, 117, 123]",
        "uri, t, image",
    ),
    (
        "    dtype: float16\n    layout: NCHW\n    scale: 0.00392156862",
        "uri, t",
    ),
];

#[test]
fn a_fused_decode_resize_crop_and_tensor_gives_the_same_values() {
    for (tensor, keep) in TENSORS {
        same_values(tensor, keep);
    }
}

fn same_values(tensor: &str, keep: &str) {
    let work = tempfile::tempdir().expect("tempdir");
    let folder = images(work.path());
    let fused = spec(&folder, "", tensor, keep);
    let apart = spec(&folder, "    parallelism: 1\n", tensor, keep);

    let opts = PlanOptions {
        vars: [("OUT".to_string(), "/tmp/unused".to_string())].into(),
        ..PlanOptions::default()
    };
    let describe = |text: &str| {
        plan_str(text, "fusion.yaml", &opts)
            .unwrap_or_else(|e| panic!("{}", e.report()))
            .describe()
            .expect("describe")
    };
    let d = describe(&fused);
    // One real fused node; the nodes it replaced are gone (no pass-through nodes).
    assert!(
        d.contains("decode (op: decode_image ")
            && d.contains("then resize image to shorter side 80 (bilinear) (fused), then center_crop image to 64x64 (fused), then to_tensor image -> t")
            && !d.lines().any(|l| {
                let l = l.trim_start();
                l.starts_with("resize (") || l.starts_with("center_crop_3 (") || l.starts_with("to_tensor_4 (")
            }),
        "{d}"
    );
    let d = describe(&apart);
    assert!(!d.contains("(fused)"), "{d}");

    let run = |text: &str, name: &str| {
        let path = work.path().join(name);
        std::fs::write(&path, text).expect("write spec");
        let out = tempfile::tempdir().expect("tempdir");
        run_spec(&path, out.path(), 1, &[]).unwrap_or_else(|e| panic!("{}", e.report()));
        read_rows(&out.path().join("out")).expect("rows")
    };
    let want = run(&apart, "apart.yaml");
    assert_eq!(want.len(), 13, "every image made a row");
    assert_eq!(run(&fused, "fused.yaml"), want, "{tensor}");
}

/// The steps after a `decode_image` that its plan fuses: each it can take over next, in order
/// (resize, then crop, then to_tensor), up to the first it cannot.
fn fused_steps(middle: &str) -> Vec<String> {
    let work = tempfile::tempdir().expect("tempdir");
    let text = format!(
        r#"name: fusion
steps:
  - name: images
    source: files
    url: {}
    glob: "*.jpg"
  - name: decode
    op: decode_image
{middle}  - sink: blackhole
"#,
        work.path().display()
    );
    let plan = plan_str(&text, "fusion.yaml", &PlanOptions::default())
        .unwrap_or_else(|e| panic!("{}", e.report()));
    let mut ops: Vec<String> = Vec::new();
    for r in &plan.logical.rewrites {
        if r.rule == weir_plan::graph::RewriteRule::Fusion {
            assert_eq!(r.nodes[0], "decode");
            ops.extend(r.nodes[1..].iter().cloned());
        }
    }
    // The rewritten graph has the fused node and none of the nodes it replaced.
    for n in &ops {
        assert!(plan.logical.node(n).is_none(), "{n} is still a node");
    }
    if !ops.is_empty() {
        assert_eq!(
            plan.logical.node("decode").map(|n| n.kind.as_str()),
            Some("decode_image_fused")
        );
    }
    ops.sort();
    ops
}

#[test]
fn fusion_takes_each_step_the_decoder_can_do_next_and_stops_at_the_first_it_cannot() {
    let crop = "  - op: center_crop\n    width: 64\n    height: 64\n";
    let resize_exact = "  - op: resize\n    width: 80\n    height: 60\n";
    let resize_shorter = "  - op: resize\n    shorter_side: 80\n";
    let tensor = "  - op: to_tensor\n    output: t\n";
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // No resize: the crop gives the fixed size the tensor needs.
    assert_eq!(
        fused_steps(&format!("{crop}{tensor}")),
        names(&["center_crop_2", "to_tensor_3"])
    );
    // An exact resize fixes the size too.
    assert_eq!(
        fused_steps(&format!("{resize_exact}{tensor}")),
        names(&["resize_2", "to_tensor_3"])
    );
    // The benchmark's chain: all three.
    assert_eq!(
        fused_steps(&format!("{resize_shorter}{crop}{tensor}")),
        names(&["center_crop_3", "resize_2", "to_tensor_4"])
    );
    // A tensor written over the image column is not fused (the fused decoder keeps that column).
    assert_eq!(
        fused_steps(&format!("{crop}  - op: to_tensor\n    output: image\n")),
        names(&["center_crop_2"])
    );
    // A resize after a crop is out of order: fusion stops at it, so the tensor after it is not
    // fused either.
    assert_eq!(
        fused_steps(&format!("{crop}{resize_exact}{tensor}")),
        names(&["center_crop_2"])
    );
}
