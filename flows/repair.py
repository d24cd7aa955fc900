"""Stage repair: data/validated -> data/repaired, with the fitted repairer and a ledger.

The repairer is fitted on train only and saved in data/repaired/<dataset>/ (repairer.json, plus
knn_reference.parquet / estimators.skops when those estimators are used); val and test get the
same transformation unchanged. Every change is a ledger row (ledger.parquet). The stage checks
that no row went missing (each validated or quarantined id is in the output, the quarantine, or
the ledger as dropped), then validates the result against the stricter Repaired schema.
"""

from __future__ import annotations

import numpy as np
import pandera.pandas as pa
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows._stage import REPAIRED, REPORTS, VALIDATED, fails_cleanly, run_stage
from tasks.config import Params
from tasks.errors import UserError
from tasks.frames import SPLITS, feature_columns
from tasks.io import load_frame, save_frame, save_json, save_text
from tasks.repair import concat, repair_split, repair_train, summarise, unaccounted
from tasks.schemas import repaired_schema


@flow(name="repair")
@fails_cleanly
def repair(params: Params) -> dict:
    data, spec, summaries = params.data, params.validate_.schema_, {}
    for name in params.dataset_names():
        frames = {split: load_frame(VALIDATED / name / f"{split}.parquet") for split in SPLITS}
        quarantined = {split: load_frame(VALIDATED / name / f"{split}.quarantine.parquet") for split in SPLITS}
        first_id = 1 + max(int(f[data.id].max()) for f in [*frames.values(), *quarantined.values()] if len(f))
        repairer, repaired_train, train_ledger, train_findings = repair_train(
            frames["train"], params.repair, data, spec, first_id)
        repaired, ledgers, findings = {"train": repaired_train}, {"train": train_ledger}, {"train": train_findings}
        for split in ("val", "test"):
            repaired[split], ledgers[split], findings[split] = repair_split(repairer, frames[split], split)

        classes = sorted(repaired["train"][data.label].unique())
        schema = repaired_schema(data, feature_columns(repaired["train"], data), classes, spec, repairer.binary_columns(),
                                 repairer.scaled_columns())
        summaries[name] = {}
        for split in SPLITS:
            lost = unaccounted(np.concatenate([frames[split][data.id], quarantined[split].get(data.id, [])]),
                               repaired[split][data.id], quarantined[split].get(data.id, []), ledgers[split])
            if len(lost):
                raise UserError(f"{name}/{split}: {len(lost)} row(s) lost by repair (e.g. id {lost[0]}); this is a bug")
            try:
                repaired[split] = schema.validate(repaired[split], lazy=True)
            except pa.errors.SchemaErrors as e:
                case = e.failure_cases.iloc[0]
                raise UserError(f"{name}/{split} after repair: column '{case['column']}' fails {case['check']} "
                                f"({len(e.failure_cases)} failures); the repair did not deliver the Repaired schema") from None
            save_frame(repaired[split], REPAIRED / name / f"{split}.parquet")
            summaries[name][split] = summarise(frames[split], repaired[split], ledgers[split], data, findings[split]) | {
                "quarantined": len(quarantined[split]), "unaccounted": 0}
        save_frame(concat([ledgers[s] for s in SPLITS]), REPAIRED / name / "ledger.parquet")
        repairer.save(REPAIRED / name)

    save_json(summaries, REPORTS / "repair" / "summary.json")
    markdown = _markdown(summaries)
    save_text(markdown, REPORTS / "repair" / "summary.md")
    create_markdown_artifact(markdown, key="repair-summary", description="What repair changed, per split")
    create_table_artifact([{"dataset": n, "class": c, "before": s["train"]["class_counts_before"].get(c, 0), "after": n_after}
                           for n, s in summaries.items() for c, n_after in s["train"]["class_counts_after"].items()],
                          key="class-counts", description="Train class counts before and after repair")
    return summaries


def _markdown(summaries: dict) -> str:
    lines = ["# Repair summary", "", "| split | rows before | rows after | quarantined | missing before | missing after "
             "| clipped | dropped | added | classes before -> after |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, splits in summaries.items():
        for split, s in splits.items():
            classes = ", ".join(f"{c}: {s['class_counts_before'].get(c, 0)} -> {n}" for c, n in s["class_counts_after"].items())
            lines.append(f"| {name}/{split} | {s['rows_before']} | {s['rows_after']} | {s['quarantined']} "
                         f"| {s['missing_before']} | {s['missing_after']} | {s['clipped_values']} "
                         f"| {s['rows_dropped']} | {s['rows_added']} | {classes} |")
    for name, splits in summaries.items():
        for split, s in splits.items():
            lines += ["", f"## {name}/{split}", "", "| rule | changes |", "|---|---:|"]
            lines += [f"| {rule} | {n} |" for rule, n in s["changes"].items()] or ["| (none) | 0 |"]
            if s["missing_by_column"]:
                lines += ["", "Missing before repair: " + ", ".join(f"{c} {n}" for c, n in s["missing_by_column"].items())]
            if s["findings"]:
                lines += ["", "Found: " + ", ".join(f"{k} {v}" for k, v in s["findings"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    run_stage(repair)
