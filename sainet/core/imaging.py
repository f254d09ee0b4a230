"""Image probing, decoding and encoding (libjpeg-turbo 3 through simplejpeg, OpenCV for the rest).

`probe` reads only the header: format, stored size, channels, progressive, EXIF orientation. It is
what lets `check`, the capacity planner and the decompression-bomb guard work without decoding.

Orientation: like Ultralytics (OpenCV applies the EXIF orientation when it reads a file), labels
refer to the *displayed* frame, so `decode_rgb` applies the EXIF orientation and `ImageInfo.size`
is the displayed (width, height).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg

from sainet.core.errors import CorruptImage, ImageTooLarge

__all__ = [
    "MAX_PIXELS",
    "ImageInfo",
    "probe",
    "decode_rgb",
    "encode_jpeg",
]

#: Largest image sainet will allocate (16384 x 16384). A header claiming more is refused
#: before a byte of pixels is allocated.
MAX_PIXELS = 1 << 28

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PROGRESSIVE_SOF = {0xC2, 0xC6, 0xCA, 0xCE}
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str  # "jpeg", "png", "webp", "bmp", "tiff" or "unknown"
    width: int  # as stored in the file
    height: int
    channels: int  # 1 grayscale, 3 colour, 4 CMYK/YCCK (jpeg) or RGBA (png)
    bit_depth: int = 8
    progressive: bool = False
    orientation: int = 1  # EXIF orientation tag, 1..8

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the displayed frame, after EXIF orientation."""
        if self.orientation in (5, 6, 7, 8):
            return self.height, self.width
        return self.width, self.height

    @property
    def cmyk(self) -> bool:
        return self.format == "jpeg" and self.channels == 4

    @property
    def grayscale(self) -> bool:
        return self.channels == 1


def _exif_orientation(app1: bytes) -> int:
    """Orientation tag (0x0112) from an APP1 Exif segment body; 1 when absent or malformed."""
    if not app1.startswith(b"Exif\x00\x00") or len(app1) < 14:
        return 1
    tiff = app1[6:]
    order = tiff[:2]
    if order == b"II":
        e = "<"
    elif order == b"MM":
        e = ">"
    else:
        return 1
    try:
        (ifd,) = struct.unpack_from(e + "I", tiff, 4)
        (count,) = struct.unpack_from(e + "H", tiff, ifd)
        for i in range(min(count, 512)):
            tag, typ, _n, value = struct.unpack_from(e + "HHI4s", tiff, ifd + 2 + 12 * i)
            if tag == 0x0112 and typ == 3:
                (v,) = struct.unpack_from(e + "H", value, 0)
                return v if 1 <= v <= 8 else 1
    except struct.error:
        return 1
    return 1


def _probe_jpeg(data: bytes, source: str) -> ImageInfo:
    pos, n = 2, len(data)
    orientation = 1
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise CorruptImage(source, f"bad JPEG marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > n:
            raise CorruptImage(source, "truncated JPEG header")
        body = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and orientation == 1:
            orientation = _exif_orientation(body)
        if marker in _SOF_MARKERS:
            if len(body) < 6:
                raise CorruptImage(source, "truncated JPEG frame header")
            bits, h, w, comps = struct.unpack_from(">BHHB", body, 0)
            if w == 0 or h == 0:
                raise CorruptImage(source, f"JPEG header claims a {w}x{h} image")
            return ImageInfo("jpeg", w, h, comps, bits, marker in _PROGRESSIVE_SOF, orientation)
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise CorruptImage(source, "JPEG without a frame header (truncated or not a JPEG)")


def _pil_plugin(kind: str) -> type:
    """Pillow's image class of `kind`, imported on first use (a process that only meets JPEGs, such as
    an assembler process, never loads Pillow: ~8 MB)."""
    from PIL import BmpImagePlugin, TiffImagePlugin, WebPImagePlugin

    return {"tiff": TiffImagePlugin.TiffImageFile, "webp": WebPImagePlugin.WebPImageFile,
            "bmp": BmpImagePlugin.BmpImageFile}[kind]


def _probe_other(data: bytes | memoryview, source: str) -> ImageInfo:
    """TIFF, WebP, BMP headers through Pillow (lazy: it reads the header, not the pixels).

    A TIFF's size lives in an IFD that can sit anywhere in the file, so the whole buffer is handed
    over; nothing is decoded. An image whose size cannot be read is refused, never sized 0x0.
    """
    head = bytes(data[:12])
    kind = (
        "webp" if head[:4] == b"RIFF" and head[8:12] == b"WEBP"
        else "bmp" if head[:2] == b"BM"
        else "tiff" if head[:4] in (b"II*\x00", b"MM\x00*")
        else "unknown"
    )
    if kind == "unknown":
        raise CorruptImage(source, "not an image (unknown signature)")
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's own bomb warning: the MAX_PIXELS check below decides
            # The format's own plugin, not Image.open: Ultralytics patches Image.open (to load HEIF).
            with _pil_plugin(kind)(io.BytesIO(data)) as im:
                w, h, bands = im.width, im.height, len(im.getbands())
                bits = getattr(im, "tag_v2", {}).get(258, (16 if im.mode.startswith("I;16") else 8,))
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, Image.DecompressionBombError) as e:
        raise CorruptImage(source, f"{kind} header unreadable: {e}") from None
    if w <= 0 or h <= 0:
        raise CorruptImage(source, f"{kind} header claims a {w}x{h} image")
    depth = max(bits) if isinstance(bits, tuple) and bits else int(bits) if isinstance(bits, int) else 8
    return ImageInfo(kind, w, h, 1 if bands == 1 else 3 if bands < 4 else 4, depth)


def probe(data: bytes | memoryview, source: str = "<bytes>") -> ImageInfo:
    """Read the header of an encoded image. Raises `CorruptImage` or `ImageTooLarge`."""
    head = bytes(data[:4096]) if len(data) > 4096 else bytes(data)
    if len(data) == 0:
        raise CorruptImage(source, "zero-byte file")
    if head[:2] == b"\xff\xd8":
        # EXIF blocks can push the frame header past the first KB: parse the whole buffer.
        info = _probe_jpeg(bytes(data) if len(data) <= 1 << 20 else bytes(data[: 1 << 20]), source)
    elif head.startswith(_PNG_MAGIC):
        if len(head) < 33:
            raise CorruptImage(source, "truncated PNG header")
        w, h, depth, colour = struct.unpack_from(">IIBB", head, 16)
        channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(colour, 3)
        info = ImageInfo("png", w, h, channels, depth)
    else:
        info = _probe_other(data, source)
    if info.width * info.height > MAX_PIXELS:
        raise ImageTooLarge(source, f"header claims {info.width}x{info.height} pixels (limit {MAX_PIXELS:,})")
    return info


_ROTATE = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1, :],
    5: lambda a: np.swapaxes(a, 0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 1)[::-1, ::-1],
    8: lambda a: np.rot90(a, 1),
}


def _nbytes(buffer: bytearray | np.ndarray) -> int:
    """Bytes in a decode buffer (`len` of an ndarray counts its rows, not its bytes)."""
    return memoryview(buffer).nbytes


def scaled_size(width: int, height: int, min_size: tuple[int, int] | None) -> tuple[int, int]:
    """(w, h) of a width x height JPEG decoded with `decode_rgb(..., min_size=min_size)` (an upper
    bound): the smallest of libjpeg-turbo's 1/8, 1/4, 1/2 scales that keeps both sides at least
    `min_size` (simplejpeg may pick a finer factor in between: never a larger image), else the full
    size. `min_size` and the result are in the same orientation as width and height."""
    if min_size is not None:
        for f in (0.125, 0.25, 0.5):
            w, h = math.ceil(width * f), math.ceil(height * f)
            if w >= min_size[0] and h >= min_size[1]:
                return w, h
    return width, height


def scaled_bytes(info: ImageInfo, min_size: tuple[int, int] | None) -> int:
    """An upper bound of the bytes `decode_rgb(..., min_size=min_size)` decodes `info`'s JPEG to
    (`scaled_size` of its stored frame; `min_size` in the displayed orientation)."""
    mw_mh = None if min_size is None else (min_size if info.orientation < 5 else (min_size[1], min_size[0]))
    w, h = scaled_size(info.width, info.height, mw_mh)
    return w * h * 3


def decode_rgb(
    data: bytes | memoryview,
    source: str = "<bytes>",
    *,
    min_size: tuple[int, int] | None = None,
    info: ImageInfo | None = None,
    buffer: bytearray | np.ndarray | None = None,
) -> np.ndarray:
    """Decode to an HxWx3 uint8 RGB array in the displayed orientation.

    Truncated or corrupt data raises `CorruptImage` (libjpeg-turbo warnings are errors here: a
    truncated JPEG would otherwise decode to a grey tail). `min_size=(w, h)` allows a reduced-DCT
    scaled decode no smaller than that (JPEG only). `buffer` (JPEG only) is decoded into when it is
    large enough, so a loader can reuse memory instead of faulting in new pages for every image.
    """
    info = info or probe(data, source)
    img: np.ndarray | None = None
    if info.format == "jpeg" and info.channels in (1, 3):
        mw, mh = (0, 0)
        if min_size is not None:
            # simplejpeg compares against the stored frame: swap for rotated images.
            mw, mh = min_size if info.orientation < 5 else (min_size[1], min_size[0])
        try:
            img = simplejpeg.decode_jpeg(
                data, colorspace="RGB", min_width=mw, min_height=mh, strict=True,
                buffer=buffer if buffer is not None and _nbytes(buffer) >= scaled_bytes(info, min_size) else None,
            )
        except ValueError as e:
            raise CorruptImage(source, f"JPEG decode failed: {e}") from None
    else:
        buf = np.frombuffer(data, np.uint8)
        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        if arr is None:
            raise CorruptImage(source, f"{info.format} decode failed")
        if arr.dtype == np.uint16:
            arr = (arr >> 8).astype(np.uint8)
        elif arr.dtype != np.uint8:
            raise CorruptImage(source, f"unsupported pixel type {arr.dtype}")
        if arr.ndim == 2:
            img = cv2.cvtColor(arr, cv2.COLOR_GRAY2RGB)
        elif arr.shape[2] == 4 and info.format == "jpeg":
            # OpenCV converts CMYK JPEGs to BGR itself when asked for colour; redo that way.
            img = cv2.cvtColor(
                cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION), cv2.COLOR_BGR2RGB
            )
        elif arr.shape[2] == 4:
            img = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGB)
        elif arr.shape[2] == 2:
            img = cv2.cvtColor(arr[:, :, 0], cv2.COLOR_GRAY2RGB)
        else:
            img = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    if info.orientation != 1:
        img = np.ascontiguousarray(_ROTATE[info.orientation](img))
    return img


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    """Encode an HxWx3 uint8 RGB array (libjpeg-turbo, 4:2:0, baseline)."""
    return simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=quality, colorspace="RGB", colorsubsampling="420")
