"""Decode any photo into the BGR uint8 array the models expect.

Case photos arrive as whatever a family or an agency had: phone JPEGs with EXIF
rotation, grayscale scans, PNGs with alpha, 16-bit TIFFs/PNGs. Everything becomes
an upright 3-channel 8-bit BGR image, or an ``ImageError`` that says what is wrong.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# A 50-megapixel RGB image is 150 MB decoded; beyond that a device could run out of
# memory, and no camera frame or case photo needs it. Checked from the header,
# before decoding.
MAX_PIXELS = 50_000_000
MAX_FILE_BYTES = 100 * 1024 * 1024
# Transparent areas become mid-grey: neither black nor white skews detection.
ALPHA_BACKGROUND = (128, 128, 128)


class ImageError(ValueError):
    """A file is not a usable image (not an image, truncated, too large, unreadable)."""


def load_image(source: str | Path | bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode ``source`` (a path or the file's bytes) to BGR uint8, EXIF orientation applied."""
    name = "<bytes>" if isinstance(source, bytes | bytearray) else str(source)
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise ImageError(f"{name}: file is {size} bytes, more than {MAX_FILE_BYTES}")
            data = path.read_bytes()
        except IsADirectoryError:
            raise ImageError(f"{name}: is a directory, not an image") from None
        except OSError as error:
            raise ImageError(f"{name}: cannot read: {error.strerror or error}") from None
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces Pillow's decompression-bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageError(
                        f"{name}: {width}x{height} is {width * height / 1e6:.0f} megapixels, "
                        f"more than the {max_pixels / 1e6:.0f} allowed"
                    )
                image.load()  # a truncated file fails here, not later
                image = ImageOps.exif_transpose(image)
                return _to_bgr(image)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (unknown format)") from None
    except Image.DecompressionBombError as error:
        raise ImageError(f"{name}: {error}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        # Pillow reports truncated or corrupt data as OSError/SyntaxError/EOFError.
        raise ImageError(f"{name}: corrupt or truncated image: {error}") from None


def _to_bgr(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        # 16-bit (and 32-bit) grayscale: rescale to 8 bits by the type's range.
        scale = 255.0 / 65535.0 if mode != "F" or pixels.max(initial=0) > 1.0 else 255.0
        gray = np.clip(pixels * scale, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        image = Image.alpha_composite(background, rgba)
    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(rgb[:, :, ::-1])
