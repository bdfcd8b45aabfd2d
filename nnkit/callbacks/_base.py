"""Pieces every nnkit callback shares: config, deep copies, the monitored direction."""

import copy

from keras.src.trainers import compile_utils


class CallbackMixin:
    """``from_config`` and a ``__deepcopy__`` that never copies what the run attached.

    keras-tuner deep-copies callbacks for every trial. A copy keeps the
    settings and the state but not the model (nor anything listed in
    ``_not_copied``, e.g. an optimizer or a summary writer), which the next
    ``fit`` attaches again.
    """

    _not_copied = ("_model",)

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __deepcopy__(self, memo):
        result = copy.copy(self)
        memo[id(self)] = result
        for key, value in self.__dict__.items():
            result.__dict__[key] = None if key in self._not_copied else copy.deepcopy(value, memo)
        return result


def monitor_direction(model, monitor, mode, owner):
    """``"min"`` or ``"max"`` for ``monitor``, inferred like Keras's ``MonitorCallback``.

    ``mode="auto"`` means ``"min"`` for losses and the compiled metric's own
    direction otherwise; ``owner`` names the callback in the error.
    """
    if mode != "auto":
        return mode
    name = monitor.removeprefix("val_")
    direction = "min" if name == "loss" else None
    metrics = []
    for metric in getattr(model, "metrics", None) or []:
        if isinstance(metric, (compile_utils.CompileMetrics, compile_utils.MetricsList)):
            metrics.extend(metric.metrics)
    for metric in metrics:
        if metric.name == name and hasattr(metric, "_direction"):
            direction = "max" if metric._direction == "up" else "min"
    if direction is None:
        raise ValueError(
            f"{owner} cannot tell whether `monitor` should be minimized or maximized "
            f"(the model has no compiled metric of that name with a known direction). "
            f"Pass mode='min' or mode='max'. Received: monitor={monitor!r}"
        )
    return direction
