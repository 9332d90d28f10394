"""Run by scripts/check-pip-install.sh in a fresh virtual environment where `weir` was installed
with `pip install ./python` and ONNX Runtime comes only from the `onnxruntime` wheel
(ORT_DYLIB_PATH unset): the package, its stubs and the engine are in the install, ONNX Runtime
is found in the wheel, and the documented example classifies real photos."""

import importlib.util
import os
import sys

assert "ORT_DYLIB_PATH" not in os.environ, "run without ORT_DYLIB_PATH"
import weir  # noqa: E402

here = os.path.dirname(os.path.abspath(weir.__file__))
repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
assert not here.startswith(repo), f"weir imported from the checkout ({here}), not the install"
for f in ("py.typed", "_weir.pyi", "__init__.py"):
    assert os.path.isfile(os.path.join(here, f)), f"{f} is not in the installed package {here}"
assert any(n.startswith("_weir") and n.endswith(".so") for n in os.listdir(here)), os.listdir(here)

ort = os.environ.get("ORT_DYLIB_PATH", "")
wheel = os.path.dirname(importlib.util.find_spec("onnxruntime").origin)
assert ort.startswith(wheel) and os.path.isfile(ort), f"ORT_DYLIB_PATH={ort!r}, wheel at {wheel}"

models, photos = os.environ["WEIR_MODELS"], os.path.join(os.environ["WEIR_DATA"], "photos")
df = (
    weir.read_files(photos, glob="*.jpg", job=weir.pipeline("pip-smoke", on_error="dead_letter"))
    .limit(12)
    .col("bytes").image.decode(mode="RGB")
    .col("image").image.resize(shorter_side=256)
    .col("image").image.center_crop(224, 224)
    .col("image").image.to_tensor(output="x", layout="NHWC", channel_order="BGR", mean=[104, 117, 123])
    .infer(f"{models}/opennsfw/open-nsfw.onnx", inputs={"input:0": "x"}, outputs={"outputs": "scores"})
    .top_k("scores", labels=os.path.join(repo, "examples/images/nsfw-labels.txt"), output_label="label", output_score="score")
    .select("uri", "label", "score")
)
t = df.collect()
assert t.num_rows == 12, t.num_rows
assert set(t["label"].to_pylist()) <= {"safe", "unsafe"}, t["label"].to_pylist()
assert all(0.5 <= s <= 1.0 for s in t["score"].to_pylist()), t["score"].to_pylist()
try:
    weir.read_files(photos, glob="*.jpg").filter("no_such_column > 1").collect()
except weir.PlanError as e:
    assert "no_such_column" in str(e), e
else:
    sys.exit("a bad plan did not raise weir.PlanError")
print(f"pip-installed weir {weir.__version__}: {t.num_rows} photos classified, ONNX Runtime from {ort}")
