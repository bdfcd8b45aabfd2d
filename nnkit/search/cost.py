"""Cost of an architecture (parameters, FLOPs, latency) and the accuracy–cost Pareto front.

Analytic FLOPs are counted per example from the weights:
``2·Π(kernel shape)·Π(output spatial size)`` for a 1-D or 2-D convolution
(``2·k·c_in·c_out·L_out``, ``2·k_h·k_w·c_in·c_out·H_out·W_out``),
``2·n_in·n_out`` for every other rank-2 kernel (dense layers, also inside
nnkit's blocks). Biases, activations, normalization and pooling are not
counted (they are linear in the activations, small beside the products).

`measure_cost` prefers the compiler's count where the backend offers one: on
JAX the XLA cost analysis of the jitted forward pass (``jax.jit(...).lower(
...).compile().cost_analysis()["flops"]``, one example), which also counts
the element-wise work and skips the zero padding of ``"same"`` convolutions;
on TensorFlow ``tf.function``'s compiler IR is HLO text with no cost analysis,
so the analytic count is used. The record says which (``flops_source``).
"""

import keras
import numpy as np

from nnkit import _validation as v
from nnkit.search.latency import measure_latency

_CONVOLUTIONS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def count_flops(model):
    """Analytic floating-point operations of one example's forward pass (multiply-adds × 2).

    Args:
        model: A built Keras functional or sequential model. Required.

    Returns:
        An int: ``Σ 2·Π(kernel)·Π(output spatial)`` over 1-D and 2-D
        convolutions (``2·k·c_in·c_out·L_out``, ``2·k_h·k_w·c_in·c_out·H·W``)
        plus ``Σ 2·n_in·n_out`` over the other rank-2 kernels.

    Example:
    >>> import keras
    >>> from nnkit.search import count_flops
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4),
    ...                           keras.layers.Dense(2)])
    >>> count_flops(model)  # 2·8·4 + 2·4·2
    80
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
    total = 0
    for layer in model.layers:
        if isinstance(layer, _CONVOLUTIONS):
            total += 2 * int(np.prod(layer.kernel.shape)) * int(np.prod(layer.output.shape[1:-1]))
            continue
        for weight in layer.weights:
            if len(weight.shape) == 2 and weight.name.endswith("kernel"):
                total += 2 * int(weight.shape[0]) * int(weight.shape[1])
    return int(total)


def _xla_cost_flops(model):
    """FLOPs of one example's forward pass from XLA's cost analysis (JAX), else ``None``."""
    if keras.backend.backend() != "jax":
        return None
    import jax

    trainable = [variable.value for variable in model.trainable_variables]
    frozen = [variable.value for variable in model.non_trainable_variables]
    example = np.zeros((1, *model.input_shape[1:]), "float32")

    def forward(trainable, frozen, x):
        return model.stateless_call(trainable, frozen, x, training=False)[0]

    analysis = jax.jit(forward).lower(trainable, frozen, example).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per device
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return None if flops is None or not np.isfinite(flops) else int(round(float(flops)))


def measure_cost(model, *, latency=True, batch_size=32):
    """Parameters, FLOPs per example and (optionally) measured latency of a built model.

    Use it to record an architecture's cost before or after training (the
    cost does not depend on the weights, so an untrained model will do:
    ``search_architectures`` measures each proposal before training it).

    Formula: ``flops`` is XLA's cost analysis of the jitted forward pass on
    JAX (``flops_source="xla"``), else `count_flops`'s analytic count
    (``flops_source="analytic"``); ``flops_analytic`` is always the analytic
    count; latency is `measure_latency` on a batch of ``batch_size``.

    Args:
        model: A built Keras model with one input. Required.
        latency: Whether to measure the latency. Defaults to ``True``.
        batch_size: Examples in the timed batch. Defaults to ``32``.

    Returns:
        A dict: ``params``, ``flops``, ``flops_source``, ``flops_analytic``
        and, with ``latency=True``, ``latency_ms`` (median per batch) and
        ``latency_iqr_ms`` (interquartile range).

    Raises:
        TypeError: If ``model`` is not a Keras model.

    Example:
    >>> import keras
    >>> from nnkit.search import measure_cost
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> cost = measure_cost(model, latency=False)
    >>> cost["params"], cost["flops_analytic"]
    (36, 64)
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
    latency = v.check_bool("latency", latency)
    batch_size = v.check_positive_int("batch_size", batch_size)
    analytic = count_flops(model)
    compiled = _xla_cost_flops(model)
    cost = {
        "params": int(model.count_params()),
        "flops": analytic if compiled is None else compiled,
        "flops_source": "analytic" if compiled is None else "xla",
        "flops_analytic": analytic,
    }
    if latency:
        timing = measure_latency(model, batch_size=batch_size)
        cost["latency_ms"] = timing["median_ms"]
        cost["latency_iqr_ms"] = timing["iqr_ms"]
    return cost


def pareto_front(accuracy, cost):
    """Indices of the points no other point beats on both accuracy (higher) and cost (lower).

    A point is on the front when no other point has accuracy ``>=`` and cost
    ``<=`` with one of them strict. Returned in order of increasing cost.

    Args:
        accuracy: One number per architecture (higher is better). Required.
        cost: One number per architecture (lower is better), the same length.
            Required.

    Returns:
        A list of indices into the inputs.

    Example:
    >>> from nnkit.search import pareto_front
    >>> pareto_front([0.9, 0.8, 0.85, 0.7], [100, 10, 50, 20])
    [1, 2, 0]
    """
    accuracy = np.asarray(v.check_sequence("accuracy", accuracy, "a list of numbers"), "float64")
    cost = np.asarray(v.check_sequence("cost", cost, "a list of numbers"), "float64")
    if accuracy.shape != cost.shape or accuracy.ndim != 1:
        raise ValueError(
            "`accuracy` and `cost` must be flat lists of one length. "
            f"Received: accuracy of shape {accuracy.shape}, cost of shape {cost.shape}"
        )
    if not (np.all(np.isfinite(accuracy)) and np.all(np.isfinite(cost))):
        raise ValueError(
            f"`accuracy` and `cost` must be finite. Received: accuracy={accuracy.tolist()!r}, "
            f"cost={cost.tolist()!r}"
        )
    front = []
    for i in range(len(accuracy)):
        better_or_equal = (accuracy >= accuracy[i]) & (cost <= cost[i])
        strictly = (accuracy > accuracy[i]) | (cost < cost[i])
        if not np.any(better_or_equal & strictly):
            front.append(i)
    return sorted(front, key=lambda i: (cost[i], -accuracy[i]))
