"""The closing summary: every stage's line from its report, the headline against scratch, the gate,
the study over seeds only when it was measured with these params, and nothing wider than asked."""

from __future__ import annotations

import json
import subprocess
import sys

from flows.summary import fit, summary
from tasks.transfer_study import params_digest
from tests.conftest import ROOT, shrunk_params_dict


def _write(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def _reports(root):
    r = root / "reports"
    _write(r / "ingest.json", {"rows": 5000, "datasets": {"source": {"train": 1625, "val": 375, "test": 500}}})
    _write(r / "validate" / "metrics.json",
           {"source/train": {"rows": 1625, "quarantined": 3}, "source/val": {"rows": 375, "quarantined": 0}})
    split = {"missing_before": 7, "clipped_values": 2, "rows_dropped": 1, "rows_added": 0,
             "changes": {"impute": 7, "clip": 2, "drop": 1}}
    _write(r / "repair" / "summary.json", {"source": {"train": split}})
    _write(r / "augment.json", {"source": {"rows_before": 1625, "rows_after": 3250}})
    _write(r / "train" / "train_metrics.json", {"val_acc": 0.98, "val_loss": 0.07})
    (r / "train" / "train_history.csv").write_text("epoch,val/acc\n0,0.9\n1,0.98\n")
    _write(r / "evaluate" / "metrics.json", {"accuracy": 0.97, "macro_f1": 0.969, "samples": 500, "scratch_accuracy": 0.95,
                                             "gain_accuracy": 0.02})
    _write(r / "evaluate" / "gate.json", {"promoted": False, "reason": "accuracy 0.97 fails vs champion " + "x" * 200})
    _write(r / "compress" / "metrics.json", {"chosen": "student", "accuracy_before": 0.97, "accuracy_after": 0.968,
                                             "size_reduction": 5.1, "onnx_max_abs_diff": 9.5e-6})
    _write(r / "predict" / "summary.json", {"rows": 500, "predicted": 499, "quarantined": 1,
                                            "drift": "no drift past the thresholds (500 rows against 1625 train rows)"})
    return r


def test_each_stage_reports_what_it_did(tmp_path):
    text = "\n".join(summary(_reports(tmp_path), None))
    assert "5000 rows, split train/val/test: source 1625/375/500" in text
    assert "2000 rows checked, 3 quarantined (why: reports/validate/report.md)" in text
    assert "10 changes recorded in the ledger: 7 missing cells, 2 clipped, 1 rows dropped, 0 added" in text
    assert "train rows source 1625 -> 3250" in text
    assert "2 epochs, val/acc 0.98, val/loss 0.07" in text
    assert "accuracy 0.950, gain +2.0 points at this seed" in text
    assert "gate      NOT promoted: accuracy 0.97 fails" in text
    assert "chose student: accuracy 0.970 -> 0.968, 5.10x smaller" in text
    assert "predict   500 new rows: 499 predicted, 1 quarantined; no drift past the thresholds\n" in text


def test_the_study_over_seeds_shows_only_for_the_params_it_measured(tmp_path, monkeypatch):
    reports = _reports(tmp_path)
    monkeypatch.chdir(tmp_path)
    params = shrunk_params_dict()
    params["finetune"]["labels_per_class"] = 5
    study = {"params_digest": params_digest(params), "budgets": {"5": {"gains": [0.02, 0.04, 0.06]}}}
    _write(tmp_path / "benchmarks" / "results" / "transfer_gain.json", study)
    assert ("gain over 3 seeds (benchmarks/results/transfer_gain.json): +4.0 points mean, range +2.0 to +6.0"
            in "\n".join(summary(reports, params)))
    params["finetune"]["seed"] = 7  # the study varies the seed: still the same study
    params["train"]["trainer"]["progress_bar"] = True  # and no result depends on progress bars
    assert "+4.0 points mean" in "\n".join(summary(reports, params))
    params["finetune"]["optimizer"]["lr"] = 0.5  # another recipe: the study does not hold for it
    assert "gain over seeds: not measured for these params" in "\n".join(summary(reports, params))


def test_lines_are_cut_to_the_width_and_nothing_built_says_what_to_run(tmp_path):
    assert fit("x" * 200, 119) == "x" * 116 + "..."
    assert summary(tmp_path / "reports", None) == ["No stage reports yet under reports/: run 'make run' (or 'dvc repro')."]
    _reports(tmp_path)
    result = subprocess.run([sys.executable, "-m", "flows.summary", "--width", "100"], cwd=tmp_path, capture_output=True,
                            text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) >= 10 and max(map(len, result.stdout.splitlines())) <= 100
