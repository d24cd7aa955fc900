"""Faults around files: unwritable outputs, a full disk, a source read that fails once.

tasks/io.py writes through a temporary file and a rename, and turns OSError into a one-line
UserError naming the path; flows/ingest.py retries a source read that fails with an I/O error
(never a user mistake, which would fail the same way again).
"""

from __future__ import annotations

import errno
import os

import pandas as pd
import pytest

from tasks import io
from tasks.errors import UserError

FRAME = pd.DataFrame({"id": [0, 1], "x": [1.0, 2.0], "label": [0, 1]})


def test_an_output_folder_that_cannot_be_created_is_named(tmp_path):
    (tmp_path / "data").write_text("a file where a folder should be")  # works even as root
    message = r"data: is a file where trainflow keeps a folder of outputs \(.*data/raw/train\.parquet\): move it away"
    with pytest.raises(UserError, match=message):
        io.save_frame(FRAME, tmp_path / "data" / "raw" / "train.parquet")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_named(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(UserError, match=r"out: cannot write outputs here \(Permission denied\)"):
            io.save_json({"a": 1}, folder / "report.json")
    finally:
        folder.chmod(0o755)


def test_a_full_disk_is_named_and_leaves_the_old_output_whole(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    io.save_json({"accuracy": 0.9}, target)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    disk_full = r"could not be written \(the disk is full: free some space and rerun; the earlier outputs are unchanged\)"
    monkeypatch.setattr(pd.DataFrame, "to_parquet", full)
    with pytest.raises(UserError, match=r"train\.parquet: " + disk_full):
        io.save_frame(FRAME, tmp_path / "train.parquet")
    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(UserError, match=r"metrics\.json: " + disk_full):
        io.save_json({"accuracy": 0.1}, target)
    assert io.load_json(target) == {"accuracy": 0.9}, "a failed write must not touch the previous output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"], "no temporary file is left behind"


def test_a_stage_with_an_unwritable_data_folder_fails_with_one_line(project, params, prefect_harness):
    from flows.ingest import ingest

    (project / "data").write_text("not a folder")
    state = ingest(params, return_state=True)
    assert state.is_failed()
    assert state.message == ("data: is a file where trainflow keeps a folder of outputs (data/raw/source/train.parquet): "
                             "move it away")


def test_a_transient_read_failure_is_retried(project, params, prefect_harness, monkeypatch):
    import flows.ingest as stage

    calls, real = [], stage.read_source

    def flaky(source, data):
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error")  # a network drive hiccup
        return real(source, data)

    monkeypatch.setattr(stage, "read_source", flaky)
    state = stage.ingest(params, return_state=True)
    assert state.is_completed(), state.message
    assert len(calls) == 2
    assert (project / "data/raw/source/train.parquet").exists()


def test_a_read_that_keeps_failing_ends_with_one_line_and_a_user_mistake_is_not_retried(project, params, prefect_harness,
                                                                                         monkeypatch):
    import flows.ingest as stage

    calls = []

    def broken(source, data):
        calls.append(1)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(stage, "read_source", broken)
    monkeypatch.setattr(stage.load_source, "retry_delay_seconds", [0, 0])
    state = stage.ingest(params, return_state=True)
    assert state.is_failed() and len(calls) == 3  # the first try and two retries
    assert state.message == "sklearn_digits: could not be read ([Errno 5] Input/output error)"

    def mistake(source, data):
        calls.append(1)
        raise UserError("in.csv: source file is empty")

    calls.clear()
    monkeypatch.setattr(stage, "read_source", mistake)
    state = stage.ingest(params, return_state=True)
    assert state.is_failed() and state.message == "in.csv: source file is empty"
    assert len(calls) == 1
