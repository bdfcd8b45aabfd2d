"""What ``GradientNormMonitor`` shows: its epoch-log figures, its messages, its TensorBoard files."""

import numpy as np

from nnkit.diagnostics import describe_layers, diagnose

#: The summary figures every epoch's logs get (``log_layers=False``).
SUMMARY_KEYS = ("grad_norm", "grad_norm_min", "grad_norm_max", "nonfinite_grads")


def _median(values):
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")


def sample_figures(rows, layers):
    """The figures of the last sample in ``rows`` (``None`` when ``rows`` holds no sample).

    ``grad_norm`` is the global norm, ``grad_norm_min``/``grad_norm_max``
    the smallest and largest group norms (vanishing and exploding ends);
    the per-group norms and the epoch's median update ratio per group are
    kept for ``log_layers``.
    """
    if not len(rows["steps"]):
        return None
    grads, ratios = rows["grad_norms"], rows["update_ratios"]
    last = grads[-1]
    finite = last[np.isfinite(last)]
    figures = {
        "grad_norm": float(rows["global_norm"][-1]),
        "grad_norm_min": float(finite.min()) if finite.size else float("nan"),
        "grad_norm_max": float(finite.max()) if finite.size else float("nan"),
    }
    if "clipped_global_norm" in rows:
        figures["clipped_grad_norm"] = float(rows["clipped_global_norm"][-1])
    per_layer = {f"grad_norm/{name}": float(last[k]) for k, name in enumerate(layers)}
    per_layer.update(
        {f"update_ratio/{name}": _median(ratios[:, k]) for k, name in enumerate(layers)}
    )
    return figures, per_layer


def epoch_logs(sample, nonfinite_steps, *, log_layers):
    """The monitor's entries of an epoch's logs, from :func:`sample_figures` (or ``None``)."""
    logs = {}
    if sample is not None:
        figures, per_layer = sample
        logs.update(figures)
        if log_layers:
            logs.update(per_layer)
    logs["nonfinite_grads"] = nonfinite_steps
    return logs


def stop_message(step, layer, count):
    """What ``on_nonfinite="stop"`` says when it stops training."""
    where = f"in {layer!r} first" if layer is not None else "(group unknown)"
    return (
        f"GradientNormMonitor stopped training: NaN/inf gradients at step {step} {where} "
        f"({count} step(s) with non-finite gradients so far). Lower the learning rate, clip "
        "gradients or check the loss for log(0) and overflow; "
        "GradientNormMonitor.report() shows the norms before it."
    )


def skip_message(skipped, first_step, layer):
    """What ``on_nonfinite="skip"`` warns at an epoch end where it skipped updates."""
    return (
        f"GradientNormMonitor skipped {skipped} update(s) with NaN/inf gradients this epoch "
        f"(the first of the run at step {first_step}, in {layer!r}). A skipped step leaves the "
        "weights, the optimizer's slots and optimizer.iterations as they were, so the "
        f"learning-rate schedule now runs {skipped} step(s) more behind fit's batch count."
    )


class Summaries:
    """TensorBoard scalars per sample and histograms per epoch, in ``log_dir``."""

    def __init__(self, log_dir):
        self.log_dir = log_dir
        self._writer = None

    def write(self, rows, layers):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for t, step in enumerate(rows["steps"].tolist()):
                tf.summary.scalar("grad_norm", rows["global_norm"][t], step=step)
                for k, name in enumerate(layers):
                    tf.summary.scalar(f"grad_norm/{name}", rows["grad_norms"][t, k], step=step)
                    tf.summary.scalar(
                        f"update_ratio/{name}", rows["update_ratios"][t, k], step=step
                    )
            if len(rows["steps"]):
                for k, name in enumerate(layers):
                    tf.summary.histogram(
                        f"grad_norm_hist/{name}", rows["grad_norms"][:, k], step=rows["steps"][-1]
                    )
        self._writer.flush()

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def report(history, layers, rules, model):
    """Diagnose every sample in ``history`` (a ``nnkit.diagnostics.GradientReport``)."""
    nonfinite = np.asarray(history["nonfinite"], "int64").reshape(-1, len(layers))
    return diagnose(
        np.asarray(history["steps"], "int64"),
        layers,
        np.asarray(history["grad_norms"], "float64").reshape(nonfinite.shape),
        update_ratios=np.asarray(history["update_ratios"]).reshape(nonfinite.shape),
        weight_norms=np.asarray(history["weight_norms"]).reshape(nonfinite.shape),
        global_norms=np.asarray(history["global_norm"], "float64"),
        nonfinite=nonfinite,
        rules=rules,
        layer_info=describe_layers(model) if model is not None and model.built else None,
    )
