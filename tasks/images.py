"""Image files named by a manifest -> the pixel-column frame every stage reads.

Reads: a CSV manifest (`ingest.source.kind: image_manifest`) with columns `path,label`, each path
relative to the manifest's own folder, and the PNG/JPEG files it names (Pillow). Writes nothing.
The manifest's folder is the data root: a path that resolves outside it (`../`, an absolute path,
a symlink pointing out) is refused, so a manifest cannot make the pipeline read arbitrary files.
Images are never resized: one whose shape differs from `data.image_shape` is an error, as is an
empty or unreadable file. Every bad row is counted and the first is named (row, path, problem).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.config import DataConfig
from tasks.errors import UserError
from tasks.frames import images_to_frame

# Pillow mode per channel count: what a (C, H, W) image with C channels is read as.
MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def read_manifest(path: Path, data: DataConfig) -> pd.DataFrame:
    """The manifest's images as an id/label/px_* frame, in manifest order."""
    from PIL import Image, UnidentifiedImageError

    if data.image_shape is None or data.image_shape[0] not in MODES:
        raise UserError(f"{path}: image manifests need data.image_shape with 1, 3 or 4 channels")
    try:
        with warnings.catch_warnings():  # a first row with an extra field: an error, not a shifted read
            warnings.simplefilter("error", pd.errors.ParserWarning)
            manifest = pd.read_csv(path, encoding="utf-8", dtype={"path": "str"}, index_col=False)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    except (pd.errors.ParserError, pd.errors.ParserWarning, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path}: not a readable CSV manifest ({' '.join(str(e).split())})") from None
    missing = [c for c in ("path", "label") if c not in manifest.columns]
    if missing:
        raise UserError(f"{path}: manifest column '{missing[0]}' missing (expected columns path,label)")
    if manifest.empty:
        raise UserError(f"{path}: manifest has a header but no rows")

    root = path.parent.resolve()
    channels, height, width = data.image_shape
    images, problems = np.zeros((len(manifest), channels * height * width), np.uint8), []
    for i, name in enumerate(manifest["path"]):
        row = i + 2  # the line in the file, counting the header
        problem = _refused(root, name)
        if problem is None:
            try:
                with Image.open(root / name) as image:
                    if image.size != (width, height):
                        problem = f"wrong shape {image.size[1]}x{image.size[0]}, data.image_shape needs {height}x{width}"
                    else:
                        pixels = np.asarray(image.convert(MODES[channels]), dtype=np.uint8)
                        images[i] = pixels.reshape(height, width, channels).transpose(2, 0, 1).reshape(-1)
            except FileNotFoundError:
                problem = "file not found"
            except (UnidentifiedImageError, OSError, ValueError) as e:  # truncated or not an image
                empty = (root / name).is_file() and (root / name).stat().st_size == 0
                problem = "empty file (0 bytes)" if empty else f"not a readable image ({type(e).__name__})"
        if problem:
            problems.append(f"row {row}: {name}: {problem}")
    if problems:
        more = f" (and {len(problems) - 1} more bad row(s))" if len(problems) > 1 else ""
        raise UserError(f"{path}: {problems[0]}{more}")
    return images_to_frame(images, manifest["label"].to_numpy(), data)


def _refused(root: Path, name) -> str | None:
    """Why a manifest path may not be read, or None: it must name a file inside the data root."""
    if not isinstance(name, str) or not name.strip():
        return "no path given"
    target = (root / name).resolve()  # follows symlinks and `..`
    if not target.is_relative_to(root):
        return f"refused, resolves outside the manifest's folder {root}"
    return None
