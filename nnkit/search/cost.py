"""Cost of an architecture (parameters, analytic FLOPs) and the accuracy–cost Pareto front.

FLOPs are counted per example from the weights: ``2·k·c_in·c_out·L_out`` for a
1-D convolution with kernel ``(k, c_in, c_out)`` and output length ``L_out``,
``2·n_in·n_out`` for every other rank-2 kernel (dense layers, also inside
nnkit's blocks). Biases, activations, normalization and pooling are not
counted (they are linear in the activations, small beside the products).
Measured latency is not here yet.
"""

import keras
import numpy as np

from nnkit import _validation as v


def count_flops(model):
    """Analytic floating-point operations of one example's forward pass (multiply-adds × 2).

    Args:
        model: A built Keras functional or sequential model. Required.

    Returns:
        An int: ``Σ 2·k·c_in·c_out·L_out`` over 1-D convolutions plus
        ``Σ 2·n_in·n_out`` over the other rank-2 kernels.

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
        if isinstance(layer, keras.layers.Conv1D):
            k, c_in, c_out = layer.kernel.shape
            total += 2 * int(k) * int(c_in) * int(c_out) * int(layer.output.shape[1])
            continue
        for weight in layer.weights:
            if len(weight.shape) == 2 and weight.name.endswith("kernel"):
                total += 2 * int(weight.shape[0]) * int(weight.shape[1])
    return int(total)


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
