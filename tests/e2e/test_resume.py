"""Kill -9 during training, rerun: it resumes from the last checkpoint and ends with the same
weights file (byte for byte) as a run that was never interrupted. A checkpoint cut off mid-write
is skipped with a warning: the rerun trains from the start instead of crashing."""

from __future__ import annotations

import hashlib
import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT

SCRIPT = '''
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from tasks.config import BackboneConfig, OptimizerConfig, TrainerConfig
from tasks.model_io import ModelSpec, save_model
from tasks.train import backbone_spec, fit_classifier


def main():
    checkpoints = None if sys.argv[1] == "none" else Path(sys.argv[1])
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    arrays = {"train": (x[:1400], y[:1400]), "val": (x[1400:], y[1400:])}
    spec = ModelSpec(backbone_spec(BackboneConfig(kind="cnn", widths=[16, 32], hidden=32, dropout=0.25)), (1, 8, 8),
                     list(range(10)), {})
    trainer = TrainerConfig(max_epochs=6, batch_size=32, accelerator="cpu", num_threads=1, progress_bar=False, logger="none")
    optimizer = OptimizerConfig(scheduler={"name": "cosine", "warmup_steps": 10})
    result = fit_classifier.fn(arrays, spec, optimizer, trainer, seed=7, checkpoint_dir=checkpoints)
    save_model(result.state, spec, Path(sys.argv[2]))
    print("RESUMED_FROM", result.resumed_from_epoch, flush=True)


if __name__ == "__main__":
    main()
'''


def _start(script: Path, checkpoints: str, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), checkpoints, str(out)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_kill_9_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path):
    script = tmp_path / "train_once.py"
    script.write_text(SCRIPT)
    checkpoints = tmp_path / "checkpoints"

    killed = _start(script, str(checkpoints), tmp_path / "killed")
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*/last.ckpt")):  # the first epoch's checkpoint is written
        assert killed.poll() is None, killed.stdout.read()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    assert not list(checkpoints.glob("*/complete")), "the run finished before it was killed: make it longer"

    resumed = _start(script, str(checkpoints), tmp_path / "resumed")
    resumed_out = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, resumed_out[-3000:]
    epoch = int(resumed_out.split("RESUMED_FROM ")[1].split()[0])
    assert 1 <= epoch < 6 and "resume: continuing from" in resumed_out

    whole = _start(script, "none", tmp_path / "whole")
    whole_out = whole.communicate(timeout=600)[0]
    assert whole.returncode == 0, whole_out[-3000:]
    assert _digest(tmp_path / "resumed") == _digest(tmp_path / "whole")


@pytest.mark.parametrize("torn", ["last.ckpt", "best.ckpt"])
def test_a_torn_checkpoint_is_skipped_with_a_warning(tmp_path, capsys, torn):
    from tasks import checkpoints

    folder = tmp_path / "0123456789abcdef"
    folder.mkdir()
    whole = io.BytesIO()
    torch.save({"epoch": 2, "state_dict": {"w": torch.zeros(1000)}}, whole)
    for name in ("last.ckpt", "best.ckpt"):  # a copy into place cut off by a kill: half the bytes
        (folder / name).write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2] if name == torn else whole.getvalue())
    assert checkpoints.prepare(tmp_path, folder.name) == (folder, None)
    assert list(folder.iterdir()) == []
    err = capsys.readouterr().err
    assert err.startswith(f"warning: resume: {folder / torn} cannot be read (") and "training from the start" in err


def test_intact_checkpoints_are_resumed(tmp_path):
    from tasks import checkpoints

    folder = tmp_path / "0123456789abcdef"
    folder.mkdir()
    for name in ("last.ckpt", "best.ckpt"):
        torch.save({"epoch": 2}, folder / name)
    assert checkpoints.prepare(tmp_path, folder.name) == (folder, folder / "last.ckpt")
    checkpoints.mark_complete(folder)
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert checkpoints.prepare(tmp_path, folder.name) == (folder, None)  # finished: train again
