"""The one exception type for user mistakes (bad params, bad data, missing files).

A `UserError` ends a stage with its message on one line and a non-zero exit, no traceback;
anything else is a bug in trainflow and keeps its traceback. `TrainingDiverged` is the user error
of a training run whose loss or weights went to NaN or infinity (lightning_modules/epoch_means.py
raises its plain `Diverged`; the training code in tasks/ turns it into this); its line names the
params to change.
"""

import logging


class UserError(Exception):
    """A problem the user can fix; the message names the file, key or column and what is wrong."""


# What a training run is called and the params blocks it reads, by the Prefect task or flow that runs
# it: each stage's flow is named after its block, and compress trains in two tasks with blocks of their own.
TRAINING_RUNS = {
    "prune_candidate": ("the pruning fine-tune", "compress.prune_optimizer", "compress.prune_trainer"),
    "distill_candidate": ("distillation", "compress.distill.optimizer", "compress.distill.trainer"),
    "finetune": ("fine-tuning", "finetune.optimizer", "finetune.trainer"),
    "train": ("training", "train.optimizer", "train.trainer"),
}


def training_run() -> tuple[str, str, str]:
    """(name, optimizer key, trainer key) of the training that is running; train's outside Prefect.

    Read from Prefect's run context rather than passed down: only this error message needs it, and
    the same Lightning modules train in three stages."""
    from prefect.context import FlowRunContext, TaskRunContext

    task, flow = TaskRunContext.get(), FlowRunContext.get()
    for name in (task.task.name if task else None, flow.flow.name if flow else None):
        if name in TRAINING_RUNS:
            return TRAINING_RUNS[name]
    return TRAINING_RUNS["train"]


class TrainingDiverged(UserError):
    """Training went to NaN or infinity: the weights are useless from there on, so the stage stops
    instead of writing them. Made by `diverged()`."""


def diverged(what: str) -> TrainingDiverged:
    """The one line for `what` ("stopped at epoch 2 of 10: the mean training loss is nan"), naming the
    running training and its params. The stage prints it after its own name:
    `error: compress: distillation stopped at epoch 2 of 10: ...; likely cause: ...`."""
    name, optimizer, trainer = training_run()
    return TrainingDiverged(f"{name} {what}; likely cause: learning rate too high or inputs not finite: "
                            f"lower {optimizer}.lr, set {trainer}.gradient_clip_val, check the data")


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a failed task with its traceback; for a UserError the one-line message is the
    whole story (the stage repeats it as its `error:` line), so the traceback is left out."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info, record.exc_text = None, None
        return True


# Records are filtered by the logger that creates them: Prefect's task-run logger is this one.
logging.getLogger("prefect.task_runs").addFilter(_NoTracebackForUserErrors())
