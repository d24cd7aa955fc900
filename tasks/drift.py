"""Drift: new rows against the training data, counted a chunk at a time.

The reference is the validated train split (the rows the repairer was fitted on, before repair):
per numeric feature, bin edges at train's quantiles (predict.drift.bins) and train's share per bin;
per categorical feature, train's share per category; per feature, its missing rate; train's class
mix (a regression's label: bins like a numeric feature). `DriftCounter.add_rows` counts a chunk of new
rows into the same bins, so memory is a few numbers a feature whatever the input's size;
`DriftCounter.report` turns the counts into:
- numeric: the population stability index, sum over bins of (new - train) * ln(new / train), shares
  floored at EPS (a bin train never filled is then a large term, as it should be);
- categorical: the Jensen-Shannon distance (base 2: 0 same shares, 1 disjoint), and the new rows
  holding a category train never saw, counted and named;
- missing: the change of each feature's missing rate;
- class mix: the predicted classes' shares against train's labels (JS distance; PSI for regression).
Each measure past its threshold (predict.drift) is listed in `drifted`. Images are judged on one
derived feature, the mean pixel of each image: a PSI per pixel column says little. Pure: frames in,
a JSON-ready dict and a PNG out.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from tasks.config import DataConfig, DriftConfig

EPS = 1e-4  # floor of a bin's share in the PSI (the usual choice: an empty bin costs a bounded term)
MEAN_PIXEL = "mean_pixel"
SHOWN = 10  # new categories named per feature


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e, a = np.maximum(expected, EPS), np.maximum(actual, EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def _js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2 (0..1), of two share vectors over the same categories."""
    m = (p + q) / 2

    def kl(x: np.ndarray) -> float:
        nz = x > 0
        return float(np.sum(x[nz] * np.log2(x[nz] / m[nz])))

    return float(np.sqrt(max(0.0, (kl(p) + kl(q)) / 2)))


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


class DriftCounter:
    """Reference shares from train; counts of the new rows, added chunk by chunk."""

    def __init__(self, train: pd.DataFrame, numeric: list[str], categorical: list[str], data: DataConfig,
                 classes: list, cfg: DriftConfig, regression: bool = False):
        self.cfg, self.data, self.regression = cfg, data, regression
        self.image = data.modality == "image"
        self.pixels = list(numeric) if self.image else []
        self.numeric = [MEAN_PIXEL] if self.image else list(numeric)
        self.categorical = [] if self.image else list(categorical)
        self.classes = [str(c) for c in classes]
        train = self._derived(train)
        self.reference_rows = len(train)
        self.edges: dict[str, np.ndarray] = {}
        self.train_bins: dict[str, np.ndarray] = {}
        for c in self.numeric:
            self.edges[c], self.train_bins[c] = self._bin_edges(pd.to_numeric(train[c], errors="coerce").to_numpy(float))
        self.train_categories = {c: train[c].dropna().astype("str").value_counts() for c in self.categorical}
        self.train_missing = {c: float(train[c].isna().mean()) if len(train) else 0.0 for c in self.numeric + self.categorical}
        label = train[data.label] if data.label in train else pd.Series([], dtype=float)
        if regression:
            self.label_edges, self.train_label_bins = self._bin_edges(pd.to_numeric(label, errors="coerce").to_numpy(float))
        else:
            self.train_classes = label.dropna().astype("str").value_counts().reindex(self.classes, fill_value=0).to_numpy()
        # the new rows' counts
        self.rows = 0
        self.bins = {c: np.zeros(len(self.train_bins[c]), np.int64) for c in self.numeric}
        self.categories: dict[str, pd.Series] = {c: pd.Series(dtype="int64") for c in self.categorical}
        self.missing = dict.fromkeys(self.numeric + self.categorical, 0)
        self.predicted = np.zeros(len(self.train_label_bins) if regression else len(self.classes), np.int64)

    def _bin_edges(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        present = values[np.isfinite(values)]
        if not len(present):
            return np.zeros(0), np.zeros(1, np.int64)
        edges = np.unique(np.quantile(present, np.linspace(0, 1, self.cfg.bins + 1)[1:-1]))
        return edges, np.bincount(np.searchsorted(edges, present, side="left"), minlength=len(edges) + 1)

    def _derived(self, frame: pd.DataFrame) -> pd.DataFrame:
        if not self.image:
            return frame
        pixels = frame[self.pixels].apply(pd.to_numeric, errors="coerce") if len(frame) else frame[self.pixels]
        return frame.assign(**{MEAN_PIXEL: pixels.mean(axis=1)})

    def add_rows(self, rows: pd.DataFrame) -> None:
        """Count a chunk of new rows as read (declared sentinels already missing)."""
        rows = self._derived(rows)
        self.rows += len(rows)
        for c in self.numeric:
            values = pd.to_numeric(rows[c], errors="coerce").to_numpy(float) if c in rows else np.full(len(rows), np.nan)
            present = np.isfinite(values)
            self.missing[c] += int((~present).sum())  # a value that is no number counts as missing
            self.bins[c] += np.bincount(np.searchsorted(self.edges[c], values[present], side="left"),
                                        minlength=len(self.bins[c]))
        for c in self.categorical:
            values = rows[c] if c in rows else pd.Series([None] * len(rows), dtype="object")
            self.missing[c] += int(values.isna().sum())
            counts = values.dropna().astype("str").value_counts()
            self.categories[c] = self.categories[c].add(counts, fill_value=0).astype("int64")

    def add_predicted(self, predicted: np.ndarray) -> None:
        """Count the scored rows' predictions: class indices, or values for a regression."""
        if self.regression:
            values = np.asarray(predicted, float)
            self.predicted += np.bincount(np.searchsorted(self.label_edges, values[np.isfinite(values)], side="left"),
                                          minlength=len(self.predicted))
        else:
            self.predicted += np.bincount(np.asarray(predicted, np.int64), minlength=len(self.classes))

    def report(self) -> dict:
        cfg, judged = self.cfg, self.rows >= self.cfg.min_rows
        out = {"rows": self.rows, "reference_rows": self.reference_rows, "judged": judged,
               "thresholds": cfg.model_dump(exclude={"fail", "min_rows", "bins"}), "numeric": [], "categorical": [],
               "missing": [], "class_mix": {}, "drifted": []}

        def flag(feature: str, measure: str, value: float, threshold: float) -> None:
            if judged and value is not None and value > threshold:
                out["drifted"].append({"feature": feature, "measure": measure, "value": round(value, 6),
                                       "threshold": threshold})

        for c in self.numeric:
            new = _shares(self.bins[c])
            psi = _psi(_shares(self.train_bins[c]), new) if self.bins[c].sum() else None
            out["numeric"].append({"feature": c, "psi": None if psi is None else round(psi, 6),
                                   "edges": [round(float(e), 6) for e in self.edges[c]],
                                   "train_share": _rounded(_shares(self.train_bins[c])), "new_share": _rounded(new)})
            flag(c, "psi", psi, cfg.psi)
        for c in self.categorical:
            train, new = self.train_categories[c], self.categories[c]
            names = sorted(set(train.index) | set(new.index))
            p = _shares(train.reindex(names, fill_value=0).to_numpy(float))
            q = _shares(new.reindex(names, fill_value=0).to_numpy(float))
            unseen = new[~new.index.isin(train.index)].sort_values(ascending=False)
            distance = _js_distance(p, q) if new.sum() else None
            rate = float(unseen.sum() / self.rows) if self.rows else 0.0
            out["categorical"].append({"feature": c, "distance": None if distance is None else round(distance, 6),
                                       "new_categories": {"rows": int(unseen.sum()), "rate": round(rate, 6),
                                                          "values": [str(v) for v in unseen.index[:SHOWN]]},
                                       "train_share": dict(zip(names, _rounded(p), strict=True)),
                                       "new_share": dict(zip(names, _rounded(q), strict=True))})
            flag(c, "distance", distance, cfg.distance)
            flag(c, "new_categories", rate, cfg.new_categories)
        for c in self.numeric + self.categorical:
            new = self.missing[c] / self.rows if self.rows else 0.0
            change = new - self.train_missing[c]
            out["missing"].append({"feature": c, "train": round(self.train_missing[c], 6), "new": round(new, 6),
                                   "change": round(change, 6)})
            flag(c, "missing_rate", abs(change), cfg.missing_rate)
        if self.regression:
            psi = _psi(_shares(self.train_label_bins), _shares(self.predicted)) if self.predicted.sum() else None
            out["class_mix"] = {"measure": "psi", "value": None if psi is None else round(psi, 6),
                                "edges": [round(float(e), 6) for e in self.label_edges],
                                "train": _rounded(_shares(self.train_label_bins)), "predicted": _rounded(_shares(self.predicted))}
            flag("predicted value", "prediction_psi", psi, cfg.psi)
        else:
            distance = _js_distance(_shares(self.train_classes), _shares(self.predicted)) if self.predicted.sum() else None
            out["class_mix"] = {"measure": "distance", "value": None if distance is None else round(distance, 6),
                                "train": dict(zip(self.classes, _rounded(_shares(self.train_classes)), strict=True)),
                                "predicted": dict(zip(self.classes, _rounded(_shares(self.predicted)), strict=True))}
            flag("predicted class", "class_mix", distance, cfg.class_mix)
        return out


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 6) for v in values]


def verdict(report: dict) -> str:
    """One line: no drift, too few rows to judge, or the measures past their thresholds, worst first."""
    if not report["judged"]:
        return f"drift not judged: {report['rows']} rows, fewer than predict.drift.min_rows"
    if not report["drifted"]:
        return f"no drift past the thresholds ({report['rows']} rows against {report['reference_rows']} train rows)"
    worst = sorted(report["drifted"], key=lambda d: -d["value"] / d["threshold"])
    shown = ", ".join(f"{d['feature']} {d['measure']} {d['value']:.3g} > {d['threshold']:g}" for d in worst[:5])
    more = f" (+{len(worst) - 5} more)" if len(worst) > 5 else ""
    return f"drift in {len(worst)} measure(s): {shown}{more}"


def table(report: dict) -> list[dict]:
    """One row per feature and measure (the Prefect table artifact and the Markdown report)."""
    drifted = {(d["feature"], d["measure"]) for d in report["drifted"]}
    rows = [{"feature": n["feature"], "measure": "psi", "value": n["psi"], "threshold": report["thresholds"]["psi"]}
            for n in report["numeric"]]
    for c in report["categorical"]:
        rows.append({"feature": c["feature"], "measure": "distance", "value": c["distance"],
                     "threshold": report["thresholds"]["distance"]})
        rows.append({"feature": c["feature"], "measure": "new_categories", "value": c["new_categories"]["rate"],
                     "threshold": report["thresholds"]["new_categories"]})
    rows += [{"feature": m["feature"], "measure": "missing_rate", "value": m["change"],
              "threshold": report["thresholds"]["missing_rate"]} for m in report["missing"]]
    classes = report["class_mix"]["measure"] == "distance"
    rows.append({"feature": "predicted class" if classes else "predicted value",
                 "measure": "class_mix" if classes else "prediction_psi", "value": report["class_mix"]["value"],
                 "threshold": report["thresholds"]["class_mix" if classes else "psi"]})
    for row in rows:
        row["drift"] = "yes" if (row["feature"], row["measure"]) in drifted else ""
    return rows


def drift_png(report: dict, title: str) -> bytes:
    """Each measure as a share of its threshold (1: the threshold), and the class mix beside train's."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    rows = [r for r in table(report) if r["value"] is not None]
    ratios = [abs(r["value"]) / r["threshold"] if r["threshold"] else 0.0 for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, max(3.0, 0.25 * len(rows) + 1.2)), dpi=100,
                                      gridspec_kw={"width_ratios": [3, 2]})
    labels = [f"{r['feature']} ({r['measure']})" for r in rows]
    left.barh(range(len(rows)), ratios, color=["#d62728" if x > 1 else "#1f77b4" for x in ratios])
    left.axvline(1.0, color="black", linestyle="--", linewidth=1)
    left.set_yticks(range(len(rows)), labels, fontsize=7)
    left.invert_yaxis()
    left.set_xlabel("value / threshold (right of the line: drift)")
    left.set_title(title, fontsize=9)
    mix = report["class_mix"]
    names = list(mix["train"]) if isinstance(mix["train"], dict) else [f"bin {i}" for i in range(len(mix["train"]))]
    train = list(mix["train"].values()) if isinstance(mix["train"], dict) else mix["train"]
    new = list(mix["predicted"].values()) if isinstance(mix["predicted"], dict) else mix["predicted"]
    x = np.arange(len(names))
    right.bar(x - 0.2, train, 0.4, label="train labels")
    right.bar(x + 0.2, new, 0.4, label="predicted")
    right.set_xticks(x, names, rotation=45 if len(names) > 5 else 0, fontsize=7)
    right.set_ylabel("share of rows")
    right.set_title("class mix" if mix["measure"] == "distance" else "predictions on train's label bins", fontsize=9)
    right.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
