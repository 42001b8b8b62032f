"""The stages of indexing (sources, fetch, parse, chunk, images, OCR, embed, store) and, above them,
retrieval and generation.

Installed as ``mmrag.pipelines`` (see pyproject's package-dir); the folder is not a top-level package.
"""

if __name__ != "mmrag.pipelines":
    raise ImportError(f"{__name__!r} is not a package: this folder installs as mmrag.pipelines; import mmrag.pipelines")
