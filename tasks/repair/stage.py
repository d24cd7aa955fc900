"""The repair stage's logic: fit on each data set's train split, apply to val and test, check.

Pure: validated frames and their quarantines in; repaired frames, the fitted repairers, ledgers and
summaries out (flows/repair.py reads and writes them). Every validated or quarantined id must come
out repaired, quarantined, or in the ledger as dropped, and the result must hold the Repaired
schema; either failing is a bug, named in one line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pandera.pandas as pa

from tasks.config import Params
from tasks.errors import UserError
from tasks.frames import SPLITS, feature_columns
from tasks.repair.ledger import concat, unaccounted
from tasks.repair.repairer import Repairer, repair_split, repair_train, summarise
from tasks.schemas import repaired_schema


@dataclass
class Repaired:
    """Per data set: the repaired splits, the fitted repairer, the ledger of every split, and a
    summary per split (what changed, what was found)."""

    frames: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)
    repairers: dict[str, Repairer] = field(default_factory=dict)
    ledgers: dict[str, pd.DataFrame] = field(default_factory=dict)
    summaries: dict[str, dict[str, dict]] = field(default_factory=dict)


def run(params: Params, validated: dict[str, dict[str, pd.DataFrame]],
        quarantined: dict[str, dict[str, pd.DataFrame]]) -> Repaired:
    out = Repaired()
    for name, frames in validated.items():
        held = quarantined[name]
        # New rows (resampling) are numbered after every id the data set has, quarantined ones included.
        first_id = 1 + max(int(f[params.data.id].max()) for f in [*frames.values(), *held.values()] if len(f))
        repairer, train, train_ledger, train_found = repair_train(frames["train"], params.repair, params.data,
                                                                  params.validate_.schema_, first_id)
        repaired, ledgers, found = {"train": train}, {"train": train_ledger}, {"train": train_found}
        for split in ("val", "test"):
            repaired[split], ledgers[split], found[split] = repair_split(repairer, frames[split], split)
        out.frames[name] = _checked(name, params, repairer, frames, held, repaired, ledgers)
        out.repairers[name], out.ledgers[name] = repairer, concat([ledgers[s] for s in SPLITS])
        out.summaries[name] = {s: summarise(frames[s], out.frames[name][s], ledgers[s], params.data, found[s])
                               | {"quarantined": len(held[s]), "unaccounted": 0} for s in SPLITS}
    return out


def _checked(name: str, params: Params, repairer: Repairer, frames: dict, held: dict, repaired: dict,
             ledgers: dict) -> dict[str, pd.DataFrame]:
    data = params.data
    classes = sorted(repaired["train"][data.label].unique())
    schema = repaired_schema(data, feature_columns(repaired["train"], data), classes, params.validate_.schema_,
                             repairer.binary_columns(), repairer.scaled_columns())
    checked = {}
    for split in SPLITS:
        ids = np.concatenate([frames[split][data.id], held[split].get(data.id, [])])
        lost = unaccounted(ids, repaired[split][data.id], held[split].get(data.id, []), ledgers[split])
        if len(lost):
            raise UserError(f"{name}/{split}: {len(lost)} row(s) lost by repair (e.g. id {lost[0]}); this is a bug")
        try:
            checked[split] = schema.validate(repaired[split], lazy=True)
        except pa.errors.SchemaErrors as e:
            case = e.failure_cases.iloc[0]
            raise UserError(f"{name}/{split} after repair: column '{case['column']}' fails {case['check']} "
                            f"({len(e.failure_cases)} failures); the repair did not deliver the Repaired schema") from None
    return checked


def summary_markdown(summaries: dict) -> str:
    lines = ["# Repair summary", "", "| split | rows before | rows after | quarantined | missing before | missing after "
             "| clipped | dropped | added | classes before -> after |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, splits in summaries.items():
        for split, s in splits.items():
            classes = ", ".join(f"{c}: {s['class_counts_before'].get(c, 0)} -> {n}" for c, n in s["class_counts_after"].items()) \
                if "class_counts_after" in s else f"label mean {s['label_mean_before']} -> {s['label_mean_after']}"
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
