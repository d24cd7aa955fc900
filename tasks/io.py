"""Small load_/save_ helpers for the formats trainflow writes: Parquet, JSON, Markdown, PNG.

Every save goes to a temporary file beside its target and is renamed into place, so a killed
stage never leaves a half-written output that a later stage (or DVC) could mistake for a result.
Every load turns a missing or unreadable file into a `UserError` that names the file.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from tasks.errors import UserError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` only on success."""
    path = Path(path)
    blocking = next((folder for folder in reversed(path.parents) if folder.is_file()), None)
    if blocking is not None:
        raise UserError(f"{blocking}: is a file where trainflow keeps a folder of outputs ({path}): move it away")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise UserError(f"{path.parent}: cannot write outputs here ({_why(e)})") from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as e:  # pyarrow's and safetensors' write errors are OSErrors too
        raise UserError(f"{path}: could not be written ({_why(e)})") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)  # a full disk leaves no half-written file behind


def _why(error: OSError) -> str:
    if error.errno == errno.ENOSPC or "No space left" in str(error):
        return "the disk is full: free some space and rerun; the earlier outputs are unchanged"
    return error.strerror or " ".join(str(error).split())


def save_frame(frame: pd.DataFrame, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def load_frame(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    try:
        return pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise UserError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None


def save_json(obj: Any, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_jsonable) + "\n", encoding="utf-8")


def load_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def save_text(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_bytes(data: bytes, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _jsonable(value: Any) -> Any:
    # numpy scalars and paths reach reports; make them plain JSON values.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
