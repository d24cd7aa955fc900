"""Predict throughput: trainflow's predict against a hand-written pandas + onnxruntime script.

Both score the same CSV of new rows shaped like the credit example (rows of its table drawn with
replacement, seeded, numbered, without the label) with the same fitted repairer
(data/repaired/source/repairer.json + knn_reference.parquet) and the same ONNX file, `--chunk-rows`
rows at a time, each in a fresh process whose peak RSS (ru_maxrss) is its peak memory. trainflow's
side is flows/predict.py's `load_scorer` + `score` (what the flow runs, without the Prefect server):
validate's checks with quarantine, the repairer's `transform` with its ledger, the drift counts,
three Parquet outputs. The script applies the same repairs by hand (sentinels to missing, IQR
clipping, missing indicators, KNN and median/mode fills, robust scaling, one-hot) and checks
nothing: the difference is what trainflow's checks and records cost. The two must agree on every
row both scored. Then trainflow again on an input `--scale` times larger: peak memory should stay
about the same (the input is read a chunk at a time).

    python3 benchmarks/predict_throughput.py [--rows 1000000] [--scale 5] [--project DIR] [--chunk-rows N]

--project: a built credit project (`cd examples/credit && dvc repro evaluate`); without one the
script builds it first in a temporary copy of the repository (about a minute). Last line: JSON with
ratio (trainflow rows/s over the script's), rows_per_s and peak_mem_mb (trainflow), and the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ the two sides
def trainflow_side(project: Path, source: Path, out: Path, chunk_rows: int) -> dict:
    os.chdir(project)
    sys.path.insert(0, str(ROOT))
    import flows.predict as fp
    from tasks.config import load_params

    started = time.perf_counter()
    params = fp.with_overrides(load_params("params.yaml"), model=None, runtime="onnx", fail=None)
    params = params.model_copy(update={"predict": params.predict.model_copy(update={"chunk_rows": chunk_rows})})
    scorer, _ = fp.load_scorer(params)
    tally = fp.score(params, scorer, [source], out)
    scorer.drift.report()
    return {"rows": tally.rows, "predicted": tally.predicted, "seconds": time.perf_counter() - started}


def script_side(project: Path, source: Path, out: Path, chunk_rows: int) -> dict:
    """What one would write by hand: the fitted numbers from repairer.json, the ONNX file, pandas."""
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.parquet as pq
    import yaml
    from sklearn.impute import KNNImputer

    started = time.perf_counter()
    fitted = json.loads((project / "data/repaired/source/repairer.json").read_text())
    declared = yaml.safe_load((project / "params.yaml").read_text())["validate"]["schema"]
    sentinels = declared.get("missing_values", [])
    numeric, categorical = fitted["numeric"], fitted["categorical"]
    bounds, fills = fitted["outliers"]["bounds"], fitted["missing"]["fill_values"]
    knn_columns = [c for c, s in fitted["missing"]["strategies"].items() if s == "knn"]
    knn = KNNImputer(n_neighbors=fitted["config"]["missing"]["n_neighbors"], keep_empty_features=True).fit(
        pd.read_parquet(project / "data/repaired/source/knn_reference.parquet").to_numpy(float))
    scaling, categories = fitted["encoder"]["scaling"], fitted["encoder"]["categories"]
    columns = [c for c in pq.read_schema(project / "data/repaired/source/test.parquet").names if c not in ("rownames", "Status")]
    sha = json.loads((project / "champion/metrics.json").read_text())["weights_sha256"]
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(project / ".cache/predict" / f"{sha}.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    classes = json.loads((project / "models/train/model.json").read_text())["classes"]
    rows, writer = 0, None
    for chunk in pd.read_csv(source, chunksize=chunk_rows):
        x = chunk[numeric].astype(float).mask(chunk[numeric].isin(sentinels))
        for c, (low, high) in bounds.items():
            x[c] = x[c].clip(low, high)
        cats = chunk[categorical].astype("str")
        flags = {f"{c}__missing": (x[c] if c in x else cats[c]).isna().astype(float) for c in fitted["missing"]["indicators"]}
        if knn_columns and x[knn_columns].isna().any().any():
            filled = knn.transform(x[numeric].to_numpy(float))
            for c in knn_columns:
                x[c] = x[c].fillna(pd.Series(filled[:, numeric.index(c)], index=x.index))
        x = x.fillna({c: v for c, v in fills.items() if c in numeric})
        cats = cats.fillna({c: v for c, v in fills.items() if c in categorical})
        for c, (centre, spread) in scaling.items():
            x[c] = (x[c] - centre) / spread
        hot = {f"{c}={v}": (cats[c] == v).astype(float) for c, values in categories.items() for v in values}
        features = pd.concat([x, pd.DataFrame(flags), pd.DataFrame(hot)], axis=1)[columns].to_numpy(np.float32)
        logits = session.run(None, {"x": features})[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        table = pa.table({"rownames": chunk["rownames"].to_numpy(), "predicted": np.asarray(classes)[probs.argmax(1)],
                          **{f"prob_{c}": probs[:, i] for i, c in enumerate(classes)}})
        writer = writer or pq.ParquetWriter(out / "predictions.parquet", table.schema)
        writer.write_table(table)
        rows += len(chunk)
    writer.close()
    return {"rows": rows, "predicted": rows, "seconds": time.perf_counter() - started}


def child(side: str, project: Path, source: Path, out: Path, chunk_rows: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    result = (trainflow_side if side == "trainflow" else script_side)(project, source, out, chunk_rows)
    result["peak_mem_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


def run_side(side: str, project: Path, source: Path, out: Path, chunk_rows: int) -> dict:
    env = dict(os.environ, TRAINFLOW_WARM="0", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, __file__, "--child", side, "--project", str(project), "--input", str(source),
           "--output", str(out), "--chunk-rows", str(chunk_rows)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{side} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["rows_per_s"] = round(result["rows"] / result["seconds"], 1)
    print(f"  {side}: {result['rows']} rows in {result['seconds']:.1f} s ({result['rows_per_s']:.0f} rows/s), "
          f"peak {result['peak_mem_mb']:.0f} MB", flush=True)
    return result


# ------------------------------------------------------------------------------ the data
def make_input(project: Path, rows: int, path: Path, seed: int = 0) -> None:
    """`rows` rows of the credit table drawn with replacement, numbered, without the label: a CSV."""
    table = pd.concat([pd.read_parquet(project / f"data/raw/source/{s}.parquet") for s in ("train", "val", "test")])
    table = table.drop(columns=["Status"]).reset_index(drop=True)
    rng = np.random.default_rng(seed)
    for start in range(0, rows, 500_000):
        n = min(500_000, rows - start)
        part = table.iloc[rng.integers(0, len(table), n)].reset_index(drop=True)
        part["rownames"] = np.arange(start, start + n)
        part.to_csv(path, mode="w" if start == 0 else "a", header=start == 0, index=False)


def build_project(tmp: Path) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import copy_repo

    root = copy_repo(tmp / "repo")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_HOME=str(root / "examples/credit/.prefect"))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=root, check=True, env=env, capture_output=True)
    project = root / "examples/credit"
    print("building the credit example (dvc repro evaluate) ...", flush=True)
    try:
        subprocess.run(["dvc", "repro", "evaluate"], cwd=project, env=env, check=True, capture_output=True)
    finally:
        subprocess.run([sys.executable, "-m", "flows._server", "stop"], cwd=project, env=env, capture_output=True)
        subprocess.run([sys.executable, "-c", "import flows._warm as w; w.stop()"], cwd=root, env=env, capture_output=True)
    return project


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--scale", type=int, default=5, help="the memory check's input is this many times larger (1: none)")
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--project", type=Path, help="a built credit project (default: build one in a temporary copy)")
    parser.add_argument("--child", choices=["trainflow", "script"], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.project.resolve(), args.input, args.output, args.chunk_rows)

    with tempfile.TemporaryDirectory(prefix="trainflow-predict-bench-") as tmp:
        tmp = Path(tmp)
        project = (args.project or build_project(tmp)).resolve()
        print(f"{args.rows} rows shaped like the credit table, {args.chunk_rows} a chunk, 1 thread each", flush=True)
        source = tmp / "new.csv"
        make_input(project, args.rows, source)
        small = tmp / "small.csv"  # exports and caches the champion's ONNX, so neither timed run pays for it
        make_input(project, 1000, small)
        run_side("trainflow", project, small, tmp / "warmup", args.chunk_rows)
        mine = run_side("trainflow", project, source, tmp / "trainflow", args.chunk_rows)
        theirs = run_side("script", project, source, tmp / "script", args.chunk_rows)
        a = pd.read_parquet(tmp / "trainflow/predictions.parquet").set_index("rownames")
        b = pd.read_parquet(tmp / "script/predictions.parquet").set_index("rownames").loc[a.index]
        agree = float((a["predicted"].to_numpy() == b["predicted"].to_numpy()).mean())
        prob_diff = float(np.abs(a.filter(like="prob_").to_numpy() - b.filter(like="prob_").to_numpy()).max())
        print(f"  agreement on the {len(a)} rows both scored: labels {agree:.6f}, max |prob diff| {prob_diff:.2e}")
        result = {"rows": args.rows, "chunk_rows": args.chunk_rows, "rows_per_s": mine["rows_per_s"],
                  "script_rows_per_s": theirs["rows_per_s"], "ratio": round(mine["rows_per_s"] / theirs["rows_per_s"], 3),
                  "peak_mem_mb": mine["peak_mem_mb"], "script_peak_mem_mb": theirs["peak_mem_mb"],
                  "quarantined": mine["rows"] - mine["predicted"], "label_agreement": agree, "max_prob_diff": prob_diff}
        if args.scale > 1:
            (tmp / "trainflow/predictions.parquet").unlink()
            source.unlink()
            make_input(project, args.rows * args.scale, source)
            big = run_side("trainflow", project, source, tmp / "big", args.chunk_rows)
            result |= {f"peak_mem_mb_{args.scale}x": big["peak_mem_mb"], f"rows_per_s_{args.scale}x": big["rows_per_s"]}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
