"""Promotion gate: should the evaluated model replace the champion?

The champion is the last promoted model, recorded as `<evaluate.gate.champion>/metrics.json`: its
test metrics, which model and weights (sha256) they belong to, and when. That file is small,
tracked in git beside dvc.lock (which pins the promoted weights in DVC's cache), and only a
promotion writes it: a gate that fails leaves it untouched. It is deliberately not a DVC dep or
out of the evaluate stage, which reads and (on promotion) writes it: a registry's state, not a
stage output, much as a model registry keeps it in git tags.

`promotion_verdict()` is pure: metrics, thresholds and the champion in; a machine-readable verdict out
(`promoted`, a one-line `reason`, one entry per check). flows/evaluate.py writes it to
reports/evaluate/gate.json, the terminal and Prefect; the scheduled flow pushes only a model
whose gate.json says `"promoted": true`. A model with any metric that is NaN or infinite (it
diverged in training, or the test inputs were not finite) is never promoted, whatever the
thresholds say: a comparison with such a number means nothing (-inf passes any maximum).
"""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from pathlib import Path

from prefect import task

from tasks.config import GateConfig
from tasks.errors import UserError
from tasks.io import load_json, save_json

LOWER_IS_BETTER = {"ece", "mse", "rmse", "mae", "loss"}  # for these, "no worse" means "not higher"


@task
def promotion_verdict(metrics: dict, cfg: GateConfig, champion: dict | None) -> dict:
    checks = []
    for kind, bounds in (("min", cfg.min), ("max", cfg.max)):
        for name, bound in bounds.items():
            value = _metric(metrics, name, f"evaluate.gate.{kind}.{name}")
            passed = value >= bound if kind == "min" else value <= bound
            checks.append({"check": f"{name} {'>=' if kind == 'min' else '<='} {bound}", "metric": name,
                           "value": value, "needs": f"{'>=' if kind == 'min' else '<='} {bound}", "passed": passed})
    if champion is not None:
        for name in cfg.vs_champion:
            value = _metric(metrics, name, f"evaluate.gate.vs_champion ({name})")
            best = champion["metrics"].get(name)
            if best is None:
                continue  # the champion predates this metric: nothing to compare
            lower = name in LOWER_IS_BETTER
            bound = round(best + cfg.tolerance if lower else best - cfg.tolerance, 6)
            passed = value <= bound if lower else value >= bound
            checks.append({"check": f"{name} no worse than the champion ({best})", "metric": name, "value": value,
                           "needs": f"{'<=' if lower else '>='} {bound}", "passed": passed})
    broken = not_finite(metrics)
    for check in checks:  # no comparison with NaN or inf passes, not even inf >= bound
        check["passed"] = check["passed"] and check["metric"] not in broken
    checks = [{"check": f"{name} is finite", "metric": name, "value": value, "needs": "a finite number", "passed": False}
              for name, value in broken.items()] + checks
    failed = [c for c in checks if not c["passed"]]
    if broken:  # the other failures compared numbers that mean nothing: not worth a word
        reason = (f"metrics not finite: {', '.join(f'{name} {value}' for name, value in broken.items())} "
                  "(the model diverged in training, or the test inputs are not finite)")
    elif failed:
        reason = "; ".join(f"{c['metric']} {c['value']} fails {c['check']}" for c in failed)
    elif champion is None:
        passed = f"all {len(checks)} threshold checks passed" if checks else "no thresholds declared"
        reason = f"{passed}; no champion yet, this model becomes it"
    else:
        reason = f"all {len(checks)} checks passed, the champion included"
    return {"promoted": not failed, "reason": reason, "checks": checks,
            "champion_before": champion["metrics"] if champion else None}


def _metric(metrics: dict, name: str, where: str) -> float:
    value = metrics.get(name)
    if not isinstance(value, (int, float)):
        available = ", ".join(k for k, v in metrics.items() if isinstance(v, (int, float)))
        raise UserError(f"{where}: the evaluated model has no metric '{name}' (available: {available})")
    return float(value)


def not_finite(metrics: dict) -> dict[str, float]:
    """The numeric metrics that are NaN or infinite, by name."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v)}


def weights_digest(model_dir: Path) -> str:
    return hashlib.sha256((Path(model_dir) / "model.safetensors").read_bytes()).hexdigest()


def load_champion(cfg: GateConfig) -> dict | None:
    path = Path(cfg.champion) / "metrics.json"
    return load_json(path) if path.exists() else None


def promote(metrics: dict, model_dir: Path, cfg: GateConfig) -> dict:
    """Record the evaluated model as the champion (only called when the gate passed)."""
    broken = not_finite(metrics)
    if broken:  # promotion_verdict() never passes such a model; a caller that skipped it must not crown it either
        shown = ", ".join(f"{k} {v}" for k, v in broken.items())
        raise UserError(f"gate: not promoting {model_dir}: metrics not finite ({shown})")
    record = {"metrics": metrics, "model": str(model_dir), "weights_sha256": weights_digest(model_dir),
              "promoted_at": datetime.now(UTC).isoformat(timespec="seconds")}
    save_json(record, Path(cfg.champion) / "metrics.json")
    return record
