"""Regenerates the small JPEGs in this folder that Rust encoders cannot produce.

    python3 -m venv /tmp/pil && /tmp/pil/bin/pip install pillow
    /tmp/pil/bin/python crates/weir-media/tests/data/make_test_images.py .weir/data/photos/opencv_fruits.jpg

Made with Pillow 13.0.0:
- cmyk.jpg        96x64 photo converted to CMYK (Adobe-style inverted CMYK JPEG, 4 components)
- exif_rotated.jpg 40x20, left half red, right half blue, EXIF Orientation=6 (display rotated 90°
                   clockwise: upright it is 20x40, red on top, blue below)
- progressive.jpg 96x64 photo, progressive encoding
"""
import sys
from pathlib import Path

from PIL import Image

out = Path(__file__).resolve().parent
photo = Image.open(sys.argv[1]).convert("RGB").resize((96, 64), Image.BILINEAR)

photo.convert("CMYK").save(out / "cmyk.jpg", quality=85)
photo.save(out / "progressive.jpg", quality=85, progressive=True)

two = Image.new("RGB", (40, 20), (0, 0, 255))
two.paste((255, 0, 0), (0, 0, 20, 20))
exif = Image.Exif()
exif[0x0112] = 6
two.save(out / "exif_rotated.jpg", quality=95, exif=exif.tobytes())
