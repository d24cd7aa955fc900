"""Repair: fit fixes on the train split only, apply them unchanged to every split, record each change.

Reads validated frames; returns repaired frames, the fitted `Repairer` (JSON, plus Parquet/skops
for the estimators that need them) and a ledger with one row per change. One module per concern:
rows (duplicates, conflicts, blanks), outliers, impute, encode, balance (imbalance, train only),
ledger, repairer (the fitted whole, its persistence and the summary), and stage (`run`: the repair
stage over every data set, with its checks).
"""

from tasks.repair.balance import class_weights, rebalance, resample
from tasks.repair.ledger import LEDGER_COLUMNS, concat, unaccounted
from tasks.repair.repairer import TRUSTED_TYPES, Repairer, repair_split, repair_train, summarise
from tasks.repair.stage import Repaired, run, summary_markdown

__all__ = ["LEDGER_COLUMNS", "TRUSTED_TYPES", "Repaired", "Repairer", "class_weights", "concat", "rebalance",
           "repair_split", "repair_train", "resample", "run", "summarise", "summary_markdown", "unaccounted"]
