"""The sampled Fisher's targets: a counter-based random stream and the per-loss sampled gradients.

``KFAC(fisher="sampled")`` estimates each block's ``G`` factor from a
backward pass in which the targets are drawn from the model's own
predictive distribution (Martens & Grosse 2015, §5; kfac-jax's default).
Here the pass back-propagates, from the model's output ``f``, a random
vector ``r`` per output row with ``E[r rᵀ] = H``, the Hessian of the row's
loss in ``f`` (its Gauss-Newton matrix), through the objective
``mean_rows ⟨f, stop_gradient(r)⟩``: the statistic the taps then compute is,
in expectation, the Gauss-Newton ``G`` (the empirical one, from the real
labels, is ``E[∇ℓ ∇ℓᵀ]`` instead). Per row of ``k`` outputs, ``p`` the
predicted probabilities:

- ``mean_squared_error``: ``r = √(2/k)·z``, ``z ~ N(0, I)``;
- ``categorical_crossentropy``: ``ŷ ~ Categorical(p)``; on logits
  ``r = p − e_ŷ``, on probabilities ``r = −e_ŷ / p_ŷ`` (the cross-entropy's
  gradient for the label ``ŷ``, which the softmax maps to ``p − e_ŷ``);
- ``binary_crossentropy`` (mean over ``k``): ``ŷ ~ Bernoulli(p)``;
  ``r = (p − ŷ)/√k`` on logits, ``(p − ŷ)/(p(1−p)√k)`` on probabilities.

The random numbers are a pure function of ``(seed, position)`` (an integer
hash, Wellons' *lowbias32*, in ``keras.ops``): no generator state, the
same draws on TensorFlow and JAX, and a resumed run draws what the
uninterrupted one would.
"""

from keras import ops

_EPSILON = 1e-12
_MULTIPLIERS = (0x7FEB352D, 0x846CA68B - (1 << 32))  # lowbias32's, as int32


def _shift(x, bits):
    """Logical right shift of int32 ``x``."""
    return ops.bitwise_and(ops.right_shift(x, bits), (1 << (32 - bits)) - 1)


def _hash(x):
    x = ops.bitwise_xor(x, _shift(x, 16))
    x = x * _MULTIPLIERS[0]
    x = ops.bitwise_xor(x, _shift(x, 15))
    x = x * _MULTIPLIERS[1]
    return ops.bitwise_xor(x, _shift(x, 16))


def uniform(shape, seed, offset=0):
    """Uniform floats in ``(0, 1)`` of ``shape``, a pure function of the int32 ``seed``.

    ``offset`` (an int32 scalar) starts the counter there: the values of a
    slice of a larger array drawn with the same seed.
    """
    size = 1
    for dim in shape:
        size = size * dim
    key = _hash(ops.cast(seed, "int32") * 2 + 1)
    counter = ops.arange(size, dtype="int32") + ops.cast(offset, "int32")
    bits = _hash(ops.bitwise_xor(_hash(counter), key))
    values = (ops.cast(_shift(bits, 8), "float32") + 0.5) / float(1 << 24)
    return ops.reshape(values, shape)


def _one_hot_sample(p, seed, offset):
    """``e_ŷ`` with ``ŷ ~ Categorical(p)`` per row (Gumbel-max)."""
    u = uniform(ops.shape(p), seed, offset)
    gumbel = -ops.log(-ops.log(u))
    index = ops.argmax(ops.log(ops.maximum(p, _EPSILON)) + gumbel, axis=-1)
    return ops.one_hot(index, ops.shape(p)[-1], dtype="float32")


def sampled_gradient(f, family, *, from_logits, seed, first_row=0):
    """The rows' random vectors ``r`` (see the module documentation); ``f``: float32 rows.

    ``first_row``: the position of ``f``'s first row in the global batch
    (under ``tf.distribute``, each replica holds a slice of it), so that the
    replicas draw what one device would.
    """
    k = ops.cast(ops.shape(f)[-1], "float32")
    offset = ops.cast(first_row, "int32") * ops.cast(ops.shape(f)[-1], "int32")
    if family == "mean_squared_error":
        first = uniform(ops.shape(f), seed, offset)
        second = uniform(ops.shape(f), seed + 1, offset)
        normal = ops.sqrt(-2.0 * ops.log(first)) * ops.cos(6.283185307179586 * second)
        return normal * ops.sqrt(2.0 / k)
    if family == "categorical_crossentropy":
        p = ops.softmax(f, axis=-1) if from_logits else f
        e = _one_hot_sample(p, seed, offset)
        if from_logits:
            return p - e
        return -e / ops.maximum(ops.sum(e * p, axis=-1, keepdims=True), _EPSILON)
    p = ops.sigmoid(f) if from_logits else f
    y = ops.cast(uniform(ops.shape(p), seed, offset) < p, "float32")
    r = (p - y) / ops.sqrt(k)
    if from_logits:
        return r
    return r / ops.maximum(p * (1.0 - p), _EPSILON)


def sampled_objective(family, *, from_logits, seed, replica=0):
    """``f ↦ mean_rows ⟨f, stop_gradient(r)⟩``: its backward pass carries the sampled gradients.

    ``replica``: this replica's index; its rows follow the earlier replicas'
    (equal parts of the global batch).
    """

    def objective(outputs):
        f = ops.cast(outputs, "float32")
        f = ops.reshape(f, (-1, ops.shape(f)[-1]))
        first_row = ops.cast(replica, "int32") * ops.cast(ops.shape(f)[0], "int32")
        r = ops.stop_gradient(sampled_gradient(ops.stop_gradient(f), family,
                                               from_logits=from_logits, seed=seed,
                                               first_row=first_row))  # fmt: skip
        return ops.mean(ops.sum(f * r, axis=-1))

    return objective
