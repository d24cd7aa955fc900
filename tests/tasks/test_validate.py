import numpy as np
import pandas as pd

from tasks.config import ValidateConfig
from tasks.ingest import read_source
from tasks.validate import REASON, verdict, validate_split


def _frame(params):
    return read_source(params.ingest.source, params.data).head(200).astype({f"px_{i:04d}": float for i in range(64)})


def test_bad_rows_are_quarantined_with_their_reason_and_nothing_is_lost(params):
    frame = _frame(params)
    frame.loc[3, "px_0010"] = 99.0  # outside the 0..16 pixel range
    frame.loc[5, "label"] = 42  # not a known class
    frame.loc[7, "px_0001"] = np.nan  # missing is allowed in Raw: repair deals with it
    valid, quarantine, report = validate_split.fn(frame, params.data, list(range(10)))
    assert sorted(quarantine["id"]) == [frame.loc[3, "id"], frame.loc[5, "id"]]
    reasons = dict(zip(quarantine["id"], quarantine[REASON]))
    assert "px_0010" in reasons[frame.loc[3, "id"]] and "99" in reasons[frame.loc[3, "id"]]
    assert "label" in reasons[frame.loc[5, "id"]]
    assert len(valid) + len(quarantine) == len(frame)
    assert report.quarantined == 2 and {c["column"] for c in report.checks} == {"px_0010", "label"}


def test_frame_level_problems_are_fatal_and_named(params):
    frame = _frame(params)
    _, _, report = validate_split.fn(frame.drop(columns="label"), params.data, list(range(10)))
    assert report.fatal and "label column missing" in report.fatal[0]
    frame["px_0003"] = np.nan
    _, _, report = validate_split.fn(frame, params.data, list(range(10)))
    assert "px_0003" in report.fatal[0] and "every value is missing" in report.fatal[0]


def test_verdict_fails_past_threshold_naming_worst_column(params):
    frame = _frame(params)
    frame.loc[:20, "px_0005"] = 500.0
    _, _, report = validate_split.fn(frame, params.data, list(range(10)))
    message = verdict({"source/train": report}, ValidateConfig(max_invalid_fraction=0.05), {})
    assert "source/train" in message and "px_0005" in message and "21/200" in message
    assert verdict({"source/train": report}, ValidateConfig(max_invalid_fraction=0.5), {}) is None
