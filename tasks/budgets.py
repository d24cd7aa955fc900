"""Budgets: each compression candidate measured (accuracy, serialised size, non-zeros, latency) and
judged against `compress.budgets`; the best one within every budget is chosen (`compress.select`).

Pure apart from timing: a candidate and test arrays in, a row of measurements out.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from prefect import task
from safetensors.torch import save as safetensors_bytes

from tasks.config import BudgetConfig, LatencyConfig
from tasks.export import int8_kernels_allowed, torch_logits


# ------------------------------------------------------------------------------------ measuring
def latency_ms(run, x: np.ndarray, cfg: LatencyConfig) -> dict[str, float]:
    """p50/p95 wall time of `run(batch)` per batch size, after `warmup` untimed calls."""
    out = {}
    for size in cfg.batch_sizes:
        batch = np.resize(x, (size, *x.shape[1:])).astype(np.float32)  # repeats rows if the split is smaller
        for _ in range(cfg.warmup):
            run(batch)
        times = []
        for _ in range(cfg.repeats):
            start = time.perf_counter()
            run(batch)
            times.append((time.perf_counter() - start) * 1000)
        out[f"p50_ms_b{size}"] = round(float(np.percentile(times, 50)), 4)
        out[f"p95_ms_b{size}"] = round(float(np.percentile(times, 95)), 4)
    return out


@task
def measure(candidate, x: np.ndarray, y: np.ndarray, cfg: LatencyConfig) -> dict:
    """Accuracy on the test split, serialised size, parameters, non-zeros, latency (cfg.num_threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.num_threads)
    try:
        with warnings.catch_warnings(), int8_kernels_allowed():
            warnings.simplefilter("ignore")  # torch.ao's deprecation notice, once per quantized call
            accuracy = float((torch_logits(candidate.model, x).argmax(axis=1) == y).mean())

            def run(batch: np.ndarray) -> None:
                with torch.inference_mode():
                    candidate.model(torch.from_numpy(batch))

            timings = latency_ms(run, x, cfg)
    finally:
        torch.set_num_threads(threads)
    tensors, _ = candidate.saved_state()
    weights = list(candidate.fp32.parameters())
    return {"name": candidate.name, "method": candidate.recipe["method"], "accuracy": round(accuracy, 6),
            "bytes": len(safetensors_bytes(tensors)), "parameters": int(sum(w.numel() for w in weights)),
            "nonzero_parameters": int(sum((w != 0).sum() for w in weights)), **timings}


# -------------------------------------------------------------------------------------- budgets
@task
def judge_budgets(rows: list[dict], budgets: BudgetConfig, select: str, budget_batch: int) -> tuple[list[dict], str | None]:
    """Each row gets its accuracy drop (points), size reduction and a verdict naming every budget it
    missed; returns the rows and the best row within every budget (None when there is none).
    `rows[0]` is the uncompressed model."""
    base, latency_key = rows[0], f"p50_ms_b{budget_batch}"
    judged = []
    for row in rows:
        drop = round((base["accuracy"] - row["accuracy"]) * 100, 4)
        reduction = round(base["bytes"] / row["bytes"], 4)
        missed = []
        if drop > budgets.max_accuracy_drop + 1e-9:
            missed.append(f"accuracy drop {drop:.2f} > {budgets.max_accuracy_drop} points")
        if reduction < budgets.min_size_reduction - 1e-9:
            missed.append(f"size reduction {reduction:.2f}x < {budgets.min_size_reduction}x")
        if budgets.max_latency_ms is not None and row[latency_key] > budgets.max_latency_ms:
            missed.append(f"latency {row[latency_key]:.2f} ms > {budgets.max_latency_ms} ms at batch {budget_batch}")
        verdict = "reference" if row is base else ("within budget" if not missed else "missed: " + "; ".join(missed))
        judged.append({**row, "accuracy_drop_points": drop, "size_reduction": reduction, "missed": missed, "verdict": verdict})
    passing = [r for r in judged[1:] if not r["missed"]]
    order = {"smallest": lambda r: (r["bytes"], -r["accuracy"]), "fastest": lambda r: (r[latency_key], r["bytes"]),
             "most_accurate": lambda r: (-r["accuracy"], r["bytes"])}[select]
    return judged, (min(passing, key=order)["name"] if passing else None)
