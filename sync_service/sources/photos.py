"""Checking downloaded case photos: the true file type comes from the bytes.

Sources declare ``image/jpg``, ``image/pjpeg``, ``image/x-png`` and sometimes serve
an HTML error page as ``image/jpeg``; only what decodes completely is kept.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

MAX_PHOTO_BYTES = 20 * 1024 * 1024
MAX_PHOTO_PIXELS = 40_000_000  # decompression-bomb guard, about 6300 x 6300
MIN_PHOTO_SIDE = 32  # smaller cannot hold a usable face

# Pillow format name -> (file extension, true mime type). Only formats a browser,
# OpenCV and the gallery builder all read.
FORMATS = {
    "JPEG": ("jpg", "image/jpeg"),
    "PNG": ("png", "image/png"),
    "WEBP": ("webp", "image/webp"),
    "GIF": ("gif", "image/gif"),
    "BMP": ("bmp", "image/bmp"),
}


class PhotoRejected(ValueError):
    """A photo that is not stored, with the reason (a short phrase for the summary)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PhotoInfo:
    extension: str
    mime_type: str
    width: int
    height: int


def inspect_photo(data: bytes) -> PhotoInfo:
    """Identify and fully decode ``data``; raise ``PhotoRejected`` saying why it is unusable."""
    if not data:
        raise PhotoRejected("empty", "0 bytes")
    if len(data) > MAX_PHOTO_BYTES:
        raise PhotoRejected("too large", f"{len(data)} bytes, limit {MAX_PHOTO_BYTES}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                file_format = image.format or ""
                width, height = image.size
                if file_format not in FORMATS:
                    raise PhotoRejected("unsupported image type", file_format or "unknown")
                if width * height > MAX_PHOTO_PIXELS:
                    raise PhotoRejected("too many pixels", f"{width}x{height}")
                image.load()  # decodes everything: a truncated file fails here
    except PhotoRejected:
        raise
    except UnidentifiedImageError:
        # Nothing of the refused body is kept, not even its first bytes (it may be a page
        # from anywhere, a WAF's or a metadata service's).
        raise PhotoRejected("not an image", f"{len(data)} bytes that no supported image format reads") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise PhotoRejected("too many pixels", str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow reports truncation as OSError("image file is truncated ...").
        reason = "truncated image" if "truncated" in str(error).lower() else "undecodable image"
        raise PhotoRejected(reason, str(error)) from None
    if min(width, height) < MIN_PHOTO_SIDE:
        raise PhotoRejected("too small", f"{width}x{height}")
    extension, mime_type = FORMATS[file_format]
    return PhotoInfo(extension, mime_type, width, height)
