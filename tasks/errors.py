"""The one exception type for user mistakes (bad params, bad data, missing files).

A `UserError` ends a stage with its message on one line and a non-zero exit, no traceback;
anything else is a bug in trainflow and keeps its traceback.
"""

import logging


class UserError(Exception):
    """A problem the user can fix; the message names the file, key or column and what is wrong."""


class _NoTracebackForUserErrors(logging.Filter):
    """Prefect logs a failed task with its traceback; for a UserError the one-line message is the
    whole story (the stage repeats it as its `error:` line), so the traceback is left out."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            record.exc_info, record.exc_text = None, None
        return True


# Records are filtered by the logger that creates them: Prefect's task-run logger is this one.
logging.getLogger("prefect.task_runs").addFilter(_NoTracebackForUserErrors())
