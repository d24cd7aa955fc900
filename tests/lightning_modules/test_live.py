"""The dvclive logger's sync decision, by frame names instead of inspect.stack()."""

from lightning_modules.live import SYNC_CALLERS, called_from


def test_called_from_sees_a_caller_anywhere_up_the_stack():
    def log_eval_end_metrics():  # one of Lightning's functions after which dvclive writes its files
        return inner()

    def inner():
        return called_from(SYNC_CALLERS)

    assert log_eval_end_metrics() and not inner()
