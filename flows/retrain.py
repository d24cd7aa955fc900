"""The scheduled job: pull, rebuild, evaluate and gate, push only a promoted model.

1. `dvc pull --allow-missing` from the DVC remote: the data and outputs of the last promoted run,
   so DVC reruns only what changed since (a first run, with nothing on the remote yet, pulls nothing).
2. The pipeline flow (flows/pipeline.py) as a subflow: every stage of dvc.yaml, DVC deciding
   what is stale; evaluate's gate writes reports/evaluate/gate.json, which is read here, not redone.
3. `dvc push` only if the gate promoted the model: the remote then holds what dvc.lock names
   (data, the promoted model and the outputs in between), and a next run's pull starts from there.
4. A `retrain-summary` artifact: what was pulled, which stages ran, the gate's verdict, the push.

Pull and push touch the network, so they are retried with exponential backoff; a stage that
fails, or a missing remote, fails the same way again and is not retried.

    python -m flows.retrain [--remote NAME] [--force] [-S KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed
from prefect.tasks import exponential_backoff

from flows._stage import REPORTS, fails_cleanly
from flows.pipeline import pipeline, stage_env
from tasks.errors import UserError

GATE = REPORTS / "evaluate" / "gate.json"


@task(cache_policy=NO_CACHE)
def resolve_remote(remote: str | None) -> str:
    """The DVC remote to use: the one named, else DVC's default; none configured is a user error."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        names, default = list(repo.config["remote"]), repo.config["core"].get("remote")
    name = remote or default
    if not name:
        raise UserError(".dvc/config: no DVC remote to pull from and push to; add one with "
                        "`dvc remote add -d NAME URL` (`make deploy` adds a local folder)")
    if name not in names:
        raise UserError(f".dvc/config: no DVC remote named '{name}' (configured: {', '.join(names) or 'none'})")
    return name


class TransferError(Exception):
    """dvc pull/push failed: the network, the remote's storage or credentials; worth a retry."""


@task(retries=3, retry_jitter_factor=0.5, cache_policy=NO_CACHE)
def dvc_transfer(command: str, remote: str) -> str:
    """`dvc pull` / `dvc push` against `remote`, its output in the run's log; the last line back."""
    logger = get_run_logger()
    args = [sys.executable, "-m", "dvc", command, "--remote", remote, *(["--allow-missing"] if command == "pull" else [])]
    result = subprocess.run(args, capture_output=True, text=True, env=stage_env())
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    for line in lines:
        logger.info(line)
    if result.returncode != 0:
        raise TransferError(f"dvc {command} --remote {remote}: exit {result.returncode}: {lines[-1] if lines else ''}")
    return lines[-1] if lines else ""


def _summary(remote: str, pulled: str, stages: list[dict], gate: dict | None, pushed: str | None, failure: str | None) -> str:
    rows = "\n".join(f"| {s.get('stage')} | {s.get('outcome')} | {s.get('reason', '')} |" for s in stages)
    evaluated = {s.get("stage"): s.get("outcome") for s in stages}.get("evaluate")
    origins = {"ran": "this run", "skipped": "an earlier run: evaluate was up to date"}
    origin = origins.get(evaluated, "the last evaluate that ran")
    verdict = ("no verdict (no evaluate has run)" if gate is None else
               f"{'**promoted**' if gate.get('promoted') else '**not promoted**'} ({origin}): {gate.get('reason', '')}")
    lines = [f"# Retrain: {'failed' if failure else 'promoted and pushed' if pushed is not None else 'done, nothing pushed'}", "",
             f"- remote: `{remote}`", f"- pull: {pulled}", f"- gate ({GATE}): {verdict}",
             f"- model: `{gate.get('model')}` sha256 `{str(gate.get('weights_sha256'))[:12]}`" if gate else "- model: none",
             f"- push: {pushed if pushed is not None else 'skipped (only a promoted model is pushed)'}"]
    if failure:
        lines.append(f"- failure: {failure}")
    return "\n".join([*lines, "", "| stage | outcome | reason |", "|---|---|---|", rows, ""])


@flow(name="retrain", log_prints=True)
@fails_cleanly
def retrain(remote: str | None = None, force: bool = False, overrides: list[str] | None = None,
            retry_base_s: float = 10.0) -> dict:
    """Pull, rebuild (pipeline subflow), read the gate, push a promoted model, publish a summary."""
    name = resolve_remote(remote)
    transfer = dvc_transfer.with_options(retry_delay_seconds=exponential_backoff(backoff_factor=retry_base_s))
    pulled = transfer("pull", name)
    state = pipeline(targets=None, force=force, overrides=overrides, return_state=True)
    stages = state.result() if state.is_completed() else []
    # An up-to-date evaluate was skipped: its gate.json is the verdict on this same model, still valid.
    gate = json.loads(GATE.read_text()) if GATE.exists() else None
    pushed = transfer("push", name) if state.is_completed() and gate and gate.get("promoted") else None
    failure = None if state.is_completed() else f"pipeline: {state.message}"
    create_markdown_artifact(_summary(name, pulled, stages, gate, pushed, failure), key="retrain-summary",
                             description="Nightly retrain: pull, stages, gate, push")
    print(f"retrain: gate {'promoted' if gate and gate.get('promoted') else 'not promoted'}; "
          f"push {'done' if pushed is not None else 'skipped'}")
    if failure:
        return Failed(message=failure)
    return {"remote": name, "promoted": bool(gate and gate.get("promoted")), "pushed": pushed is not None,
            "stages": {s["stage"]: s["outcome"] for s in stages}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.retrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--remote", help="DVC remote name (default: DVC's default remote)")
    parser.add_argument("-f", "--force", action="store_true", help="rerun every stage")
    parser.add_argument("-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    from flows._stage import run_flow

    return run_flow(retrain, args.remote, args.force, args.overrides)


if __name__ == "__main__":
    sys.exit(main())
