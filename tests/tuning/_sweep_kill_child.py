"""A sweep that kills itself with SIGKILL at the ``KILL_AT``-th training run or study write.

Run by ``test_sweep_kill.py`` as ``python -m tests.tuning._sweep_kill_child DIR KILL_AT WHEN``:
``WHEN`` is ``begin``, ``epoch`` or ``end`` (that hook of the ``KILL_AT``-th run),
``write`` (midway through the ``KILL_AT``-th atomic write of a study file: the
temporary file written, not yet renamed) or ``never``.
"""

import os
import signal
import sys

import keras

from tests.tuning.test_sweep import _build, _tune


class KillAtRun(keras.callbacks.Callback):
    runs = 0  # class-wide: keras-tuner deep-copies callbacks

    def __init__(self, kill_at, when):
        super().__init__()
        self.kill_at, self.when = kill_at, when

    def _maybe_kill(self, when):
        if KillAtRun.runs == self.kill_at and self.when == when:
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_begin(self, logs=None):
        KillAtRun.runs += 1
        self._maybe_kill("begin")

    def on_epoch_end(self, epoch, logs=None):
        self._maybe_kill("epoch")

    def on_train_end(self, logs=None):
        self._maybe_kill("end")  # trained, not yet recorded


def kill_at_write(directory, kill_at):
    """SIGKILL just before the n-th rename of an atomic write into the study (not ``tuner/``)."""
    count = [0]
    replace = os.replace
    study = os.path.abspath(directory)
    tuner = os.path.join(study, "tuner")

    def dying_replace(source, target):
        target_path = os.path.abspath(os.fspath(target))
        if target_path.startswith(study + os.sep) and not target_path.startswith(tuner):
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # the temporary file is written
        return replace(source, target)

    os.replace = dying_replace


if __name__ == "__main__":
    directory, kill_at, when = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if when == "write":
        kill_at_write(directory, kill_at)
    _tune(_build, directory, max_trials=4, callbacks=[KillAtRun(kill_at, when)])
