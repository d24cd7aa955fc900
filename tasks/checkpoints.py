"""Where a training run keeps its checkpoints, and when a rerun may resume from them.

A run's checkpoints live in `<root>/<key>/` (root: e.g. checkpoints/train, outside DVC's outputs,
so `dvc repro` does not delete them before rerunning a stage). The key hashes everything that
decides the result: the model spec, the optimiser, trainer and augmentation settings, the seed,
the arrays, the starting weights and the training code itself. So a checkpoint is only resumed
by a run that would have produced it, never by one with other params, data or code. A run that
finished leaves a `complete` marker: rerunning it trains again from the start instead of
resuming a finished run. Checkpoints are Lightning's (torch.save) files, read back with
`weights_only=True` so loading one never runs code.

Lightning writes a checkpoint to a temporary file under TMPDIR and moves it into place: a rename
(atomic) when TMPDIR is on the checkpoints' filesystem, a copy (which a kill can cut off) when it
is not. So a rerun checks both checkpoints first; one it cannot read is reported on stderr and the
run trains from the start instead of crashing. The `complete` marker is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

import lightning_modules
from tasks.io import save_text

COMPLETE = "complete"
CHECKPOINTS = ("last.ckpt", "best.ckpt")  # tasks/train.py's ModelCheckpoint names; a resume needs both intact


def run_key(settings: dict, arrays: dict[str, tuple[np.ndarray, np.ndarray]], init_state: dict[str, torch.Tensor] | None) -> str:
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for split in sorted(arrays):
        for part in arrays[split]:
            part = np.ascontiguousarray(part)
            digest.update(f"{split}{part.dtype}{part.shape}".encode())
            digest.update(part.tobytes())
    for name in sorted(init_state or {}):
        digest.update(name.encode())
        digest.update(init_state[name].detach().cpu().contiguous().numpy().tobytes())
    # The training code is part of what a checkpoint means: an edited module must not resume old weights.
    for source in sorted(Path(lightning_modules.__file__).parent.glob("*.py")):
        digest.update(source.read_bytes())
    digest.update(Path(__file__).with_name("train.py").read_bytes())
    return digest.hexdigest()[:16]


def prepare(root: Path, key: str) -> tuple[Path, Path | None]:
    """The run's folder and the checkpoint to resume from (None: start fresh). Folders of other
    keys under `root` are stale (other params, data or code) and removed."""
    root.mkdir(parents=True, exist_ok=True)
    for other in root.iterdir():
        if other.is_dir() and other.name != key:
            shutil.rmtree(other, ignore_errors=True)
    folder = root / key
    last = folder / "last.ckpt"
    if (folder / COMPLETE).exists():
        shutil.rmtree(folder)  # finished: train again
    for path in (folder / name for name in CHECKPOINTS) if folder.exists() else ():
        # best.ckpt counts too: a resumed run with restore_best ends by loading it.
        if why := _unreadable(path):
            print(f"warning: resume: {path} cannot be read ({why}; cut off mid-write?): training from the start",
                  file=sys.stderr)
            shutil.rmtree(folder)
            break
    folder.mkdir(exist_ok=True)
    return folder, (last if last.exists() else None)


def _unreadable(path: Path) -> str | None:
    """Why the checkpoint at `path` cannot be loaded; None when it loads or does not exist."""
    if not path.exists():
        return None
    try:
        load(path)
        return None
    except Exception as e:  # a truncated or damaged file: any unpickling error means "cannot resume"
        return type(e).__name__


def mark_complete(folder: Path) -> None:
    save_text("finished; a rerun trains from the start\n", folder / COMPLETE)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def callback_state(checkpoint: dict, name: str) -> dict | None:
    """The saved state of the callback whose class is `name` (Lightning keys states by class)."""
    return next((state for key, state in checkpoint.get("callbacks", {}).items() if key.split("{")[0] == name), None)
