"""Header probing, strict decoding, EXIF orientation and the decompression-bomb guard."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from sainet.core.errors import CorruptImage, ImageTooLarge
from sainet.core.imaging import decode_rgb, encode_jpeg, probe
from tests.conftest import make_image, pil_bytes


def test_probe_real_photo(bus_jpg):
    info = probe(bus_jpg)
    assert (info.format, info.size, info.channels, info.progressive) == ("jpeg", (810, 1080), 3, False)
    img = decode_rgb(bus_jpg)
    assert img.shape == (1080, 810, 3) and img.dtype == np.uint8


def test_decode_matches_opencv(bus_jpg):
    import cv2

    ref = cv2.cvtColor(cv2.imdecode(np.frombuffer(bus_jpg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    got = decode_rgb(bus_jpg)
    assert np.abs(ref.astype(int) - got.astype(int)).mean() < 1.0


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_gives_displayed_frame(orientation):
    """Labels refer to the displayed frame, as Ultralytics (OpenCV imread) sees it."""
    import cv2
    from PIL import Image

    img = make_image(64, 32, 1)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = pil_bytes(img, "JPEG", exif=exif.tobytes(), quality=95)
    info = probe(data)
    assert info.orientation == orientation
    assert info.size == ((32, 64) if orientation in (6, 8) else (64, 32))
    ours = decode_rgb(data)
    theirs = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert ours.shape == theirs.shape
    assert np.abs(ours.astype(int) - theirs.astype(int)).mean() < 2


def test_truncated_and_zero_byte_are_typed_errors():
    data = encode_jpeg(make_image(64, 48))
    with pytest.raises(CorruptImage, match="zero-byte"):
        probe(b"", "a.jpg")
    with pytest.raises(CorruptImage, match="b.jpg"):
        decode_rgb(data[: len(data) // 2], "b.jpg")
    with pytest.raises(CorruptImage):
        probe(b"hello world", "c.jpg")


def test_decompression_bomb_refused_before_allocation():
    data = bytearray(encode_jpeg(make_image(16, 16)))
    # Patch the SOF0 frame header to claim 65535 x 65535.
    i = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, i + 5, 65535, 65535)
    with pytest.raises(ImageTooLarge, match="65535x65535"):
        decode_rgb(bytes(data), "bomb.jpg")


def test_grayscale_png16_and_scaled_decode():
    gray = pil_bytes(make_image(40, 30)[:, :, 0], "JPEG")
    assert decode_rgb(gray).shape == (30, 40, 3)
    import cv2

    ok, png16 = cv2.imencode(".png", (make_image(40, 30)[:, :, 0].astype(np.uint16) * 257))
    assert ok
    info = probe(png16.tobytes())
    assert (info.format, info.bit_depth) == ("png", 16)
    assert decode_rgb(png16.tobytes()).shape == (30, 40, 3)
    big = encode_jpeg(make_image(400, 200))
    small = decode_rgb(big, min_size=(100, 50))
    assert small.shape == (50, 100, 3)  # 1/4 DCT-scaled decode


@pytest.mark.parametrize("min_size", [None, (700, 400), (300, 170), (100, 60), (20, 10)])
def test_reduced_decode_fits_the_reduced_buffer(min_size):
    """A reduced-DCT decode goes into a buffer sized for the reduced image (scaled_bytes), not the
    full one: a loader keeps several batches of decoded sources, and full-size buffers for 1/2-scale
    decodes held 4x the memory."""
    import simplejpeg

    from sainet.core.imaging import probe, scaled_bytes

    rgb = np.random.default_rng(0).integers(0, 255, (810, 1440, 3), dtype=np.uint8)
    data = simplejpeg.encode_jpeg(rgb, quality=80, colorspace="RGB")
    info = probe(data)
    need = scaled_bytes(info, min_size)
    buf = bytearray(need)
    img = decode_rgb(data, min_size=min_size, info=info, buffer=buf)
    assert img.nbytes <= need and np.shares_memory(img, np.frombuffer(buf, np.uint8))
    if min_size is not None:
        assert img.shape[1] >= min_size[0] and img.shape[0] >= min_size[1] and need < 1440 * 810 * 3
