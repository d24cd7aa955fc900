"""The one exception type for user mistakes (bad params, bad data, missing files).

A `UserError` ends a stage with its message on one line and a non-zero exit, no traceback;
anything else is a bug in trainflow and keeps its traceback.
"""


class UserError(Exception):
    """A problem the user can fix; the message names the file, key or column and what is wrong."""
