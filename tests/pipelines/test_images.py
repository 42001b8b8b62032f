"""Tests for mmrag.pipelines.images: every test image is generated here with Pillow or as an SVG string."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import resource
import struct
import time
import tracemalloc
import warnings
import zlib
import gzip

import pytest
from PIL import Image, ImageFile, features

from mmrag.config import FetchConfig, ImageConfig
from mmrag.pipelines.images import SVG_MAX_SIDE, inspect_image, load_rgb, make_thumbnail

CFG = ImageConfig()
MAX_BYTES = FetchConfig().max_image_bytes
STATUSES = {"ok", "corrupt", "too_large", "decompression_bomb", "unsupported"}


# --------------------------------------------------------------------------- helpers


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(size=(120, 80), mode="RGB") -> Image.Image:
    img = Image.new("RGB", size)
    img.putdata([((x * 255) // size[0], (y * 255) // size[1], 128) for y in range(size[1]) for x in range(size[0])])
    return img.convert(mode)


def inspect(data: bytes, cfg: ImageConfig = CFG, **kw):
    info = inspect_image(data, cfg, max_bytes=kw.pop("max_bytes", MAX_BYTES), **kw)
    assert info.status in STATUSES
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.byte_size == len(data)
    return info


def thumb(info) -> Image.Image:
    assert info.thumbnail_png is not None
    img = Image.open(io.BytesIO(info.thumbnail_png))
    assert img.format == "PNG"
    img.load()
    return img


def animated(fmt: str, colours=((255, 0, 0), (0, 255, 0), (0, 0, 255)), **kw) -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in colours]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)


def png_with_declared_size(width: int, height: int) -> bytes:
    """A valid tiny PNG whose IHDR is patched to claim width x height (CRC fixed)."""
    data = bytearray(encode(Image.new("1", (8, 8)), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="300" height="150"><rect width="150" height="150" fill="#ff0000"/></svg>'


def svg_with_image(href: str, *, xlink: bool = True) -> bytes:
    attr = "xlink:href" if xlink else "href"
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="20" height="20">'
        f'<image x="0" y="0" width="20" height="20" {attr}="{href}"/></svg>'
    ).encode()


# --------------------------------------------------------------------------- raster formats


@pytest.mark.parametrize(
    ("fmt", "mode", "expected_format"),
    [
        ("PNG", "RGB", "PNG"),
        ("PNG", "RGBA", "PNG"),
        ("PNG", "L", "PNG"),
        ("PNG", "LA", "PNG"),
        ("PNG", "I;16", "PNG"),
        ("JPEG", "RGB", "JPEG"),
        ("JPEG", "L", "JPEG"),
        ("JPEG", "CMYK", "JPEG"),
        ("GIF", "P", "GIF"),
        ("WEBP", "RGB", "WEBP"),
        ("WEBP", "RGBA", "WEBP"),
        ("BMP", "RGB", "BMP"),
        ("TIFF", "RGB", "TIFF"),
        ("TIFF", "CMYK", "TIFF"),
        ("ICO", "RGBA", "ICO"),
    ],
)
def test_raster_formats_ok(fmt, mode, expected_format):
    img = gradient((120, 80), mode) if mode != "I;16" else Image.new("I;16", (120, 80), 40000)
    info = inspect(encode(img, fmt))
    assert info.status == "ok", info.error
    assert info.format == expected_format
    assert info.is_raster is True
    assert info.frames == 1
    assert info.error is None
    if fmt != "ICO":  # ICO stores its own sizes
        assert (info.width, info.height) == (120, 80)
    t = thumb(info)
    assert t.mode in ("RGB", "RGBA")
    assert max(t.size) <= CFG.thumbnail_px
    assert info.raster_png is None


def test_sixteen_bit_grey_is_scaled_not_clipped():
    info = inspect(encode(Image.new("I;16", (20, 20), 32768), "PNG"))
    r, g, b = thumb(info).convert("RGB").getpixel((5, 5))
    assert 110 < r < 145 and r == g == b  # mid grey, not clipped to white


def test_cmyk_jpeg_thumbnail_is_rgb_with_right_colour():
    red = Image.new("RGB", (64, 64), (255, 0, 0)).convert("CMYK")
    info = inspect(encode(red, "JPEG", quality=95))
    assert info.status == "ok" and info.format == "JPEG"
    t = thumb(info)
    assert t.mode == "RGB"
    r, g, b = t.getpixel((10, 10))
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied_to_size_and_thumbnail():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 20, 20))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, displayed rotated 90 degrees clockwise
    info = inspect(encode(img, "JPEG", exif=exif, quality=95))
    assert info.status == "ok"
    assert (info.width, info.height) == (20, 40)
    t = thumb(info)
    assert t.size == (20, 40)
    top = t.getpixel((10, 5))
    assert top[2] > 200 and top[0] < 60  # the blue (left) half is on top after rotating clockwise


def test_palette_png_with_transparency_keeps_alpha():
    img = Image.new("P", (32, 32), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    img.paste(1, (16, 0, 32, 32))
    info = inspect(encode(img, "PNG", transparency=0))
    assert info.status == "ok" and info.format == "PNG"
    t = thumb(info)
    assert t.mode == "RGBA"
    assert t.getpixel((2, 2))[3] == 0
    assert t.getpixel((30, 2)) == (255, 0, 0, 255)


def test_animated_gif_counts_frames_and_thumbnails_first_frame():
    info = inspect(animated("GIF"))
    assert info.status == "ok" and info.format == "GIF"
    assert info.frames == 3
    r, g, b, *_ = thumb(info).convert("RGB").getpixel((5, 5))
    assert r > 200 and g < 60 and b < 60  # first frame is red


def test_animated_webp_counts_frames_and_thumbnails_first_frame():
    info = inspect(animated("WEBP", lossless=True))
    assert info.status == "ok" and info.format == "WEBP"
    assert info.frames == 3
    assert thumb(info).convert("RGB").getpixel((5, 5)) == (255, 0, 0)


def test_animated_png_counts_frames():
    info = inspect(animated("PNG"))
    assert info.status == "ok" and info.format == "PNG" and info.frames == 3


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow build has no AVIF codec")
def test_avif():
    info = inspect(encode(gradient(), "AVIF"))
    assert info.status == "ok" and info.format == "AVIF"


@pytest.mark.parametrize(
    ("size", "thumb_px", "expected"),
    [((1000, 500), 64, (64, 32)), ((500, 1000), 64, (32, 64)), ((300, 300), 256, (256, 256)), ((30, 10), 256, (30, 10))],
)
def test_thumbnail_fits_box_and_never_upscales(size, thumb_px, expected):
    info = inspect(encode(gradient(size), "PNG"), ImageConfig(thumbnail_px=thumb_px))
    assert thumb(info).size == expected


def test_make_thumbnail_does_not_modify_input_and_rejects_bad_size():
    img = gradient((200, 100), "P")
    out = Image.open(io.BytesIO(make_thumbnail(img, 50)))
    assert out.size == (50, 25) and out.mode == "RGB"
    assert img.size == (200, 100) and img.mode == "P"
    with pytest.raises(ValueError):
        make_thumbnail(img, 0)


def test_jpeg_thumbnail_uses_draft_but_reports_full_size():
    info = inspect(encode(gradient((2000, 1000)), "JPEG"), ImageConfig(thumbnail_px=64))
    assert (info.width, info.height) == (2000, 1000)
    assert thumb(info).size == (64, 32)


# --------------------------------------------------------------------------- hashes and limits


def test_sha256_matches_hashlib_and_is_stable():
    data = encode(gradient(), "PNG")
    a, b = inspect(data), inspect(bytes(bytearray(data)))
    assert a.sha256 == b.sha256 == hashlib.sha256(data).hexdigest()
    assert inspect(encode(gradient((121, 80)), "PNG")).sha256 != a.sha256


def test_too_large_by_bytes_does_not_decode():
    data = encode(gradient(), "PNG")
    info = inspect(data, max_bytes=len(data) - 1)
    assert info.status == "too_large"
    assert info.format is None and info.thumbnail_png is None
    assert str(len(data)) in info.error
    assert inspect(data, max_bytes=len(data)).status == "ok"


@pytest.mark.parametrize(("side", "max_pixels"), [(8000, CFG.max_pixels), (30000, CFG.max_pixels), (30000, 10**12)])
def test_decompression_bomb_detected_from_header_without_decoding(monkeypatch, side, max_pixels):
    # 8000^2 = 64 M px: over our 50 M limit, under Pillow's; 30000^2 also trips Pillow's own check in open().
    data = png_with_declared_size(side, side)
    assert len(data) < 200

    def no_decode(self, *a, **kw):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decode)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    start = time.perf_counter()
    try:
        info = inspect(data, ImageConfig(max_pixels=max_pixels))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 2
    assert peak < 50 * 1024 * 1024
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200 * 1024
    assert info.status == "decompression_bomb"
    assert info.format == "PNG"
    if side * side <= 2 * Image.MAX_IMAGE_PIXELS:
        assert (info.width, info.height) == (side, side)
        assert "max_pixels" in info.error
    else:
        assert "DecompressionBomb" in info.error
    assert info.thumbnail_png is None


def test_bomb_threshold_follows_config():
    data = encode(gradient((100, 100)), "PNG")
    assert inspect(data, ImageConfig(max_pixels=9_999)).status == "decompression_bomb"
    assert inspect(data, ImageConfig(max_pixels=10_000)).status == "ok"


def test_pillow_global_state_is_untouched():
    before = (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS, list(warnings.filters))
    png = encode(gradient(), "PNG")
    for data in (png, png[: len(png) // 2], png_with_declared_size(30000, 30000), SVG, b"junk"):
        inspect(data)
    assert (ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS, list(warnings.filters)) == before
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "TIFF"])
def test_truncated_image_is_corrupt(fmt):
    data = encode(gradient((200, 150)), fmt)
    info = inspect(data[: len(data) // 2])
    assert info.status == "corrupt", info
    assert info.error
    assert info.thumbnail_png is None


def test_truncated_png_reports_pillow_message():
    data = encode(gradient((200, 150)), "PNG")
    info = inspect(data[: len(data) // 2])
    assert info.status == "corrupt" and info.format == "PNG"
    assert "truncated" in info.error.lower() or "eof" in info.error.lower() or "crc" in info.error.lower()


def test_damaged_header_of_known_format_is_corrupt():
    info = inspect(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    assert info.status == "corrupt"


def test_empty_body_is_corrupt():
    info = inspect(b"")
    assert info.status == "corrupt" and "empty" in info.error


def test_random_bytes_are_rejected():
    data = random.Random(42).randbytes(4096)
    info = inspect(data)
    assert info.status in ("corrupt", "unsupported")
    assert info.error and info.thumbnail_png is None


@pytest.mark.parametrize("content_type", [None, "image/jpeg", "image/svg+xml"])
def test_html_error_page_served_as_image_is_unsupported(content_type):
    html = b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>"
    info = inspect(html, content_type=content_type)
    assert info.status == "unsupported"
    assert "HTML" in info.error or "not an SVG" in info.error


def test_format_outside_allowlist_is_unsupported():
    info = inspect(encode(gradient(), "PPM"))
    assert info.status == "unsupported"


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_never_raises_on_any_prefix_or_mutation():
    rng = random.Random(7)
    samples = [encode(gradient((64, 48)), f) for f in ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")]
    samples += [animated("GIF"), SVG]
    for data in samples:
        for cut in sorted({1, 2, 8, 16, 33, len(data) // 3, len(data) - 1}):
            assert inspect(data[:cut]).status in STATUSES
        for _ in range(10):
            mutated = bytearray(data)
            for _ in range(5):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            assert inspect(bytes(mutated)).status in STATUSES


# --------------------------------------------------------------------------- SVG


@pytest.mark.parametrize(
    ("data", "content_type", "hint"),
    [
        (SVG, "image/svg+xml", None),
        (SVG, "image/svg+xml; charset=utf-8", None),
        (SVG, None, None),  # sniffed
        (b'<?xml version="1.0" encoding="UTF-8"?>\n<!-- made by hand -->\n' + SVG, "application/octet-stream", None),
        (gzip.compress(SVG), "image/svg+xml", None),  # svgz
        (gzip.compress(SVG), None, "https://example.org/a/logo.svgz?v=2"),
    ],
)
def test_svg_is_rasterised(data, content_type, hint):
    info = inspect(data, content_type=content_type, source_hint=hint)
    assert info.status == "ok", info.error
    assert info.format == "SVG" and info.is_raster is False
    assert (info.width, info.height) == (300, 150)
    raster = Image.open(io.BytesIO(info.raster_png))
    assert raster.format == "PNG" and raster.size == (300, 150)
    assert raster.convert("RGBA").getpixel((10, 10)) == (255, 0, 0, 255)
    assert raster.convert("RGBA").getpixel((290, 10))[3] == 0
    assert max(thumb(info).size) <= CFG.thumbnail_px


def test_svg_without_namespace_and_with_internal_entities():
    illustrator = (
        b'<?xml version="1.0"?>\n<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
        b'"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd" [\n<!ENTITY ns_svg "http://www.w3.org/2000/svg">\n'
        b'<!ENTITY w "40">\n]>\n<svg xmlns="&ns_svg;" width="&w;" height="20"><rect width="40" height="20" fill="red"/></svg>'
    )
    info = inspect(illustrator)
    assert info.status == "ok" and (info.width, info.height) == (40, 20) and info.raster_png
    bare = inspect(b'<svg width="10" height="10"><rect width="10" height="10" fill="red"/></svg>')
    assert bare.status == "ok" and bare.raster_png


def test_svg_not_rasterised_when_disabled():
    info = inspect(SVG, ImageConfig(rasterise_svg=False), content_type="image/svg+xml")
    assert info.status == "ok" and info.format == "SVG" and info.is_raster is False
    assert info.raster_png is None and info.thumbnail_png is None
    assert (info.width, info.height) == (300, 150)  # declared size


def test_svg_resvg_failure_keeps_ok_without_thumbnail():
    info = inspect(b'<svg xmlns="http://www.w3.org/2000/svg" width="0" height="10"/>')
    assert info.status == "ok" and info.format == "SVG"
    assert info.raster_png is None and info.thumbnail_png is None
    assert "not rasterised" in info.error


def test_malformed_svg_is_corrupt():
    info = inspect(b'<svg xmlns="http://www.w3.org/2000/svg"><rect', content_type="image/svg+xml")
    assert info.status == "corrupt" and info.format == "SVG" and "XML" in info.error


def test_svg_with_huge_declared_size_is_capped():
    huge = (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="100000" height="100000">'
        b'<rect width="100000" height="50000" fill="red"/></svg>'
    )
    start = time.perf_counter()
    info = inspect(huge)
    assert time.perf_counter() - start < 10
    assert info.status == "ok"
    assert (info.width, info.height) == (SVG_MAX_SIDE, SVG_MAX_SIDE)
    # max_pixels caps the render further
    small = inspect(huge, ImageConfig(max_pixels=10_000))
    assert small.status == "ok" and small.width * small.height <= 10_000
    wide = inspect(b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 100000 10"><rect width="9" height="9"/></svg>')
    assert wide.status == "ok" and wide.width == SVG_MAX_SIDE and wide.height >= 1


def test_svg_external_references_are_not_loaded(tmp_path, monkeypatch):
    secret = tmp_path / "secret.png"
    secret.write_bytes(encode(Image.new("RGB", (20, 20), (255, 0, 0)), "PNG"))
    monkeypatch.chdir(tmp_path)
    inline = "data:image/png;base64," + base64.b64encode(secret.read_bytes()).decode()
    nested_svg = "data:image/svg+xml;base64," + base64.b64encode(svg_with_image(str(secret))).decode()

    def centre_alpha(href: str, *, xlink: bool = True) -> int:
        info = inspect(svg_with_image(href, xlink=xlink))
        assert info.status == "ok", info.error
        return Image.open(io.BytesIO(info.raster_png)).convert("RGBA").getpixel((10, 10))[3]

    assert centre_alpha(inline) == 255  # embedded data: rasters still render
    for href in (str(secret), "secret.png", "file://" + str(secret), "http://127.0.0.1:9/x.png", nested_svg):
        assert centre_alpha(href) == 0, href
        assert centre_alpha(href, xlink=False) == 0, href


def test_svg_external_entity_is_not_resolved(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    xxe = (
        f'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file://{secret}">]>'
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><text>&x;</text></svg>'
    ).encode()
    info = inspect(xxe)
    assert info.status in ("ok", "corrupt")
    stored = b"".join(v for v in (info.raster_png, info.thumbnail_png) if v)
    assert b"TOPSECRET" not in stored and "TOPSECRET" not in (info.error or "")
    if info.status == "ok" and info.raster_png:
        # the entity is not expanded: the rendering equals that of the same SVG with an empty <text>
        empty = xxe.replace(b"<text>&x;</text>", b"<text></text>")
        assert info.raster_png == inspect(empty).raster_png


def test_html_with_inline_svg_is_not_svg():
    page = b"<!DOCTYPE html><html><body><svg width='10' height='10'></svg><p>hi</p></body></html>"
    assert inspect(page).status == "unsupported"


def test_svgz_bomb_is_bounded():
    padded = SVG.replace(b"</svg>", b"<!--" + b" " * 5_000_000 + b"--></svg>")
    info = inspect(gzip.compress(padded), content_type="image/svg+xml", max_bytes=1_000_000)
    assert info.status == "decompression_bomb"


# --------------------------------------------------------------------------- load_rgb


def test_load_rgb_raster_and_alpha_over_white():
    rgba = Image.new("RGBA", (30, 20), (0, 0, 0, 0))
    img = load_rgb(encode(rgba, "PNG"), CFG)
    assert img.mode == "RGB" and img.size == (30, 20)
    assert img.getpixel((1, 1)) == (255, 255, 255)
    cmyk = load_rgb(encode(gradient(mode="CMYK"), "JPEG"), CFG)
    assert cmyk.mode == "RGB" and cmyk.size == (120, 80)


def test_load_rgb_applies_exif_orientation_and_first_frame():
    exif = Image.Exif()
    exif[0x0112] = 8
    assert load_rgb(encode(gradient((40, 20)), "JPEG", exif=exif), CFG).size == (20, 40)
    assert load_rgb(animated("GIF"), CFG).getpixel((1, 1))[0] > 200


def test_load_rgb_svg():
    img = load_rgb(SVG, CFG, content_type="image/svg+xml")
    assert img.mode == "RGB" and img.size == (300, 150)
    assert img.getpixel((10, 10)) == (255, 0, 0) and img.getpixel((290, 10)) == (255, 255, 255)
    with pytest.raises(ValueError, match="SVG"):
        load_rgb(SVG, ImageConfig(rasterise_svg=False))


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", "corrupt"),
        (b"<html><body>oops</body></html>", "unsupported"),
        (png_with_declared_size(30000, 30000), "decompression_bomb"),
        (encode(gradient(), "PNG")[:200], "corrupt"),
    ],
)
def test_load_rgb_raises_clear_value_error(data, status):
    with pytest.raises(ValueError, match=f"^{status}: "):
        load_rgb(data, CFG)
