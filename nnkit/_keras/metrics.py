"""The direction (minimize or maximize) of a compiled metric, as Keras's own callbacks infer it.

Assumption (probe in ``tests/_keras/test_probes.py``):

- ``metric-direction``: after ``compile`` and the first train step,
  ``model.metrics`` holds Keras's compiled-metrics containers
  (``CompileMetrics``, ``MetricsList``), whose ``metrics`` are the user's
  metric objects; each built-in metric carries ``_direction``, ``"up"``
  (accuracy, AUC, ...) or ``"down"`` (errors). Keras's ``MonitorCallback``
  reads the same attributes.
"""

from keras.src.trainers import compile_utils

_CONTAINERS = (compile_utils.CompileMetrics, compile_utils.MetricsList)


def compiled_metrics(model):
    """The metric objects compiled into ``model`` (empty before the first step)."""
    found = []
    for metric in getattr(model, "metrics", None) or []:
        if isinstance(metric, _CONTAINERS):
            found.extend(metric.metrics)
    return found


def metric_direction(model, name):
    """``"max"``/``"min"`` for the compiled metric called ``name``, or ``None`` if unknown."""
    direction = None
    for metric in compiled_metrics(model):
        known = getattr(metric, "_direction", None)
        if metric.name == name and known in ("up", "down"):
            direction = "max" if known == "up" else "min"
    return direction
