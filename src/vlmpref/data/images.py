"""Turn whatever a dataset holds for an image into an RGB PIL image, or say why it cannot.

Accepted: PIL images, `{"bytes", "path"}` dicts (the `datasets.Image` storage), raw bytes, and file paths
(relative to the dataset's folder). EXIF rotation is applied; transparency is composited on white;
16-bit, palette, grayscale and CMYK images are converted. A pixel limit refuses decompression bombs.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000  # ~7000 x 7000; far above any VLM's input, far below a bomb's size


class ImageProblem(ValueError):
    """An image that cannot be used; the message is the reason recorded for the row."""


def _open(value: Any, base: Path | None, allow_outside: bool) -> Image.Image:
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if isinstance(data, (bytes, bytearray)) and data:
            return Image.open(io.BytesIO(data))
        if isinstance(path, str) and path:
            return _open_path(path, base, allow_outside=True)  # written by `datasets` itself
        raise ImageProblem("image entry has neither bytes nor a path")
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise ImageProblem("image bytes are empty")
        return Image.open(io.BytesIO(value))
    if isinstance(value, str):
        if not value.strip():
            raise ImageProblem("image path is empty")
        return _open_path(value, base, allow_outside)
    raise ImageProblem(f"image must be a path, bytes or an image, not {type(value).__name__}")


def _open_path(text: str, base: Path | None, allow_outside: bool) -> Image.Image:
    shown = text if len(text) <= 200 else text[:200] + "..."
    try:
        path = Path(text).expanduser()
        if not path.is_absolute():
            if base is None:
                raise ImageProblem(f"relative image path {shown!r} in a dataset that has no folder")
            path = base / path
        path = path.resolve()  # symlinks too: a link inside the folder may point outside it
        if base is not None and not allow_outside and not path.is_relative_to(base):
            raise ImageProblem(f"image path {shown!r} points outside the dataset folder (allow with "
                               "--allow-outside-paths)")
        if not path.is_file():
            raise ImageProblem(f"image file {shown!r} does not exist")
        data = path.read_bytes()
    except ImageProblem:
        raise
    except (OSError, ValueError, RuntimeError) as exc:  # too long, NUL bytes, ~unknown-user, unreadable
        raise ImageProblem(f"image path {shown!r} cannot be opened ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    # Decoding errors are the caller's to name (corrupt, truncated, not an image), not a path problem
    return Image.open(io.BytesIO(data))


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: scale to 8 bits by the actual range instead of clipping at 255
        array = np.asarray(image, dtype=np.float64)
        top = array.max() if array.size else 0
        array = np.rint(array / (top / 255.0) if top > 255 else array).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(array, mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image


def load_rgb(value: Any, base: Path | None = None, allow_outside: bool = False,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `value` fully and return it upright in RGB, or raise ImageProblem with the reason."""
    try:
        image = _open(value, base, allow_outside)
        width, height = image.size
        if width == 0 or height == 0:
            raise ImageProblem(f"image has zero size ({width}x{height})")
        if width * height > max_pixels:
            raise ImageProblem(f"image has {width}x{height} pixels, over the limit of {max_pixels:,} "
                               "(raise it with --max-image-pixels if this is intended)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()  # decode now, so truncated files fail here and not in the middle of training
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except ImageProblem:
        raise
    except UnidentifiedImageError:  # its message names an internal buffer, not the user's file
        raise ImageProblem("image cannot be decoded (not a known image format, or its header is corrupt)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageProblem(f"image cannot be decoded ({type(exc).__name__}: {_first_line(exc)})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageProblem(f"image is corrupt or truncated ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - decoders of untrusted bytes fail in many ways (struct, EXIF, ...)
        raise ImageProblem(f"image cannot be decoded ({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: Exception) -> str:
    text = str(exc)
    return text.splitlines()[0][:120] if text else ""
