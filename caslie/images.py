"""Product images from local paths or http(s) URLs, with the limits a shared cluster needs.

Local paths are confined to the data root (no ``..``, no absolute path or link that leaves it);
URLs must be ``http`` or ``https`` and are fetched with a timeout, retries and a byte limit. An
image is decoded only when its declared size is under the pixel limit (decompression bombs are
refused before any pixel is decoded), then resized to fit the configured square. Every refusal is
an :class:`ImageError` whose message is recorded as the failure reason.
"""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")


class ImageError(Exception):
    """An image that cannot be had; the message says why."""


@dataclass(frozen=True)
class ImageLimits:
    """How images are fetched and sized."""

    timeout_s: float = 10.0
    retries: int = 2
    max_bytes: int = 20_000_000
    max_pixels: int = 40_000_000
    size: int = 500


def _read_local(ref: str, root: Path, limits: ImageLimits) -> bytes:
    if ref.startswith("file:") or "://" in ref:
        raise ImageError(f"unsupported URL scheme in '{ref}' (only http and https)")
    root = root.resolve()
    path = (root / ref).resolve()
    if not path.is_relative_to(root):
        raise ImageError(f"'{ref}' is outside the data root {root}")
    if not path.is_file():
        raise ImageError(f"image file '{ref}' not found under {root}")
    if path.stat().st_size > limits.max_bytes:
        raise ImageError(f"'{ref}' is larger than {limits.max_bytes} bytes")
    return path.read_bytes()


def _fetch(url: str, limits: ImageLimits) -> bytes:
    last = ""
    for attempt in range(limits.retries + 1):
        if attempt:
            time.sleep(min(2.0, 0.25 * 2**attempt))
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "caslie"})
            with urllib.request.urlopen(request, timeout=limits.timeout_s) as resp:  # noqa: S310 (scheme checked)
                data = resp.read(limits.max_bytes + 1)
            if len(data) > limits.max_bytes:
                raise ImageError(f"{url} is larger than {limits.max_bytes} bytes")
            return data
        except ImageError:
            raise
        except urllib.error.HTTPError as err:
            last = f"HTTP {err.code}"
            if 400 <= err.code < 500 and err.code != 429:  # the server will not change its mind
                break
        except (urllib.error.URLError, TimeoutError, OSError) as err:
            last = str(getattr(err, "reason", err))
    raise ImageError(f"cannot fetch {url} after {attempt + 1} attempt(s): {last}")


def read_image_bytes(ref: str, root: Path, limits: ImageLimits) -> bytes:
    """The raw bytes of an image reference (URL or path under ``root``)."""
    scheme = urlparse(ref).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch(ref, limits)
    return _read_local(ref, root, limits)


def decode_image(data: bytes, limits: ImageLimits, ref: str = "image"):
    """Decode bytes into an RGB ``PIL.Image`` that fits ``limits.size`` x ``limits.size``."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # the pixel limit below decides, not PIL's warning
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        with img:
            if img.format not in FORMATS:
                raise ImageError(f"{ref}: unsupported image format {img.format}")
            width, height = img.size
            if width * height > limits.max_pixels:
                raise ImageError(
                    f"{ref}: {width}x{height} pixels exceeds the limit of {limits.max_pixels}"
                )
            img.load()
            rgb = img.convert("RGB")
    except ImageError:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError) as err:
        raise ImageError(f"{ref}: not a readable image ({type(err).__name__})") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise ImageError(f"{ref}: corrupt image data ({err})") from None
    return ImageOps.contain(rgb, (limits.size, limits.size))


def load_image(ref: str, root: Path, limits: ImageLimits):
    """Fetch or read, check and decode one image.

    Raises:
        ImageError: unreachable, outside the data root, too large, corrupt or unsupported.
    """
    return decode_image(read_image_bytes(ref, root, limits), limits, ref)
