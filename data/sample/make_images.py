"""Generate every raster image of the mmrag sample corpus into ``data/sample/images/``.

Run from the repository root::

    .venv/bin/python data/sample/make_images.py

The output is deterministic: all randomness comes from fixed seeds, no timestamps or
software-version strings are written into file metadata, and re-running with the same
Pillow/matplotlib/numpy versions gives byte-identical files. (Different library versions may
rasterise or compress slightly differently; the pictures stay the same.)

``images/sliding-window.svg`` is hand-written and is not produced here. The article
``vector-indexes-ivf-pq-vs-hnsw.html`` refers to ``images/missing-figure.png`` on purpose;
this script never creates it.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter, ImageFont  # noqa: E402

OUT = Path(__file__).resolve().parent / "images"
FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
PNG_META = {"Software": None}  # keep matplotlib's version string out of the files

plt.rcParams.update(
    {
        "font.family": "DejaVu Sans",
        "font.size": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "svg.hashsalt": "mmrag",
    }
)


def font(size: int, mono: bool = False, bold: bool = False) -> ImageFont.FreeTypeFont:
    name = "DejaVuSansMono" if mono else "DejaVuSans"
    if bold:
        name += "-Bold"
    return ImageFont.truetype(str(FONT_DIR / f"{name}.ttf"), size)


def save_fig(fig: plt.Figure, name: str, dpi: int = 100) -> None:
    fig.savefig(OUT / name, dpi=dpi, metadata=PNG_META)
    plt.close(fig)


def fig_to_image(fig: plt.Figure, dpi: int) -> Image.Image:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata=PNG_META)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def save_png(im: Image.Image, name: str) -> None:
    im.save(OUT / name, format="PNG", optimize=True)


# --- contrastive-image-text-embeddings -------------------------------------------------------


def similarity_matrix() -> None:
    """8x8 image-caption cosine similarities of one batch, matched pairs on the diagonal."""
    rng = np.random.default_rng(7)
    n = 8
    sims = rng.uniform(0.05, 0.32, size=(n, n))
    sims[np.diag_indices(n)] = rng.uniform(0.68, 0.86, size=n)
    sims[2, 5] = 0.52  # a hard negative: caption 6 also fits image 3 fairly well
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(sims, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(n), [f"T{i + 1}" for i in range(n)])
    ax.set_yticks(range(n), [f"I{i + 1}" for i in range(n)])
    ax.set_xlabel("caption embedding")
    ax.set_ylabel("image embedding")
    ax.set_title("Cosine similarity within one batch (N = 8)")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{sims[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if sims[i, j] > 0.5 else "white")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    save_fig(fig, "similarity-matrix.png")


def embedding_space() -> None:
    """2-D projection of image and text embeddings showing the modality gap; three sizes."""
    rng = np.random.default_rng(11)
    img = rng.normal([-1.2, 0.4], 0.45, size=(120, 2))
    txt = rng.normal([1.1, -0.2], 0.45, size=(120, 2))

    def draw() -> plt.Figure:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.scatter(img[:, 0], img[:, 1], s=12, c="#1f77b4", label="image embeddings", alpha=0.8)
        ax.scatter(txt[:, 0], txt[:, 1], s=12, c="#ff7f0e", marker="^", label="text embeddings", alpha=0.8)
        ax.annotate("", xy=(1.1, -0.2), xytext=(-1.2, 0.4),
                    arrowprops={"arrowstyle": "<->", "color": "#444444", "lw": 1.5})
        ax.text(-0.05, 0.75, "modality gap", ha="center", fontsize=10, color="#444444")
        ax.set_title("Image and text embeddings, 2-D projection (synthetic)")
        ax.set_xlabel("component 1")
        ax.set_ylabel("component 2")
        ax.legend(loc="lower left", frameon=False)
        fig.tight_layout()
        return fig

    # 6 in wide: dpi 80 -> 480 px, dpi 200 -> 1200 px, dpi 133.33 -> 800 px
    for dpi, name in ((80, "embedding-space-small.webp"), (200, "embedding-space-large.webp")):
        fig = draw()
        im = fig_to_image(fig, dpi)
        plt.close(fig)
        im.save(OUT / name, format="WEBP", quality=80, method=6)
    fig = draw()
    im = fig_to_image(fig, 400 / 3)
    plt.close(fig)
    im = im.resize((800, round(im.height * 800 / im.width)), Image.Resampling.LANCZOS)
    save_png(im.quantize(64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE), "embedding-space.png")


def street_scene() -> None:
    """A synthetic photo-like scene: sky gradient, sun, hills, houses, road, sensor noise."""
    w, h = 800, 500
    y = np.linspace(0, 1, h)[:, None]
    sky = np.empty((h, w, 3))
    sky[..., 0] = 90 + 130 * y
    sky[..., 1] = 140 + 90 * y
    sky[..., 2] = 215 + 25 * y
    im = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    d.ellipse((600, 60, 680, 140), fill=(255, 236, 170))
    xs = np.arange(w)
    far = 300 + 25 * np.sin(xs / 90.0) + 12 * np.sin(xs / 23.0 + 1.0)
    near = 340 + 30 * np.sin(xs / 130.0 + 2.0)
    d.polygon([(0, h)] + [(int(x), int(v)) for x, v in zip(xs, far)] + [(w, h)], fill=(96, 128, 104))
    d.polygon([(0, h)] + [(int(x), int(v)) for x, v in zip(xs, near)] + [(w, h)], fill=(70, 118, 62))
    d.polygon([(330, h), (470, h), (410, 345), (390, 345)], fill=(92, 92, 96))
    for k in range(6):
        yy = 360 + k * 24
        d.line((400, yy, 400, yy + 10), fill=(235, 235, 220), width=3)
    houses = [(50, 320, 150, (196, 84, 70)), (225, 335, 90, (226, 200, 150)), (520, 330, 150, (170, 70, 60))]
    for x0, y0, bw, color in houses:
        bh = int(bw * 0.6)
        d.rectangle((x0, y0, x0 + bw, y0 + bh), fill=color)
        d.polygon([(x0 - 10, y0), (x0 + bw // 2, y0 - bw // 3), (x0 + bw + 10, y0)], fill=(80, 50, 45))
        for wx in range(x0 + 12, x0 + bw - 20, 34):
            d.rectangle((wx, y0 + 14, wx + 18, y0 + 32), fill=(250, 240, 190))
        d.rectangle((x0 + bw // 2 - 10, y0 + bh - 36, x0 + bw // 2 + 10, y0 + bh), fill=(60, 40, 30))
    rng = np.random.default_rng(3)
    for _ in range(14):
        tx = int(rng.integers(20, 780))
        ty = int(rng.integers(395, 470))
        r = int(rng.integers(14, 26))
        d.rectangle((tx - 3, ty, tx + 3, ty + r), fill=(80, 56, 40))
        d.ellipse((tx - r, ty - 2 * r, tx + r, ty + 4), fill=(40 + int(rng.integers(0, 30)), 96, 44))
    im = im.filter(ImageFilter.GaussianBlur(0.8))
    arr = np.asarray(im).astype(np.int16) + rng.normal(0, 5, size=(h, w, 1)).astype(np.int16)
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    im.save(OUT / "street-scene.jpg", format="JPEG", quality=82, optimize=True)


# --- chunking-strategies-for-rag ---------------------------------------------------------------


def chunk_size_recall() -> None:
    sizes = [128, 256, 512, 1024, 2048]
    no_overlap = [0.58, 0.66, 0.71, 0.69, 0.61]
    overlap = [0.63, 0.70, 0.74, 0.71, 0.62]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(sizes, no_overlap, "o-", label="no overlap")
    ax.plot(sizes, overlap, "s--", label="12.5% overlap")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_ylim(0.5, 0.8)
    ax.set_xlabel("chunk size (tokens)")
    ax.set_ylabel("Recall@5")
    ax.set_title("Recall@5 against chunk size (synthetic benchmark)")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_fig(fig, "chunk-size-recall.png")


def divider() -> None:
    """A decorative wave rule (used without any alt text)."""
    w, h = 600, 24
    im = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(im)
    pts = [(x, int(h / 2 + 6 * math.sin(x / 12.0))) for x in range(w)]
    d.line(pts, fill=(150, 170, 200), width=2)
    save_png(im.quantize(8, dither=Image.Dither.NONE), "divider.png")


def pipeline_overview() -> None:
    """Boxes-and-arrows diagram of the indexing and query path (shared by two articles)."""
    w, h = 900, 260
    im = Image.new("RGB", (w, h), (250, 250, 247))
    d = ImageDraw.Draw(im)
    f, fs = font(14, bold=True), font(12)
    d.text((20, 14), "Indexing path", font=fs, fill=(90, 90, 90))
    d.text((20, 144), "Query path", font=fs, fill=(90, 90, 90))
    top = ["Fetch", "Parse", "Chunk", "Embed", "Store"]
    bottom = ["Query", "Embed", "Retrieve top-100", "Rerank top-10", "Answer"]
    bw, gap = 160, 20
    for row, (labels, y, color) in enumerate(((top, 40, (214, 230, 245)), (bottom, 170, (246, 226, 206)))):
        for i, label in enumerate(labels):
            x = 20 + i * (bw + gap)
            d.rounded_rectangle((x, y, x + bw, y + 60), radius=10, fill=color, outline=(60, 60, 60), width=2)
            tw = d.textlength(label, font=f)
            d.text((x + (bw - tw) / 2, y + 20), label, font=f, fill=(20, 20, 20))
            if i < len(labels) - 1:
                ax0, ax1, ay = x + bw + 3, x + bw + gap - 3, y + 30
                d.line((ax0, ay, ax1, ay), fill=(60, 60, 60), width=2)
                d.polygon([(ax1, ay), (ax1 - 7, ay - 5), (ax1 - 7, ay + 5)], fill=(60, 60, 60))
    # Store (top row, box 5) feeds Retrieve (bottom row, box 3)
    store_x, retrieve_x = 20 + 4 * (bw + gap) + bw // 2, 20 + 2 * (bw + gap) + bw // 2
    d.line((store_x, 102, store_x, 120), fill=(60, 60, 60), width=2)
    d.line((store_x, 120, retrieve_x, 120), fill=(60, 60, 60), width=2)
    d.line((retrieve_x, 120, retrieve_x, 162), fill=(60, 60, 60), width=2)
    d.polygon([(retrieve_x, 168), (retrieve_x - 5, 160), (retrieve_x + 5, 160)], fill=(60, 60, 60))
    save_png(im.quantize(32, dither=Image.Dither.NONE), "pipeline-overview.png")


# --- evaluating-retrieval-metrics --------------------------------------------------------------


def dcg_discount() -> None:
    ranks = np.arange(1, 11)
    disc = 1 / np.log2(ranks + 1)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.bar(ranks, disc, color="#4c72b0")
    for r, v in zip(ranks, disc):
        ax.text(r, v + 0.015, f"{v:.3f}", ha="center", fontsize=8)
    ax.set_xticks(ranks)
    ax.set_ylim(0, 1.12)
    ax.set_xlabel("rank i")
    ax.set_ylabel("1 / log2(i + 1)")
    ax.set_title("DCG position discount for ranks 1 to 10")
    fig.tight_layout()
    save_fig(fig, "dcg-discount.png")


def ranking_example() -> None:
    """Ten ranked results; the relevant ones (ranks 2, 3 and 7) are green."""
    w, h = 520, 330
    im = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(im)
    f, fb = font(14), font(14, bold=True)
    d.text((16, 8), "Ranked results for query q1 (4 relevant documents exist)", font=fb, fill=(30, 30, 30))
    relevant = {2: "d17", 3: "d04", 7: "d31"}
    others = iter(["d09", "d22", "d40", "d13", "d08", "d26", "d35"])
    for rank in range(1, 11):
        y = 36 + (rank - 1) * 29
        rel = rank in relevant
        doc = relevant[rank] if rel else next(others)
        fill = (200, 236, 200) if rel else (240, 240, 240)
        d.rectangle((16, y, w - 16, y + 24), fill=fill, outline=(180, 180, 180))
        d.text((24, y + 4), f"{rank:>2}.  {doc}", font=f, fill=(20, 20, 20))
        d.text((w - 130, y + 4), "relevant" if rel else "not relevant", font=f,
               fill=(20, 110, 20) if rel else (120, 120, 120))
    save_png(im.quantize(16, dither=Image.Dither.NONE), "ranking-example.png")


# --- vector-indexes-ivf-pq-vs-hnsw -------------------------------------------------------------


def ivf_recall() -> None:
    nprobe = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256])
    recall = np.array([0.42, 0.57, 0.71, 0.82, 0.89, 0.93, 0.95, 0.96, 0.962])
    latency = np.array([0.09, 0.14, 0.24, 0.43, 0.82, 1.6, 3.1, 6.1, 12.0])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(nprobe, recall, "o-", color="#2a7ab0", label="Recall@10")
    ax.set_xscale("log", base=2)
    ax.set_xticks(nprobe, [str(n) for n in nprobe])
    ax.set_ylim(0.3, 1.0)
    ax.set_xlabel("nprobe (partitions probed, nlist = 1024)")
    ax.set_ylabel("Recall@10", color="#2a7ab0")
    ax.axhline(0.97, color="#888888", ls=":", lw=1)
    ax.text(1, 0.975, "PQ ceiling without re-ranking", fontsize=8, color="#555555")
    ax2 = ax.twinx()
    ax2.plot(nprobe, latency, "s--", color="#c0504d", label="latency")
    ax2.set_yscale("log")
    ax2.set_ylabel("latency per query (ms)", color="#c0504d")
    ax2.spines["right"].set_visible(True)
    ax.set_title("IVF-PQ: Recall@10 and latency against nprobe (synthetic)")
    fig.tight_layout()
    save_fig(fig, "ivf-recall-vs-nprobe.png")


def hnsw_layers() -> None:
    rng = np.random.default_rng(5)
    pts = rng.uniform(0, 1, size=(40, 2))
    levels = [pts, pts[:10], pts[:3]]

    def draw() -> plt.Figure:
        fig, axes = plt.subplots(1, 3, figsize=(6, 2.4))
        for lvl, ax in enumerate(axes):
            p = levels[2 - lvl]
            for i in range(len(p)):
                dist = np.linalg.norm(p - p[i], axis=1)
                for j in np.argsort(dist)[1:4]:
                    ax.plot([p[i, 0], p[j, 0]], [p[i, 1], p[j, 1]], color="#9ab", lw=0.7, zorder=1)
            ax.scatter(p[:, 0], p[:, 1], s=14, color="#2a5d8a", zorder=2)
            ax.scatter(pts[0, 0], pts[0, 1], s=40, color="#d62728", zorder=3)
            ax.set_title(f"layer {2 - lvl} ({len(p)} nodes)", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlim(-0.05, 1.05)
            ax.set_ylim(-0.05, 1.05)
        fig.tight_layout()
        return fig

    for dpi, name in ((100, "hnsw-layers.png"), (200, "hnsw-layers-2x.png")):
        fig = draw()
        save_fig(fig, name, dpi=dpi)


# --- image-captioning-and-ocr-for-retrieval ----------------------------------------------------


def ocr_scan_gif() -> None:
    """Animated GIF: a highlight band moves down a page of text lines, one line per frame."""
    w, h = 420, 260
    lines = [
        "Quarterly maintenance report",
        "Pump P-204 vibration: 4.1 mm/s",
        "Filter F-12 replaced on 14 May",
        "Next inspection: week 27",
        "Signed: J. Okafor, shift B",
    ]
    f = font(17)
    frames = []
    for k in range(len(lines)):
        im = Image.new("RGB", (w, h), (252, 250, 240))
        d = ImageDraw.Draw(im)
        y = 24 + k * 44
        d.rectangle((12, y - 6, w - 12, y + 30), fill=(255, 235, 140))
        for i, text in enumerate(lines):
            d.text((24, 24 + i * 44), text, font=f, fill=(25, 25, 25))
        d.rectangle((4, 4, w - 5, h - 5), outline=(160, 160, 160), width=2)
        frames.append(im.quantize(16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    frames[0].save(OUT / "ocr-scan.gif", save_all=True, append_images=frames[1:],
                   duration=600, loop=0, disposal=1, optimize=False)


def receipt_text() -> None:
    """A receipt rendered as an image: text that only OCR can recover."""
    rows = [
        ("NORTHWIND OFFICE SUPPLY", ""),
        ("Receipt 2024-0417", ""),
        ("", ""),
        ("Printer paper A4 x5", "23.75"),
        ("Toner cartridge K", "61.20"),
        ("Cable ties (100)", "4.05"),
        ("", ""),
        ("SUBTOTAL", "89.00"),
        ("VAT 20%", "17.80"),
        ("TOTAL EUR", "106.80"),
    ]
    w, h = 360, 300
    im = Image.new("L", (w, h), 255)
    d = ImageDraw.Draw(im)
    f = font(15, mono=True)
    for i, (left, right) in enumerate(rows):
        y = 16 + i * 26
        d.text((20, y), left, font=f, fill=20)
        if right:
            d.text((w - 20 - d.textlength(right, font=f), y), right, font=f, fill=20)
    d.line((20, 16 + 6.7 * 26, w - 20, 16 + 6.7 * 26), fill=90, width=1)
    save_png(im, "receipt-text.png")


# --- softmax-temperature-and-similarity-thresholds ---------------------------------------------


def temperature_softmax() -> None:
    scores = np.array([0.82, 0.78, 0.60, 0.41])
    temps = [1.0, 0.1, 0.05, 0.01]
    fig, axes = plt.subplots(1, 4, figsize=(7.2, 2.8), sharey=True)
    for ax, t in zip(axes, temps):
        e = np.exp(scores / t)
        p = e / e.sum()
        ax.bar(["A", "B", "C", "D"], p, color="#55a868")
        ax.set_title(f"T = {t:g}", fontsize=10)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("softmax probability")
    fig.suptitle("Softmax over similarities 0.82, 0.78, 0.60, 0.41 at four temperatures", fontsize=10)
    fig.tight_layout()
    save_fig(fig, "temperature-softmax.png")


def threshold_histogram() -> None:
    rng = np.random.default_rng(21)
    rel = np.clip(rng.normal(0.66, 0.09, 600), -1, 1)
    irr = np.clip(rng.normal(0.34, 0.11, 2400), -1, 1)
    bins = np.linspace(0, 1, 41)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.hist(irr, bins=bins, alpha=0.6, label="irrelevant pairs (2,400)", color="#8c8c8c")
    ax.hist(rel, bins=bins, alpha=0.7, label="relevant pairs (600)", color="#dd8452")
    ax.axvline(0.55, color="black", ls="--", lw=1.2)
    ax.text(0.56, ax.get_ylim()[1] * 0.9, "threshold 0.55", fontsize=9)
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("pairs")
    ax.set_title("Relevant vs irrelevant query-chunk pairs (synthetic)")
    ax.legend(frameon=False, loc="upper left")
    fig.tight_layout()
    save_fig(fig, "threshold-histogram.png")


# --- reranking-cross-encoders-and-rrf ----------------------------------------------------------


def rrf_contribution() -> None:
    ranks = np.arange(1, 101)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    for k, style in ((1, "-"), (10, "--"), (60, "-.")):
        ax.plot(ranks, 1 / (k + ranks), style, label=f"k = {k}")
    ax.set_yscale("log")
    ax.set_xlabel("rank in one input list")
    ax.set_ylabel("1 / (k + rank)")
    ax.set_title("Reciprocal rank fusion: contribution of one list by rank")
    ax.legend(frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_fig(fig, "rrf-contribution.png")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for make in (
        similarity_matrix,
        embedding_space,
        street_scene,
        chunk_size_recall,
        divider,
        pipeline_overview,
        dcg_discount,
        ranking_example,
        ivf_recall,
        hnsw_layers,
        ocr_scan_gif,
        receipt_text,
        temperature_softmax,
        threshold_histogram,
        rrf_contribution,
    ):
        make()
    for path in sorted(OUT.iterdir()):
        print(f"{path.stat().st_size:>8}  {path.relative_to(OUT.parent.parent.parent)}")


if __name__ == "__main__":
    main()
