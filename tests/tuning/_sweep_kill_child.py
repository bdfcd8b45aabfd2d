"""A sweep that kills itself with SIGKILL at the ``KILL_RUN``-th training run (0: never).

Run by ``test_sweep_kill.py`` as ``python -m tests.tuning._sweep_kill_child DIR KILL_RUN``.
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


if __name__ == "__main__":
    directory, kill_at, when = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    _tune(_build, directory, max_trials=4, callbacks=[KillAtRun(kill_at, when)])
