"""Loading images for the tutorials: from a file, a URL, raw bytes or a PIL image, always as RGB.

:func:`load_image` is the one entry point the notebooks use. Whatever the source, it returns an RGB
``PIL.Image.Image`` that

* is turned the way a person sees it: the EXIF orientation tag is applied with
  ``PIL.ImageOps.exif_transpose``, so boxes drawn on it land where the model saw things; with
  ``exif_orientation=False`` the pixels stay as stored, which is what annotation files' boxes refer to;
* has no transparency (transparent pixels are composited on white) and no palette, CMYK or high-bit-depth
  grey (16-bit and 32-bit grey are scaled down to 8 bits, not clipped to white);
* has its longest side at most ``max_side`` pixels (bigger images are shrunk while loading; JPEGs are
  decoded at a reduced scale with ``Image.draft`` so the full-size image is never held in memory).

:func:`load_image_and_size` also gives the size the image had before it was shrunk (what pixel boxes on the
file itself are measured in), and :func:`stored_size` reads a file's size as stored from its header alone.

Size limits (all documented constants of this module):

* :data:`MAX_PIXELS` -- an image whose header announces more than 40000 x 40000 pixels is refused before
  any pixel is decoded.
* :data:`MAX_DECODED_PIXELS` -- at most 200 million pixels are decoded at once (about 600 MB for RGB). A
  JPEG is decoded at 1/2, 1/4 or 1/8 scale when that is enough for ``max_side``, so JPEGs up to
  :data:`MAX_PIXELS` load; other formats (PNG, TIFF, WebP, ...) are decoded at full size and so must
  stay within this limit (e.g. 12000 x 9000 = 108 million pixels is fine).

Within these limits Pillow's ``DecompressionBombWarning`` / ``DecompressionBombError`` are never raised:
the loader does its own, clearer checks instead. Every failure to load raises :class:`ImageLoadError`,
a ``ValueError`` whose message says what was expected and what was received.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
import time
import warnings
from pathlib import Path
from typing import BinaryIO, Iterator, Union

import numpy as np
import requests
import urllib3
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from helpers.grounding.checks import check_bool, check_positive_int, check_positive_number

__all__ = [
    "ImageLoadError",
    "ImageSource",
    "MAX_DECODED_PIXELS",
    "MAX_PIXELS",
    "check_image",
    "load_image",
    "load_image_and_size",
    "no_pixels",
    "stored_size",
    "to_rgb",
]

#: Images announcing more pixels than this (40000 x 40000) are refused before decoding.
MAX_PIXELS: int = 40_000 * 40_000
#: At most this many pixels are decoded at once (after a JPEG's reduced-scale decoding).
MAX_DECODED_PIXELS: int = 200_000_000

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]

_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CHUNK = 64 * 1024
_USER_AGENT = "kosmos2-grounding-course/1.0 (+python-requests)"
# Content types that may hold an image even though they do not say "image/".
_GENERIC_TYPES = {"application/octet-stream", "binary/octet-stream", "application/binary"}
# Pillow's pixel limit is a module global; changes to it are serialized by this lock.
_PILLOW_LIMIT_LOCK = threading.Lock()
# EXIF orientations that turn the picture a quarter: ImageOps.exif_transpose swaps its width and height.
_QUARTER_TURNS = (5, 6, 7, 8)


class ImageLoadError(ValueError):
    """An image could not be loaded; the message says what was expected and what was found."""


# --------------------------------------------------------------------------------------------- public API


def load_image(
    source: ImageSource,
    *,
    timeout: float = 10.0,
    max_bytes: int = 20_000_000,
    max_side: int = 4096,
    exif_orientation: bool = True,
) -> Image.Image:
    """Load an image as RGB, EXIF-oriented, with its longest side at most ``max_side`` pixels.

    Args:
        source: a file path (``str`` or ``os.PathLike``), an ``http://`` or ``https://`` URL, the raw
            bytes of an image file, or a ``PIL.Image.Image`` (which is not modified).
        timeout: seconds allowed for a download, in total (connecting and reading).
        max_bytes: the largest file or download accepted, in bytes. A download stops reading as soon as
            it passes this cap.
        max_side: the longest side of the returned image, in pixels; bigger images are shrunk (keeping
            their aspect ratio), smaller ones are left as they are.
        exif_orientation: turn the image as its EXIF orientation tag says (``True``, the default: what a
            person sees, right for showing and grounding photos) or keep the pixels as stored (``False``).
            Choose ``False`` when boxes come from an annotation file: COCO, RefCOCO and Flickr30k Entities
            measure their boxes on the stored pixels, so the benchmark evaluations load images this way.

    Returns:
        A new RGB image.

    Raises:
        TypeError: ``source`` is of an unsupported type, ``max_bytes`` or ``max_side`` is not a whole number, or
            ``exif_orientation`` is not ``True`` or ``False``.
        ValueError: ``timeout`` is not a finite Python number above 0 (a str or bool included), or ``max_bytes``
            or ``max_side`` is below 1.
        ImageLoadError: the source could not be read or is not a usable image (an empty path, missing file,
            directory, dead URL, HTTP error status, non-image content, timeout, too many bytes, too many pixels,
            no pixels at all (a 0 x 0 PIL image), corrupt data).
    """
    return load_image_and_size(source, timeout=timeout, max_bytes=max_bytes, max_side=max_side,
                               exif_orientation=exif_orientation)[0]


def load_image_and_size(
    source: ImageSource,
    *,
    timeout: float = 10.0,
    max_bytes: int = 20_000_000,
    max_side: int = 4096,
    exif_orientation: bool = True,
) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`load_image`'s image and the ``(width, height)`` of the source itself, before any shrinking.

    The size is the file's (or the bytes', the download's, the PIL image's), turned as the image is: with
    ``exif_orientation=True`` a 6000 x 4000 photo whose EXIF tag says "rotate 90°" has the size (4000, 6000).
    A normalized box times this size is in pixels of the file, however much the image was shrunk to
    ``max_side``. The arguments and errors are :func:`load_image`'s.
    """
    check_positive_number("timeout", timeout)
    check_positive_int("max_bytes", max_bytes)
    check_positive_int("max_side", max_side)
    check_bool("exif_orientation", exif_orientation)

    if isinstance(source, Image.Image):
        return _finish(source, max_side=max_side, what="the given PIL image", orient=exif_orientation)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > max_bytes:
            raise ImageLoadError(
                f"the image bytes are {len(data):,} bytes, over the limit of max_bytes={max_bytes:,}"
            )
        return _decode(data, max_side=max_side, what="the given bytes", orient=exif_orientation)
    if isinstance(source, str):
        if not source:
            raise ImageLoadError("source is an empty str: expected a file path, an http(s) URL, image bytes or a "
                                 "PIL image")
        match = _URL_SCHEME.match(source)
        if match:
            scheme = match.group(1).lower()
            if scheme not in ("http", "https"):
                raise ImageLoadError(
                    f"unsupported URL scheme {scheme!r} in {source!r}: expected http:// or https://, "
                    "or a local file path"
                )
            data = _download(source, timeout=timeout, max_bytes=max_bytes)
            return _decode(data, max_side=max_side, what=f"the download from {source}", orient=exif_orientation)
        return _decode(_read_file(Path(source), max_bytes), max_side=max_side, what=f"file {source}",
                       orient=exif_orientation)
    if isinstance(source, os.PathLike):
        path = Path(os.fspath(source))
        return _decode(_read_file(path, max_bytes), max_side=max_side, what=f"file {path}", orient=exif_orientation)
    raise TypeError(
        "source must be a file path (str or os.PathLike), an http(s) URL, image bytes or a PIL image, "
        f"got {type(source).__name__}: {source!r:.80}"
    )


def stored_size(path: str | os.PathLike, *, turned: bool = False) -> tuple[int, int]:
    """The ``(width, height)`` of the image file at ``path`` as its pixels are stored, read from its header alone.

    No pixel is decoded. Without ``turned`` the EXIF orientation is not applied: this is the size annotation files
    (COCO, RefCOCO, Flickr30k Entities) give and measure their boxes on, and that of
    ``load_image(path, exif_orientation=False)`` before shrinking. With ``turned=True`` it is the size a viewer
    shows, width and height swapped when the EXIF tag turns the picture a quarter (that of ``load_image(path)``
    before shrinking).

    Raises:
        ImageLoadError: there is no file at ``path``, it is a directory, it is empty, or it is not an image Pillow
            can read.
    """
    path = Path(os.fspath(path))
    _check_file(path)
    what = f"file {str(path)!r}"
    try:
        if path.stat().st_size == 0:
            raise ImageLoadError(f"{what} is empty (0 bytes), expected an image file")
        with open(path, "rb") as handle, _own_pixel_checks(), _open(handle, what) as image:
            if turned and _quarter_turned(image):
                return image.size[1], image.size[0]
            return image.size
    except OSError as exc:
        raise ImageLoadError(f"could not read image file {str(path)!r}: {exc}") from None


def no_pixels(image: Image.Image, what: str = "image") -> str | None:
    """Why ``image`` (named ``what``) cannot be used, or ``None``: an image must have at least 1 x 1 pixels.

    The one rule for a PIL image of width or height 0: :func:`load_image` refuses it (``ImageLoadError``), and so
    do the drawing functions (``ValueError``), which would otherwise draw on nothing.
    """
    if image.width < 1 or image.height < 1:
        return f"{what} must have at least 1 x 1 pixels, got {image.width} x {image.height}"
    return None


def check_image(image: object) -> Image.Image:
    """``image`` itself when it is a PIL image with pixels: what the drawing functions and the playground's
    colour score take.

    Raises:
        TypeError: not a PIL image (the message says how to load a file or URL).
        ValueError: no pixels (:func:`no_pixels`).
    """
    if not isinstance(image, Image.Image):
        raise TypeError("image must be a PIL.Image.Image (load files and URLs with "
                        f"helpers.grounding.images.load_image), got {type(image).__name__}")
    problem = no_pixels(image)
    if problem:
        raise ValueError(problem)
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """A new RGB copy of ``image``, whatever its mode; ``image`` itself is not modified.

    * Transparency (RGBA, LA, PA, pre-multiplied modes, and palette or grey images with a transparent
      colour) is composited on white.
    * 16-bit grey (``I;16`` and its byte orders) is scaled by 255/65535. 32-bit integer grey (``I``)
      is taken to hold 16-bit values the same way (values outside [0, 65535] are clipped first).
      Floating-point grey (``F``) in [0, 1] is scaled by 255; otherwise it is clipped to [0, 255].
    * Everything else (1-bit, L, P, CMYK, YCbCr, LAB, HSV) goes through Pillow's own conversion.

    Raises:
        TypeError: ``image`` is not a PIL image.
    """
    if not isinstance(image, Image.Image):
        raise TypeError(f"to_rgb expects a PIL.Image.Image, got {type(image).__name__}")
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_grey_to_uint8(image), mode="L").convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        source = image.convert("LA") if mode == "La" else image  # Pillow has no direct La -> RGBA
        rgba = source.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


# --------------------------------------------------------------------------------------------- internals


def _grey_to_uint8(image: Image.Image) -> np.ndarray:
    """8-bit values of a high-bit-depth grey image (see :func:`to_rgb` for the scaling rules)."""
    values = np.asarray(image).astype(np.float64)
    if image.mode == "F":
        finite = values[np.isfinite(values)]
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            values = values * 255.0
    else:  # I;16 family, I: 16-bit range
        values = np.clip(values, 0, 65535) * (255.0 / 65535.0)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageLoadError(f"no image file at {str(path)!r}: expected an existing file, found nothing there")
    if path.is_dir():
        raise ImageLoadError(f"{str(path)!r} is a directory, expected an image file")


def _read_file(path: Path, max_bytes: int) -> bytes:
    _check_file(path)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise ImageLoadError(
                f"file {str(path)!r} is {size:,} bytes, over the limit of max_bytes={max_bytes:,}"
            )
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except ImageLoadError:
        raise
    except OSError as exc:
        raise ImageLoadError(f"could not read image file {str(path)!r}: {exc}") from exc
    if len(data) > max_bytes:  # the file grew while we looked at it
        raise ImageLoadError(f"file {str(path)!r} is over the limit of max_bytes={max_bytes:,}")
    return data


def _timed_out(url: str, timeout: float) -> ImageLoadError:
    return ImageLoadError(f"downloading {url} timed out after {timeout:g} s (expected an image within timeout)")


def _download(url: str, *, timeout: float, max_bytes: int) -> bytes:
    """The body of ``url``; stops at ``max_bytes`` and after ``timeout`` seconds in total."""
    started = time.monotonic()
    chunks: list[bytes] = []
    try:
        with requests.get(url, stream=True, timeout=timeout,
                          headers={"User-Agent": _USER_AGENT, "Accept": "image/*"}) as response:
            if response.status_code >= 400:
                raise ImageLoadError(
                    f"downloading {url} failed: the server answered HTTP {response.status_code} {response.reason}; "
                    "expected HTTP 200 with an image"
                )
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower() or None
            if content_type is not None and not (content_type.startswith("image/") or content_type in _GENERIC_TYPES):
                raise ImageLoadError(
                    f"{url} returned content of type {content_type!r}, expected an image (image/*); "
                    "is this the address of a web page rather than of the image itself?"
                )
            declared = response.headers.get("Content-Length", "").strip()
            if declared.isdigit() and int(declared) > max_bytes:
                raise ImageLoadError(f"{url} announces {int(declared):,} bytes, "
                                     f"over the limit of max_bytes={max_bytes:,}")
            total = 0
            # read1 returns what has arrived (at most _CHUNK bytes), so a trickling server meets the clock
            while chunk := response.raw.read1(_CHUNK, decode_content=True):
                total += len(chunk)
                if total > max_bytes:
                    raise ImageLoadError(f"{url} sent more than max_bytes={max_bytes:,} bytes; "
                                         "stopped reading at the cap")
                chunks.append(chunk)
                if time.monotonic() - started > timeout:
                    raise _timed_out(url, timeout)
    except (requests.Timeout, urllib3.exceptions.TimeoutError):
        raise _timed_out(url, timeout) from None
    except requests.ConnectionError as exc:
        raise ImageLoadError(f"could not connect to {url}: {_connection_reason(exc)}") from None
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise ImageLoadError(f"downloading {url} failed: {type(exc).__name__}: {exc}") from None
    return b"".join(chunks)


def _connection_reason(exc: requests.ConnectionError) -> str:
    """What went wrong, without urllib3's wrapping: ``Failed to establish a new connection: [Errno 111] …``."""
    cause = exc.args[0] if exc.args else exc
    cause = getattr(cause, "reason", cause)  # urllib3's MaxRetryError keeps the error of the last try
    text = str(cause)
    _, found, rest = text.partition("): ")  # drop "HTTPConnection(host=…, port=…)", the URL says it
    return rest if found and text.startswith(("HTTPConnection(", "HTTPSConnection(")) else text


@contextlib.contextmanager
def _own_pixel_checks() -> Iterator[None]:
    """Let this module's limits replace Pillow's decompression-bomb limit for the duration.

    Pillow's limit stays in force above :data:`MAX_PIXELS` (as an error), so even code paths that this
    module does not check cannot decode more than that.
    """
    with _PILLOW_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2  # Pillow raises above twice this value
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _target_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    width, height = size
    longest = max(width, height)
    if longest <= max_side:
        return size
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def _open(fp: BinaryIO, what: str) -> Image.Image:
    """``Image.open(fp)``, which reads only the header, with its errors as :class:`ImageLoadError`.

    Pillow's pixel limit is off while opening (callers check the size before decoding anything); call it
    within :func:`_own_pixel_checks`.
    """
    try:
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(fp)
        finally:
            Image.MAX_IMAGE_PIXELS = MAX_PIXELS // 2
    except UnidentifiedImageError:
        fp.seek(0)
        head = fp.read(16)
        raise ImageLoadError(
            f"{what} is not an image Pillow can read (expected e.g. JPEG, PNG, GIF, WebP, TIFF; "
            f"{fp.seek(0, io.SEEK_END):,} bytes starting {head!r})"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(f"{what} is too large to load: {exc}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageLoadError(f"{what} could not be read as an image: {exc}") from None


def _decode(data: bytes, *, max_side: int, what: str, orient: bool = True) -> tuple[Image.Image, tuple[int, int]]:
    """The loaded image and the source's own size (turned as the image is, see :func:`load_image_and_size`)."""
    if not data:
        raise ImageLoadError(f"{what} is empty (0 bytes), expected an image file")
    with _own_pixel_checks():
        # Opening reads only the header; the size is checked right below, before any decoding.
        image = _open(io.BytesIO(data), what)
        with image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageLoadError(
                    f"{what} is {width} x {height} = {width * height:,} pixels, over the limit of "
                    f"{MAX_PIXELS:,} pixels (40000 x 40000); refusing to decode it"
                )
            target = _target_size(image.size, max_side)
            if target != image.size:
                image.draft(image.mode, target)  # JPEG: decode at 1/2, 1/4 or 1/8 scale; others: no-op
            decoded = image.size[0] * image.size[1]
            if decoded > MAX_DECODED_PIXELS:
                raise ImageLoadError(
                    f"{what} is {width} x {height} pixels ({image.format or 'unknown'} format); decoding it "
                    f"needs {decoded:,} pixels at once, over the limit of {MAX_DECODED_PIXELS:,}. "
                    "Expected a smaller image (only JPEGs can be decoded at reduced scale)"
                )
            try:
                image.load()
            except Image.DecompressionBombError as exc:
                raise ImageLoadError(f"{what} is too large to load: {exc}") from None
            except (OSError, ValueError, SyntaxError) as exc:
                raise ImageLoadError(f"{what} is truncated or corrupt ({image.format} data): {exc}") from None
            return _turned(image, (width, height), max_side=max_side, orient=orient)


def _quarter_turned(image: Image.Image) -> bool:
    """Whether ``image``'s EXIF orientation turns it a quarter (``ImageOps.exif_transpose`` swaps its sides)."""
    try:
        return image.getexif().get(ExifTags.Base.Orientation, 1) in _QUARTER_TURNS
    except Exception:  # a malformed EXIF block: as load_image, the picture is used unturned
        return False


def _turned(image: Image.Image, size: tuple[int, int], *, max_side: int,
            orient: bool) -> tuple[Image.Image, tuple[int, int]]:
    """``image`` turned by its EXIF orientation (``orient``), shrunk and RGB, and ``size`` (the source's
    width and height, before any reduced-scale decoding) turned the same way."""
    if not orient:
        return _shrink_convert(image, max_side=max_side), size
    try:
        quarter = _quarter_turned(image)
        oriented = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block should not stop the image from loading
        quarter, oriented = False, image.copy()
    return _shrink_convert(oriented, max_side=max_side), (size[1], size[0]) if quarter else size


def _finish(image: Image.Image, *, max_side: int, what: str,
            orient: bool = True) -> tuple[Image.Image, tuple[int, int]]:
    problem = no_pixels(image, what)
    if problem:
        raise ImageLoadError(problem)
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageLoadError(f"{what} is {width} x {height} pixels, over the limit of {MAX_PIXELS:,} pixels")
    with _own_pixel_checks():
        try:
            image.load()
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageLoadError(f"{what} could not be read: {exc}") from None
        return _turned(image, (width, height), max_side=max_side, orient=orient)


def _shrink_convert(image: Image.Image, *, max_side: int) -> Image.Image:
    """Shrink (keeping the aspect ratio), then make RGB; returns a new image, never ``image`` itself."""
    work = image
    # Palette, bilevel and colour-space modes are resized badly or not at all: convert them first.
    if work.mode in ("P", "PA", "1") or work.mode not in (
        "RGB", "RGBA", "L", "LA", "I", "F", "I;16", "I;16L", "I;16B", "I;16N", "RGBa", "La"
    ):
        work = to_rgb(work)
    if max(work.size) > max_side:
        if work is image:
            work = image.copy()
        work.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return to_rgb(work)  # always a new image
