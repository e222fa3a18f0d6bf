"""Tests for helpers.grounding.images: sources, modes, orientation, size limits and download errors.

URL tests talk only to an HTTP server on 127.0.0.1 that this module starts and stops itself.
"""

from __future__ import annotations

import errno
import io
import os
import socket
import struct
import threading
import warnings
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from helpers.grounding.images import (
    MAX_DECODED_PIXELS,
    MAX_PIXELS,
    ImageLoadError,
    check_image,
    load_image,
    load_image_and_size,
    stored_size,
    to_rgb,
)


def _png_bytes(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **params)
    return buffer.getvalue()


def _jpeg_bytes(image: Image.Image, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **params)
    return buffer.getvalue()


def _quadrants(size: tuple[int, int] = (40, 30)) -> Image.Image:
    """An RGB image with four differently coloured quadrants (so any flip or turn is visible)."""
    w, h = size
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, w // 2 - 1, h // 2 - 1], fill=(255, 0, 0))
    draw.rectangle([w // 2, 0, w - 1, h // 2 - 1], fill=(0, 255, 0))
    draw.rectangle([0, h // 2, w // 2 - 1, h - 1], fill=(0, 0, 255))
    draw.rectangle([w // 2, h // 2, w - 1, h - 1], fill=(255, 255, 0))
    return image


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width`` x ``height`` but that holds almost no data."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + chunk(b"IEND", b""))


# --------------------------------------------------------------------------------------------- sources


def test_pil_source_returns_new_rgb_copy_and_leaves_input_untouched() -> None:
    original = _quadrants()
    before = original.tobytes()
    loaded = load_image(original)
    assert loaded is not original
    assert loaded.mode == "RGB" and loaded.size == original.size
    assert loaded.tobytes() == before
    loaded.putpixel((0, 0), (1, 2, 3))
    assert original.tobytes() == before


def test_path_str_and_bytes_give_the_same_pixels(tmp_path: Path) -> None:
    image = _quadrants()
    path = tmp_path / "q.png"
    image.save(path)
    from_path = load_image(path)
    from_str = load_image(str(path))
    from_bytes = load_image(path.read_bytes())
    from_bytearray = load_image(bytearray(path.read_bytes()))
    for loaded in (from_path, from_str, from_bytes, from_bytearray):
        assert loaded.mode == "RGB"
        assert loaded.tobytes() == image.tobytes()


# --------------------------------------------------------------------------------------------- modes


def test_rgba_is_composited_on_white() -> None:
    image = Image.new("RGBA", (3, 1))
    image.putpixel((0, 0), (200, 10, 10, 0))  # fully transparent -> white
    image.putpixel((1, 0), (200, 10, 10, 255))  # opaque -> itself
    image.putpixel((2, 0), (0, 0, 0, 128))  # half transparent black -> mid grey
    loaded = load_image(_png_bytes(image))
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 0)) == (200, 10, 10)
    assert all(abs(v - 127) <= 2 for v in loaded.getpixel((2, 0)))


def test_la_and_palette_transparency_are_composited_on_white() -> None:
    la = Image.new("LA", (2, 1))
    la.putpixel((0, 0), (30, 0))
    la.putpixel((1, 0), (30, 255))
    loaded = load_image(_png_bytes(la))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 0)) == (30, 30, 30)

    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * (254 * 3))
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    loaded = load_image(_png_bytes(palette, transparency=0))
    assert loaded.getpixel((0, 0)) == (255, 255, 255)
    assert loaded.getpixel((1, 0)) == (10, 200, 30)


def test_palette_gif_becomes_rgb() -> None:
    image = _quadrants().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    buffer = io.BytesIO()
    image.save(buffer, "GIF")
    loaded = load_image(buffer.getvalue())
    assert loaded.mode == "RGB"
    assert loaded.getpixel((0, 0)) == (255, 0, 0)
    assert loaded.getpixel((39, 29)) == (255, 255, 0)


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257 * 100, 32768, 65535]], dtype=np.uint16)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    data = _png_bytes(image)
    assert Image.open(io.BytesIO(data)).mode.startswith("I")  # really stored as 16-bit
    loaded = load_image(data)
    assert [loaded.getpixel((x, 0)) for x in range(4)] == [(0, 0, 0), (100, 100, 100), (128, 128, 128), (255, 255, 255)]


def test_sixteen_bit_tiff_big_endian_and_int32_and_float_modes() -> None:
    tiff = io.BytesIO()
    Image.fromarray(np.array([[0, 65535, 257 * 50]], dtype=np.uint16)).save(tiff, "TIFF")
    assert np.asarray(load_image(tiff.getvalue()))[0, :, 0].tolist() == [0, 255, 50]

    big_endian = Image.new("I;16B", (2, 1))
    big_endian.putpixel((0, 0), 257 * 20)
    big_endian.putpixel((1, 0), 65535)
    assert np.asarray(to_rgb(big_endian))[0, :, 0].tolist() == [20, 255]

    int32 = Image.fromarray(np.array([[-5, 257 * 10, 70000]], dtype=np.int32))
    assert int32.mode == "I"
    assert np.asarray(to_rgb(int32))[0, :, 0].tolist() == [0, 10, 255]

    unit_float = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(unit_float))[0, :, 0].tolist() == [0, 128, 255]
    # 0.8 of white is 0.8 × 255 = 204 (× 256 would give 204.8, read as 205): 0, 0.5 and 1.0 cannot tell them apart
    assert np.asarray(to_rgb(Image.fromarray(np.array([[0.8, 1.0]], dtype=np.float32))))[0, :, 0].tolist() == [204, 255]
    wide_float = Image.fromarray(np.array([[-3.0, 100.0, 300.0]], dtype=np.float32))
    assert np.asarray(to_rgb(wide_float))[0, :, 0].tolist() == [0, 100, 255]


def test_cmyk_jpeg_and_grey_jpeg_become_rgb() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    loaded = load_image(_jpeg_bytes(cmyk, quality=95))
    assert loaded.mode == "RGB"
    r, g, b = loaded.getpixel((8, 8))
    assert r > 230 and g < 25 and b < 25

    grey = load_image(_jpeg_bytes(Image.new("L", (8, 8), 90), quality=95))
    assert grey.mode == "RGB"
    assert all(abs(v - 90) <= 2 for v in grey.getpixel((4, 4)))


def test_to_rgb_rejects_non_images() -> None:
    with pytest.raises(TypeError, match="PIL.Image.Image"):
        to_rgb(np.zeros((2, 2, 3), dtype=np.uint8))  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillows_exif_transpose(orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg_bytes(_quadrants(), quality=95, exif=exif.tobytes())
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    loaded = load_image(data)
    assert loaded.size == expected.size
    assert loaded.tobytes() == expected.tobytes()
    if orientation in (5, 6, 7, 8):
        assert loaded.size == (30, 40)
    if orientation == 6:  # "rotate 90 degrees clockwise to view": the stored bottom-left comes to the top-left
        r, g, b = loaded.getpixel((2, 2))
        assert b > 200 and r < 60 and g < 60


def test_exif_orientation_false_keeps_the_stored_pixels(tmp_path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _jpeg_bytes(_quadrants(), quality=95, exif=exif.tobytes())
    stored = Image.open(io.BytesIO(data)).convert("RGB")
    path = tmp_path / "rotated.jpg"
    path.write_bytes(data)
    for source in (data, path, str(path), Image.open(io.BytesIO(data))):
        loaded = load_image(source, exif_orientation=False)
        assert loaded.size == stored.size == (40, 30)
        assert loaded.tobytes() == stored.tobytes()
    assert load_image(data).size == (30, 40)  # the default turns it


def test_orientation_and_shrinking_together() -> None:
    exif = Image.Exif()
    exif[0x0112] = 8
    data = _jpeg_bytes(_quadrants((400, 300)), quality=95, exif=exif.tobytes())
    loaded = load_image(data, max_side=100)
    assert loaded.size == (75, 100)
    r, g, b = loaded.getpixel((5, 5))  # orientation 8: the stored top-right (green) comes to the top-left
    assert g > 200 and r < 60 and b < 60


@pytest.mark.parametrize("orientation", range(1, 9))
def test_the_size_before_shrinking_is_turned_as_the_image_is(orientation: int) -> None:
    """A 1000 x 800 JPEG decoded at reduced scale and shrunk to 100 pixels a side: the size given is the
    file's own, turned as the image is (EXIF orientations 5 to 8 swap width and height)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _jpeg_bytes(_quadrants((1000, 800)), quality=90, exif=exif.tobytes())
    image, size = load_image_and_size(data, max_side=100)
    assert image.size == load_image(data, max_side=100).size
    assert max(image.size) == 100
    expected = (800, 1000) if orientation in (5, 6, 7, 8) else (1000, 800)
    assert size == expected
    assert (image.width > image.height) == (expected[0] > expected[1])
    assert load_image_and_size(data, max_side=100, exif_orientation=False)[1] == (1000, 800)


def test_the_size_before_shrinking_of_a_png_a_file_and_a_pil_image(tmp_path: Path) -> None:
    picture = _quadrants((400, 100))
    path = tmp_path / "wide.png"
    picture.save(path)
    for source in (picture, path, str(path), path.read_bytes()):
        image, size = load_image_and_size(source, max_side=200)
        assert (image.size, size) == ((200, 50), (400, 100))
    assert load_image_and_size(path)[1] == (400, 100)  # not shrunk: the same size


def test_stored_size_reads_the_header_without_turning(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "turned.jpg"
    path.write_bytes(_jpeg_bytes(_quadrants(), exif=exif.tobytes()))
    assert stored_size(path) == stored_size(str(path)) == (40, 30)
    assert load_image(path).size == (30, 40) == stored_size(path, turned=True)  # load_image turns it
    plain = tmp_path / "plain.jpg"
    plain.write_bytes(_jpeg_bytes(_quadrants()))
    assert stored_size(plain, turned=True) == stored_size(plain) == (40, 30)  # no tag: nothing to turn
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(50_000, 50_000))  # only the header is read: no pixel limit applies
    assert stored_size(huge) == (50_000, 50_000)
    with pytest.raises(ImageLoadError, match="no image file at"):
        stored_size(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="is a directory"):
        stored_size(tmp_path)
    (tmp_path / "notes.txt").write_text("hello, I am not an image")
    with pytest.raises(ImageLoadError, match=r"notes\.txt.* is not an image Pillow can read .*b'hello, I am not '"):
        stored_size(tmp_path / "notes.txt")


# --------------------------------------------------------------------------------------------- size limits


@pytest.fixture(scope="module")
def huge_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 12000 x 9000 JPEG and PNG (grey, to keep memory low) with a dark block in a known place."""
    folder = tmp_path_factory.mktemp("huge")
    image = Image.new("L", (12000, 9000), 230)
    ImageDraw.Draw(image).rectangle([6000, 4500, 11999, 8999], fill=20)  # bottom-right quarter
    files = {"jpeg": folder / "huge.jpg", "png": folder / "huge.png"}
    image.save(files["jpeg"], quality=70)
    image.save(files["png"], compress_level=1)
    del image
    return files


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_huge_images_load_shrunk_without_decompression_bomb_warning(huge_files: dict[str, Path], kind: str) -> None:
    assert 12000 * 9000 > Image.MAX_IMAGE_PIXELS  # Pillow alone would warn about this image
    limit_before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_image(huge_files[kind], max_bytes=100_000_000)
    assert Image.MAX_IMAGE_PIXELS == limit_before
    assert loaded.mode == "RGB"
    assert loaded.size == (4096, 3072)
    assert loaded.getpixel((1000, 700))[0] > 200  # top-left stays light
    assert loaded.getpixel((3500, 2700))[0] < 50  # bottom-right quarter stays dark


def test_max_side_keeps_aspect_and_small_images_keep_their_size() -> None:
    image = _quadrants((400, 100))
    assert load_image(image, max_side=200).size == (200, 50)
    assert load_image(image, max_side=400).size == (400, 100)
    assert load_image(image).size == (400, 100)


def test_absurd_pixel_count_is_refused_before_decoding() -> None:
    assert MAX_PIXELS == 40_000 * 40_000
    with pytest.raises(ImageLoadError, match=r"50000 x 50000 .*40000 x 40000"):
        load_image(_png_header_only(50_000, 50_000))


def test_full_size_decoding_beyond_limit_is_refused() -> None:
    side = 20_000
    assert side * side > MAX_DECODED_PIXELS and side * side <= MAX_PIXELS
    with pytest.raises(ImageLoadError, match=r"decoding it needs 400,000,000 pixels"):
        load_image(_png_header_only(side, side))


# --------------------------------------------------------------------------------------------- local errors


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="no image file at"):
        load_image(tmp_path / "nothing.png")
    with pytest.raises(ImageLoadError, match="is a directory, expected an image file"):
        load_image(tmp_path)


def test_file_and_bytes_over_max_bytes(tmp_path: Path) -> None:
    data = _png_bytes(Image.effect_noise((64, 64), 50).convert("RGB"))
    path = tmp_path / "noise.png"
    path.write_bytes(data)
    with pytest.raises(ImageLoadError, match=rf"{len(data):,} bytes, over the limit of max_bytes=1,000"):
        load_image(path, max_bytes=1000)
    with pytest.raises(ImageLoadError, match="over the limit of max_bytes=1,000"):
        load_image(data, max_bytes=1000)
    assert load_image(path, max_bytes=len(data)).size == (64, 64)


def test_not_an_image_empty_and_truncated(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("hello, I am not a picture")
    with pytest.raises(ImageLoadError, match=r"not an image Pillow can read .*b'hello, I am not '"):
        load_image(text)
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")
    whole = _png_bytes(Image.effect_noise((64, 64), 50))
    with pytest.raises(ImageLoadError, match="truncated or corrupt"):
        load_image(whole[: len(whole) // 2])


def test_bad_argument_types_and_values() -> None:
    with pytest.raises(TypeError, match="got int"):
        load_image(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got NoneType"):
        load_image(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_side must be a positive int, got 0"):
        load_image(_quadrants(), max_side=0)
    with pytest.raises(ValueError, match="timeout must be a number above 0, got -1"):
        load_image(_quadrants(), timeout=-1)
    with pytest.raises(TypeError, match="max_bytes must be a positive int, got float: 2.5"):
        load_image(_quadrants(), max_bytes=2.5)  # type: ignore[arg-type]
    with pytest.raises(ImageLoadError, match="unsupported URL scheme 'ftp'"):
        load_image("ftp://127.0.0.1/picture.png")


def test_image_load_error_is_a_value_error() -> None:
    assert issubclass(ImageLoadError, ValueError)


def test_an_empty_path_says_so(tmp_path: Path, monkeypatch) -> None:
    """``load_image("")`` said "'.' is a directory" (Path("") is the current folder)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ImageLoadError, match=r"^source is an empty str: expected a file path, an http\(s\) URL, image "
                                             r"bytes or a PIL image$"):
        load_image("")


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_an_image_without_pixels_is_refused_as_the_drawing_functions_refuse_it(size) -> None:
    """A 0 x 0 PIL image loaded (and ground() captioned it) while draw_entities refused it: one rule now."""
    from helpers.grounding.plotting import draw_entities

    empty = Image.new("RGB", size)
    message = rf"^the given PIL image must have at least 1 x 1 pixels, got {size[0]} x {size[1]}$"
    with pytest.raises(ImageLoadError, match=message):
        load_image(empty)
    with pytest.raises(ImageLoadError, match=message):
        load_image_and_size(empty)
    with pytest.raises(ValueError, match=rf"^image must have at least 1 x 1 pixels, got {size[0]} x {size[1]}$"):
        draw_entities(empty, [])
    assert load_image(Image.new("RGB", (1, 1))).size == (1, 1)


@pytest.mark.parametrize("image, error", [(np.zeros((4, 4, 3)), TypeError), ("photo.png", TypeError),
                                          (Image.new("RGB", (0, 3)), ValueError)])
def test_the_drawing_functions_the_article_and_the_playground_refuse_a_bad_image_in_one_message(image, error) -> None:
    """The playground's colour score said "image must be a PIL image", the drawing functions another message."""
    from helpers.course.article import draw_like_the_article
    from helpers.course.playground import in_world_score
    from helpers.grounding.plotting import draw_entities

    with pytest.raises(error) as expected:
        check_image(image)
    for use in (lambda: draw_entities(image, []), lambda: draw_like_the_article(image, []),
                lambda: in_world_score(image)):
        with pytest.raises(error) as got:
            use()
        assert str(got.value) == str(expected.value)
    assert "load_image" in str(expected.value) if error is TypeError else "1 x 1 pixels" in str(expected.value)
    picture = Image.new("RGB", (2, 3))
    assert check_image(picture) is picture


@pytest.mark.parametrize("flag", ["no", 0, 1, None, np.bool_(False)])
def test_exif_orientation_must_be_true_or_false(flag) -> None:
    """``exif_orientation="no"`` is truthy: it turned the image."""
    with pytest.raises(TypeError, match=rf"^exif_orientation must be True or False, got {type(flag).__name__}: "):
        load_image(_quadrants(), exif_orientation=flag)
    assert load_image(_quadrants(), exif_orientation=False).size == (40, 30)


def test_stored_size_of_an_empty_file_says_it_is_empty(tmp_path: Path) -> None:
    """It said the 0 bytes were "not an image Pillow can read"; load_image says "empty", and now both do."""
    (tmp_path / "zero.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"^file '.*zero\.png' is empty \(0 bytes\), expected an image file$"):
        stored_size(tmp_path / "zero.png")
    with pytest.raises(ImageLoadError, match=r"zero\.png is empty \(0 bytes\), expected an image file$"):
        load_image(tmp_path / "zero.png")


# --------------------------------------------------------------------------------------------- URLs


class _Server:
    """A small HTTP server on 127.0.0.1 that serves fixed answers by path and stops on its own."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.png = _png_bytes(_quadrants())
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # keep test output clean
                pass

            def _send(self, status: int, content_type: str | None, body: bytes, length: bool = True) -> None:
                self.send_response(status)
                if content_type is not None:
                    self.send_header("Content-Type", content_type)
                if length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                try:
                    self._route()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as some tests expect

            def _route(self) -> None:
                path = self.path
                if path == "/picture.png":
                    self._send(200, "image/png", outer.png)
                elif path == "/octet":
                    self._send(200, "application/octet-stream", outer.png)
                elif path == "/untyped":
                    self._send(200, None, outer.png)
                elif path == "/moved":
                    self.send_response(302)
                    self.send_header("Location", "/picture.png")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif path == "/missing.png":
                    self._send(404, "text/plain", b"not here")
                elif path == "/broken":
                    self._send(500, "text/plain", b"oops")
                elif path == "/page":
                    self._send(200, "text/html; charset=utf-8", b"<!doctype html><html><body>hi</body></html>")
                elif path == "/fake.png":
                    self._send(200, "image/png", b"this is not a png at all")
                elif path == "/slow":
                    outer.stop.wait(3.0)  # answers long after the client's timeout
                    self._send(200, "image/png", outer.png)
                elif path == "/trickle":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    for byte in outer.png[:60]:  # a byte every 0.1 s: each read is quick, the whole is slow
                        if outer.stop.wait(0.1):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                elif path == "/announced-big":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(50_000_000))
                    self.end_headers()
                elif path == "/endless":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    block = b"\x00" * 65536
                    for _ in range(800):  # up to 50 MB, unless the client hangs up first
                        if outer.stop.is_set():
                            return
                        self.wfile.write(block)
                else:
                    self._send(404, "text/plain", b"unknown")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.deadline = threading.Timer(120.0, self.close)  # never outlives a stuck test run
        self.deadline.daemon = True

    def start(self) -> None:
        self.thread.start()
        self.deadline.start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server()
    srv.start()
    try:
        yield srv
    finally:
        srv.deadline.cancel()
        srv.close()
        srv.thread.join(timeout=5)


def test_url_image_loads(server: _Server) -> None:
    expected = _quadrants().tobytes()
    for path in ("/picture.png", "/octet", "/untyped", "/moved"):
        loaded = load_image(server.base + path, timeout=5)
        assert loaded.mode == "RGB" and loaded.tobytes() == expected, path


def test_url_http_error_status(server: _Server) -> None:
    with pytest.raises(ImageLoadError, match=r"HTTP 404 Not Found; expected HTTP 200 with an image"):
        load_image(server.base + "/missing.png", timeout=5)
    with pytest.raises(ImageLoadError, match="HTTP 500"):
        load_image(server.base + "/broken", timeout=5)


def test_url_returning_html_is_refused(server: _Server) -> None:
    with pytest.raises(ImageLoadError, match=r"type 'text/html', expected an image \(image/\*\)"):
        load_image(server.base + "/page", timeout=5)


def test_url_with_image_type_but_not_image_bytes(server: _Server) -> None:
    with pytest.raises(ImageLoadError, match=r"download from .*/fake.png is not an image"):
        load_image(server.base + "/fake.png", timeout=5)


def test_url_slow_server_times_out(server: _Server) -> None:
    # without the timeout the download would succeed once the server answers: the error is the check
    with pytest.raises(ImageLoadError, match=r"timed out after 0.3 s"):
        load_image(server.base + "/slow", timeout=0.3)


def test_url_trickling_server_times_out_in_total(server: _Server) -> None:
    # each chunk comes within the timeout, so only a limit on the whole download raises here
    with pytest.raises(ImageLoadError, match=r"timed out after 0.5 s"):
        load_image(server.base + "/trickle", timeout=0.5)


def test_url_over_max_bytes(server: _Server) -> None:
    with pytest.raises(ImageLoadError, match=r"announces 50,000,000 bytes, over the limit of max_bytes=100,000"):
        load_image(server.base + "/announced-big", timeout=5, max_bytes=100_000)
    with pytest.raises(ImageLoadError, match=r"more than max_bytes=100,000 bytes; stopped reading at the cap"):
        load_image(server.base + "/endless", timeout=5, max_bytes=100_000)  # the server never stops sending


def test_url_connection_refused() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(ImageLoadError) as refused:
        load_image(f"http://127.0.0.1:{port}/x.png", timeout=2)
    # the reason, without urllib3's wrapping (pool, retries, connection object), as the README quotes it
    assert str(refused.value) == (f"could not connect to http://127.0.0.1:{port}/x.png: "
                                  "Failed to establish a new connection: "
                                  f"[Errno {errno.ECONNREFUSED}] {os.strerror(errno.ECONNREFUSED)}")
