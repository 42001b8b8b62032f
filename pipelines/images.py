"""Image verification, thumbnails and RGB loading: bytes in, records out.

Pure functions, no I/O beyond the bytes the caller passes in, no change to Pillow's global
state (``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES`` and the ``warnings``
filters are read, never written).

Raster formats go through Pillow, restricted to an allowlist (:data:`RASTER_FORMATS`), so
exotic plugins (EPS, which shells out to Ghostscript, PSD, ...) never run on fetched bytes.
SVG goes through resvg-py after a sanitising pass:

* resvg fetches nothing over the network (it has no HTTP client), but it *does* read local
  files named by ``<image href>``/``<feImage href>`` (absolute or cwd-relative paths, and
  nested SVGs in ``data:`` URIs). A fetched SVG could therefore embed a local file into our
  raster, or hang us on ``/dev/zero``. :func:`_parse_svg` removes every ``href`` that is not
  an in-document ``#fragment`` or a ``data:image/(png|jpeg|gif|webp)`` URI before rendering.
* resvg renders at the SVG's declared size; ``width="100000"`` would allocate 40 GB. The render
  is always given an explicit width and height box (resvg fits the drawing inside it), capped by
  ``cfg.max_pixels`` and :data:`SVG_MAX_SIDE` / :data:`SVG_MAX_RENDER_PIXELS`.
"""

from __future__ import annotations

import io
import math
import re
import xml.etree.ElementTree as ET
import zlib
from dataclasses import dataclass

import resvg_py
from PIL import Image, ImageOps, UnidentifiedImageError

from mmrag.config import ImageConfig
from mmrag.records import ImageInfo, sha256_hex

__all__ = [
    "RASTER_FORMATS",
    "SVG_MAX_RENDER_PIXELS",
    "SVG_MAX_SIDE",
    "inspect_image",
    "load_rgb",
    "make_thumbnail",
]

#: Pillow formats we decode (JPEG includes multi-picture JPEGs, which Pillow reports as ``MPO``;
#: AVIF only when this Pillow build has it). Anything else Pillow might know is ``unsupported``.
RASTER_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "WEBP", "AVIF", "BMP", "TIFF", "ICO")
#: Formats whose extra frames are animation frames (APNG counts as PNG).
_ANIMATED_FORMATS = frozenset({"GIF", "WEBP", "PNG", "AVIF"})

#: Longest side of an SVG rasterisation, whatever the SVG declares.
SVG_MAX_SIDE = 2048
#: Pixel budget of an SVG rasterisation (further capped by ``ImageConfig.max_pixels``).
SVG_MAX_RENDER_PIXELS = 2048 * 2048
#: Render box side for SVGs whose intrinsic size cannot be read from the root element.
_SVG_FALLBACK_SIDE = 1024
#: Decompressed size limit for ``.svgz`` when the caller gives no ``max_bytes``.
_SVGZ_DEFAULT_MAX_BYTES = 32 * 1024 * 1024

_SVG_NS = "http://www.w3.org/2000/svg"
_XLINK_HREF = "{http://www.w3.org/1999/xlink}href"
_SAFE_DATA_URI = re.compile(r"^data:image/(png|jpe?g|gif|webp)[;,]", re.IGNORECASE)
# CSS absolute units at 96 dpi, as usvg resolves them; em/ex against the 16 px default font.
_UNIT_PX = {"": 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "mm": 96 / 25.4, "cm": 96 / 2.54, "in": 96.0, "em": 16.0, "ex": 8.0}
_LENGTH = re.compile(r"^\s*([+]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([a-zA-Z%]*)\s*$")

# Magic numbers of the formats we accept: bytes that start like one of these but that Pillow
# cannot open are ``corrupt`` rather than ``unsupported``.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (8, b"WEBP", "WEBP"),
    (4, b"ftypavif", "AVIF"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"\x00\x00\x01\x00", "ICO"),
)


class _Rejected(Exception):
    """Internal: the bytes cannot be used; carries the ImageInfo status and what is known."""

    def __init__(self, status: str, message: str, *, fmt: str | None = None, size: tuple[int, int] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.fmt = fmt
        self.size = size


@dataclass
class _Decoded:
    image: Image.Image | None  # first frame, pixels loaded; None for an SVG left unrasterised
    fmt: str
    width: int | None
    height: int | None
    frames: int = 1
    is_raster: bool = True
    raster_png: bytes | None = None
    note: str | None = None


# --------------------------------------------------------------------------- public API


def inspect_image(
    data: bytes,
    cfg: ImageConfig,
    *,
    max_bytes: int,
    content_type: str | None = None,
    source_hint: str | None = None,
) -> ImageInfo:
    """Verify one downloaded image and describe it; never raises on bad input.

    ``sha256`` and ``byte_size`` are always set. ``status`` is one of:

    * ``ok``: decoded; ``format`` (Pillow's name, or ``"SVG"``), ``width``/``height`` (as displayed,
      i.e. after EXIF orientation), ``frames`` (animation frames of GIF/WebP/APNG/AVIF, else 1) and
      a PNG ``thumbnail_png`` (first frame) are filled. SVGs have ``is_raster=False``; when
      ``cfg.rasterise_svg`` they also get ``raster_png`` and width/height of that raster (capped,
      see module docs). An SVG that resvg cannot render stays ``ok`` with no thumbnail and the
      reason in ``error``.
    * ``too_large``: ``len(data) > max_bytes``; nothing is decoded.
    * ``decompression_bomb``: declared width*height over ``cfg.max_pixels`` (checked from the header,
      before any pixel is decoded; ``width``/``height`` are the declared ones), Pillow's own bomb
      error, or an ``.svgz`` inflating past ``max_bytes``.
    * ``corrupt``: empty body, a recognised format that fails to decode (truncated, bad CRC), or
      malformed SVG XML; ``error`` holds the decoder's message.
    * ``unsupported``: not an image we decode (HTML error page, text, random bytes, formats outside
      :data:`RASTER_FORMATS`).

    ``content_type`` (the HTTP header) and ``source_hint`` (URL or file name) only help to
    recognise SVG; raster formats are always detected from the bytes.
    """
    data = bytes(data)
    sha = sha256_hex(data)
    size = len(data)
    if size > max_bytes:
        return ImageInfo(status="too_large", sha256=sha, byte_size=size, error=f"{size} bytes exceeds the {max_bytes}-byte limit")
    try:
        decoded = _decode(
            data,
            cfg,
            content_type=content_type,
            source_hint=source_hint,
            max_bytes=max_bytes,
            draft_px=cfg.thumbnail_px,
        )
    except _Rejected as rej:
        width, height = rej.size if rej.size else (None, None)
        return ImageInfo(
            status=rej.status, sha256=sha, byte_size=size, format=rej.fmt,
            width=width, height=height, is_raster=rej.fmt != "SVG", error=rej.message,
        )
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises on bad input"
        return ImageInfo(status="corrupt", sha256=sha, byte_size=size, error=_describe(exc))

    thumbnail = None
    note = decoded.note
    if decoded.image is not None:
        try:
            thumbnail = make_thumbnail(decoded.image, cfg.thumbnail_px)
        except Exception as exc:  # noqa: BLE001 - a decoded image without thumbnail is still usable
            note = f"thumbnail failed: {_describe(exc)}"
    return ImageInfo(
        status="ok",
        sha256=sha,
        byte_size=size,
        format=decoded.fmt,
        width=decoded.width,
        height=decoded.height,
        is_raster=decoded.is_raster,
        frames=decoded.frames,
        error=note,
        thumbnail_png=thumbnail,
        raster_png=decoded.raster_png,
    )


def make_thumbnail(img: Image.Image, size_px: int) -> bytes:
    """PNG bytes of ``img`` fitted inside ``size_px`` x ``size_px`` (aspect kept, never upscaled).

    EXIF orientation is applied; palette, grey, CMYK, YCbCr, LAB and 16-bit images become RGB,
    or RGBA when they carry transparency (alpha channel, palette or colour-key ``tRNS``).
    For a multi-frame image the current frame is used. ``img`` is not modified.
    """
    if size_px < 1:
        raise ValueError(f"thumbnail size must be at least 1 pixel, got {size_px}")
    thumb = _to_rgb_or_rgba(ImageOps.exif_transpose(img))
    if thumb is img:
        thumb = img.copy()
    thumb.thumbnail((size_px, size_px), Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = io.BytesIO()
    thumb.save(out, format="PNG")
    return out.getvalue()


def load_rgb(
    data: bytes,
    cfg: ImageConfig,
    *,
    content_type: str | None = None,
    max_bytes: int | None = None,
) -> Image.Image:
    """Decode ``data`` into a full-size RGB image (first frame, EXIF orientation applied).

    Transparent pixels are composited over white. SVG is rasterised like :func:`inspect_image`
    does (raises when ``cfg.rasterise_svg`` is off); an :attr:`ImageInfo.raster_png` can also be
    passed directly. Raises :class:`ValueError` with a one-line reason (the would-be
    :func:`inspect_image` status first, e.g. ``"corrupt: image file is truncated"``) for anything
    that cannot be decoded, including images over ``cfg.max_pixels``.
    """
    data = bytes(data)
    if max_bytes is not None and len(data) > max_bytes:
        raise ValueError(f"too_large: {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        decoded = _decode(data, cfg, content_type=content_type, source_hint=None, max_bytes=max_bytes, draft_px=None)
    except _Rejected as rej:
        raise ValueError(f"{rej.status}: {rej.message}") from None
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"corrupt: {_describe(exc)}") from exc
    if decoded.image is None:
        raise ValueError(f"unsupported: SVG could not be rasterised ({decoded.note or 'rasterise_svg is off'})")
    img = _to_rgb_or_rgba(ImageOps.exif_transpose(decoded.image))
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")


# --------------------------------------------------------------------------- decoding


def _decode(
    data: bytes,
    cfg: ImageConfig,
    *,
    content_type: str | None,
    source_hint: str | None,
    max_bytes: int | None,
    draft_px: int | None,
) -> _Decoded:
    """Decode raster or SVG bytes; raises :class:`_Rejected` with a status for unusable input."""
    if not data:
        raise _Rejected("corrupt", "empty body (0 bytes)")
    svg = _svg_document(data, content_type, source_hint, max_bytes or _SVGZ_DEFAULT_MAX_BYTES)
    if svg is not None:
        return _decode_svg(svg, cfg)
    return _decode_raster(data, cfg.max_pixels, draft_px=draft_px)


def _decode_raster(data: bytes, max_pixels: int, *, draft_px: int | None) -> _Decoded:
    """Open with Pillow, check the header size against ``max_pixels``, verify, then load frame 0."""
    img = _open(data)
    fmt = img.format or "unknown"
    width, height = img.size
    if width * height > max_pixels:
        raise _Rejected(
            "decompression_bomb",
            f"{width}x{height} = {width * height} pixels exceeds max_pixels={max_pixels}",
            fmt=fmt,
            size=(width, height),
        )
    frames = 1
    if fmt in _ANIMATED_FORMATS:
        try:
            frames = max(1, int(getattr(img, "n_frames", 1)))
        except Exception as exc:  # noqa: BLE001 - frame walk hit broken data
            raise _Rejected("corrupt", _describe(exc), fmt=fmt, size=(width, height)) from None
    try:
        img.verify()  # structural check (PNG chunk CRCs, ...); the object is unusable afterwards
    except Exception as exc:  # noqa: BLE001
        raise _Rejected("corrupt", _describe(exc), fmt=fmt, size=(width, height)) from None

    img = _open(data)
    if draft_px and fmt == "JPEG":
        # DCT-domain downscale: decodes every byte (so truncation is still caught), much faster.
        img.draft(None, (draft_px, draft_px))
    try:
        img.load()
    except Exception as exc:  # noqa: BLE001 - truncated / broken streams
        raise _Rejected("corrupt", _describe(exc), fmt=fmt, size=(width, height)) from None
    if _exif_orientation(img) in (5, 6, 7, 8):
        width, height = height, width
    return _Decoded(image=img, fmt=fmt, width=width, height=height, frames=frames)


def _open(data: bytes) -> Image.Image:
    """``Image.open`` limited to :data:`RASTER_FORMATS`, with failures mapped to statuses."""
    Image.init()  # loads Pillow's plugins once (idempotent), so we can drop any this build lacks
    formats = [name for name in RASTER_FORMATS if name in Image.OPEN]
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own limit (the warning arrives as an exception only under "-W error" filters).
        raise _Rejected("decompression_bomb", _describe(exc), fmt=_magic_format(data)) from None
    except Exception as exc:  # noqa: BLE001
        raise _Rejected("corrupt", _describe(exc), fmt=_magic_format(data)) from None


def _unidentified(data: bytes) -> _Rejected:
    """Why Pillow found no format: a damaged known format, markup, or something else."""
    fmt = _magic_format(data)
    if fmt:
        return _Rejected("corrupt", f"starts like {fmt} but cannot be decoded (damaged header)", fmt=fmt)
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in head:
        return _Rejected("unsupported", "not an image: the body is an HTML page (an error or login page?)")
    if head.startswith((b"<", b"{", b"[")):
        return _Rejected("unsupported", "not an image: the body is text/markup, not a known image format")
    return _Rejected("unsupported", f"not a supported image format (supported: {', '.join(RASTER_FORMATS)}, SVG)")


def _magic_format(data: bytes) -> str | None:
    for offset, magic, name in _MAGIC:
        if data[offset : offset + len(magic)] == magic and (name != "WEBP" or data[:4] == b"RIFF"):
            return name
    return None


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - broken EXIF must not fail an otherwise good image
        return 1


def _to_rgb_or_rgba(img: Image.Image) -> Image.Image:
    """RGB, or RGBA when the image carries any transparency; 16-bit/float greys scaled to 8 bits."""
    mode = img.mode
    if mode in ("RGB", "RGBA"):
        if mode == "RGB" and img.has_transparency_data:  # colour-key tRNS
            return img.convert("RGBA")
        return img
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _scale_to_l(img).convert("RGB")
    if mode in ("LA", "PA", "La", "RGBa") or img.has_transparency_data:
        return img.convert("RGBA")
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


def _scale_to_l(img: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float grey to 8-bit ``L`` (plain conversion would clip to white)."""
    wide = img.convert("F")
    lo, hi = wide.getextrema()
    if lo >= 0 and hi <= 255:
        scale, offset = 1.0, 0.0
    elif lo >= 0 and hi <= 65535:
        scale, offset = 1 / 257, 0.0
    else:
        scale = 255 / (hi - lo) if hi > lo else 1.0
        offset = -lo * scale
    return wide.point(lambda v: v * scale + offset).convert("L")


# --------------------------------------------------------------------------- SVG


def _svg_document(data: bytes, content_type: str | None, source_hint: str | None, max_bytes: int) -> bytes | None:
    """The SVG document in ``data`` (gunzipped if ``.svgz``), or None when it is not SVG."""
    ctype = (content_type or "").split(";", 1)[0].strip().lower()
    hint = (source_hint or "").split("?", 1)[0].split("#", 1)[0].lower()
    declared = ctype == "image/svg+xml" or hint.endswith((".svg", ".svgz"))
    body = data
    if body[:2] == b"\x1f\x8b":
        if not (declared or ctype in ("application/gzip", "application/x-gzip")):
            return None
        body = _gunzip(body, max_bytes)
    head = body[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg"):
        return body
    if head.startswith((b"<?xml", b"<!--", b"<!doctype")) and b"<html" not in head:
        if b"<svg" in head or b"<!doctype svg" in head or declared:
            return body
    return None


def _gunzip(data: bytes, max_bytes: int) -> bytes:
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, max_bytes)
    except zlib.error as exc:
        raise _Rejected("corrupt", f"broken gzip (svgz) stream: {exc}", fmt="SVG") from None
    if inflater.unconsumed_tail:
        raise _Rejected("decompression_bomb", f"svgz inflates past {max_bytes} bytes", fmt="SVG")
    return out


def _decode_svg(document: bytes, cfg: ImageConfig) -> _Decoded:
    svg_text, intrinsic = _parse_svg(document)
    declared = (max(1, round(intrinsic[0])), max(1, round(intrinsic[1]))) if intrinsic else (None, None)
    if not cfg.rasterise_svg:
        return _Decoded(image=None, fmt="SVG", width=declared[0], height=declared[1], is_raster=False)
    box = _svg_render_box(intrinsic, min(cfg.max_pixels, SVG_MAX_RENDER_PIXELS))
    try:
        png = bytes(resvg_py.svg_to_bytes(svg_string=svg_text, width=box[0], height=box[1]))
        raster = _decode_raster(png, cfg.max_pixels, draft_px=None)
    except Exception as exc:  # noqa: BLE001 - resvg raises ValueError on what it cannot render
        reason = exc.message if isinstance(exc, _Rejected) else _describe(exc)
        return _Decoded(
            image=None, fmt="SVG", width=declared[0], height=declared[1], is_raster=False,
            note=f"SVG not rasterised: {reason}",
        )
    return _Decoded(
        image=raster.image, fmt="SVG", width=raster.width, height=raster.height, is_raster=False, raster_png=png
    )


def _parse_svg(document: bytes) -> tuple[str, tuple[float, float] | None]:
    """Parse, check the root is ``<svg>``, drop external references; return markup and intrinsic size.

    ``xml.etree`` never loads external entities or DTDs, and its expat guards against entity
    expansion bombs; internal entities (Illustrator exports use them) are expanded here, so the
    serialised markup handed to resvg has no DOCTYPE left.
    """
    try:
        root = ET.fromstring(document)
    except ET.ParseError as exc:
        raise _Rejected("corrupt", f"invalid SVG XML: {exc}", fmt="SVG") from None
    except ValueError as exc:  # e.g. an unknown encoding declaration
        raise _Rejected("corrupt", f"invalid SVG XML: {exc}", fmt="SVG") from None
    local = root.tag.rsplit("}", 1)[-1] if isinstance(root.tag, str) else ""
    if local != "svg" or not (root.tag == "svg" or root.tag == f"{{{_SVG_NS}}}svg"):
        raise _Rejected("unsupported", f"not an SVG document: root element is <{local or root.tag}>")
    for element in root.iter():
        for attr in ("href", _XLINK_HREF):
            value = element.get(attr)
            if value is not None and not _is_local_reference(value):
                del element.attrib[attr]
    return ET.tostring(root, encoding="unicode"), _intrinsic_size(root)


def _is_local_reference(href: str) -> bool:
    """True for ``#id`` and inline raster ``data:`` URIs: the only references resvg may resolve.

    ``data:image/svg+xml`` (and untyped ``data:``) are refused because resvg parses them as nested
    SVGs whose own ``href`` would escape this sanitising pass.
    """
    href = href.strip()
    return href.startswith("#") or bool(_SAFE_DATA_URI.match(href))


def _intrinsic_size(root: ET.Element) -> tuple[float, float] | None:
    """Width and height in px from the root's ``width``/``height``, falling back to ``viewBox``."""
    view_box = None
    raw_vb = root.get("viewBox")
    if raw_vb:
        parts = re.split(r"[\s,]+", raw_vb.strip())
        try:
            vb = [float(p) for p in parts]
            if len(vb) == 4 and vb[2] > 0 and vb[3] > 0 and all(math.isfinite(v) for v in vb):
                view_box = (vb[2], vb[3])
        except ValueError:
            pass

    def length(name: str, index: int) -> float | None:
        raw = root.get(name)
        if raw is None or raw.strip() in ("", "auto") or raw.strip().endswith("%"):
            return view_box[index] if view_box else None
        match = _LENGTH.match(raw)
        if not match or match.group(2).lower() not in _UNIT_PX:
            return None
        value = float(match.group(1)) * _UNIT_PX[match.group(2).lower()]
        return value if math.isfinite(value) and value > 0 else None

    width, height = length("width", 0), length("height", 1)
    if width is None or height is None:
        return None
    return width, height


def _svg_render_box(intrinsic: tuple[float, float] | None, pixel_cap: int) -> tuple[int, int]:
    """Width/height box passed to resvg; resvg fits the drawing inside, so the raster never exceeds it."""
    side_cap = max(1, min(SVG_MAX_SIDE, math.isqrt(max(1, pixel_cap))))
    if intrinsic is None:
        side = min(_SVG_FALLBACK_SIDE, side_cap)
        return side, side
    width, height = intrinsic
    scale = min(1.0, math.sqrt(pixel_cap / (width * height)), SVG_MAX_SIDE / max(width, height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def _describe(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__
