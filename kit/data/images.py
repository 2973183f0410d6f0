"""Reading lesion images as users have them: JPEG or PNG files of any size and colour mode.

In:  paths from the command line (files or folders) and the experiment whose kernel will see the images.
Out: `find_images` -> the image files (folders expanded, sorted) plus a one-line problem per path that holds
     none; `read_image` -> a uint8 RGB array [H, W, 3] ready for the kernel's `prepare_image`, or an
     `ImageError` whose one-line message names the file and what was wrong with it.

Two routes, chosen per file by `decode_route`:
- "kernel": a plain RGB JPEG with no EXIF rotation is decoded by the kernel's own TensorFlow path
  (`kernels.data.decode_image`), so its pixels are exactly what the kernel saw for the same bytes
  (Pillow's and TensorFlow's JPEG decoders differ by a few grey levels).
- "pillow": everything else (PNG, grayscale, CMYK, palette, alpha, 16-bit, EXIF-rotated, MPO, ...) is opened
  with Pillow, turned upright by its EXIF orientation, converted to 8-bit RGB (16-bit scaled down, alpha
  composited over `ALPHA_BACKGROUND`) and handed to the kernel's `prepare_image` like a decoded JPEG.

Then a non-square image is made square by the `FITS` entry chosen (default "crop"): "crop" takes the centred
square on the shorter side, as `kit data import` built the datasets the models learnt from (dermoscopy centres
the lesion); "squash" keeps the whole image and lets `prepare_image` resize it (the aspect ratio is lost, as in
a plain resized re-pack). Square images, such as those stored in TFRecords, are never changed.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError

from kernels.config import Experiment
from kernels.data import decode_image
from kit.errors import KitError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what a folder is searched for (case-insensitive)
EXIF_ORIENTATION_TAG = 0x0112
UPRIGHT = 1  # EXIF orientation value meaning "no rotation or flip"
ALPHA_BACKGROUND = (0, 0, 0)  # transparent pixels become black, like the vignette of a dermoscope image
RGB_CHANNELS = 3
UINT8_MAX = 255
UINT16_TO_UINT8 = 257  # 65535 / 255
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # 16-bit / 32-bit grayscale PNG and TIFF modes
JPEG_SOS = b"\xff\xda"  # start-of-scan marker
JPEG_EOI = b"\xff\xd9"  # end-of-image marker
TF_NOISE_RE = re.compile(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]")  # TF's op/device decorations around a message
MAX_MESSAGE = 200
DEFAULT_FIT = "crop"
ROUTE_KERNEL = "kernel"
ROUTE_PILLOW = "pillow"


class ImageError(KitError):
    """One image file could not be read; the message is one line naming the file."""


@dataclass(frozen=True)
class ImageFile:
    """One image to predict: where it is and the name reported for it (the file name without suffix)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.stem


def find_images(inputs: Sequence[str | Path]) -> tuple[list[ImageFile], list[str]]:
    """Expand command-line paths: a file is taken as given (whatever its suffix: a non-image fails later with
    its own message), a folder contributes its JPEG/PNG files (recursively, sorted). Returns the files, in
    order and without duplicates, and one-line problems for paths that do not exist or hold no images."""
    files: list[ImageFile] = []
    problems: list[str] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            files.append(ImageFile(path))

    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                problems.append(f"{path}: folder holds no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)} files")
            for p in found:
                add(p)
        elif path.is_file():
            add(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return files, problems


def _open(data: bytes, where: str) -> Image.Image:
    """Open (header only) with Pillow; images over Pillow's decompression-bomb limit are refused."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{where}: too large to read safely ({_one_line(exc)})") from None
    except UnidentifiedImageError:
        raise ImageError(f"{where}: not an image Pillow can read (expected a JPEG or PNG)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"{where}: not a readable image ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if str(exc) else text


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(EXIF_ORIENTATION_TAG, UPRIGHT) or UPRIGHT)
    except Exception:  # a broken EXIF block: Pillow's exif_transpose will ignore it as well
        return UPRIGHT


def decode_route(image: Image.Image) -> str:
    """ROUTE_KERNEL for a plain RGB JPEG with no EXIF rotation, else ROUTE_PILLOW."""
    if image.format == "JPEG" and image.mode == "RGB" and _orientation(image) == UPRIGHT:
        return ROUTE_KERNEL
    return ROUTE_PILLOW


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """An opened Pillow image -> upright uint8 RGB array [H, W, 3] (EXIF orientation applied, 16-bit scaled
    to 8 bits, alpha composited over ALPHA_BACKGROUND)."""
    image.load()
    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception:  # a malformed EXIF block must not reject pixels that decode fine
        pass
    if image.mode in HIGH_BIT_MODES:
        values = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or values.max(initial=0) > UINT8_MAX:
            values = values / UINT16_TO_UINT8
        elif image.mode == "F" and values.max(initial=0) <= 1.0:
            values = values * UINT8_MAX
        gray = np.clip(np.rint(values), 0, UINT8_MAX).astype(np.uint8)
        return np.repeat(gray[:, :, None], RGB_CHANNELS, axis=2)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        image.mode == "P" and "transparency" in image.info
    )
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, UINT8_MAX))
        image = Image.alpha_composite(background, rgba)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb)


def centre_square(image: np.ndarray) -> np.ndarray:
    """The centred square on the shorter side of [H, W, C] (offsets rounded down, as `kit data import`)."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return image[top : top + side, left : left + side]


FITS = {  # how a non-square image becomes the kernel's square input; adding one is one function and one line
    "crop": centre_square,
    "squash": lambda image: image,  # prepare_image resizes the whole image
}


def read_image(path: str | Path, exp: Experiment, fit: str = DEFAULT_FIT) -> np.ndarray:
    """Read one file as the kernel would see it: uint8 RGB [H, W, 3], made square by FITS[fit].
    Raises ImageError (one line)."""
    return FITS[fit](_read_rgb(path, exp))


def _read_rgb(path: str | Path, exp: Experiment) -> np.ndarray:
    where = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if not data:
        raise ImageError(f"{where}: empty file, expected a JPEG or PNG image")
    image = _open(data, where)
    if decode_route(image) == ROUTE_KERNEL:
        return _decode_with_kernel(data, exp, where)
    try:
        return to_rgb_array(image)
    except (OSError, ValueError, SyntaxError) as exc:  # truncated/corrupt pixel data
        raise ImageError(f"{where}: corrupt image data ({_one_line(exc)})") from None


def jpeg_truncated(data: bytes) -> bool:
    """True when no end-of-image marker follows the last start-of-scan marker (a cut-off download).
    Entropy-coded data byte-stuffs 0xFF, so these two markers cannot occur inside it."""
    return data.rfind(JPEG_EOI) < data.rfind(JPEG_SOS)


def _tf_message(exc: Exception) -> str:
    text = " ".join((getattr(exc, "message", None) or str(exc)).split())
    text = TF_NOISE_RE.sub("", text).strip()
    return text[:MAX_MESSAGE] or type(exc).__name__


def _decode_with_kernel(data: bytes, exp: Experiment, where: str) -> np.ndarray:
    if jpeg_truncated(data):
        raise ImageError(f"{where}: truncated JPEG (the data ends before the end-of-image marker)")
    try:
        image = decode_image(tf.constant(data), exp)  # as the kernel's eval pipeline calls it
        array = np.asarray(image, dtype=np.uint8)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, ValueError) as exc:
        raise ImageError(f"{where}: corrupt JPEG data ({_tf_message(exc)})") from None
    if array.ndim != RGB_CHANNELS or array.shape[-1] != RGB_CHANNELS:
        raise ImageError(f"{where}: decoded to shape {array.shape}, expected [height, width, 3]")
    return array
