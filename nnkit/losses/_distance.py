"""Pairwise distance matrices within a batch, in ``keras.ops``, safe to differentiate."""

from keras import ops

DISTANCES = ("euclidean", "squared_euclidean", "cosine")

# Squared norms below this are treated as zero when normalizing for the cosine distance.
_NORM_EPSILON = 1e-12


def _off_diagonal(matrix):
    n = ops.shape(matrix)[0]
    index = ops.arange(n)
    return ops.where(ops.expand_dims(index, 1) == ops.expand_dims(index, 0), 0.0, matrix)


def _squared_euclidean(embeddings):
    # Distances do not change under translation; centring first keeps the
    # ||a||² + ||b||² - 2 a·b expansion accurate when embeddings share a large offset.
    centred = embeddings - ops.mean(embeddings, axis=0, keepdims=True)
    squared_norms = ops.sum(ops.square(centred), axis=-1)
    gram = ops.matmul(centred, ops.transpose(centred))
    squared = ops.expand_dims(squared_norms, 1) + ops.expand_dims(squared_norms, 0) - 2.0 * gram
    return _off_diagonal(ops.maximum(squared, 0.0))


def safe_sqrt(x):
    """``sqrt(x)`` for ``x >= 0`` whose gradient at ``x == 0`` is 0 instead of inf."""
    positive = x > 0.0
    return ops.where(positive, ops.sqrt(ops.where(positive, x, 1.0)), 0.0)


def _cosine(embeddings):
    squared_norms = ops.sum(ops.square(embeddings), axis=-1, keepdims=True)
    unit = embeddings * ops.rsqrt(ops.maximum(squared_norms, _NORM_EPSILON))
    return _off_diagonal(ops.maximum(1.0 - ops.matmul(unit, ops.transpose(unit)), 0.0))


def pairwise_distance(embeddings, distance):
    """The ``(batch, batch)`` matrix of distances between rows of ``embeddings``.

    The diagonal is exactly 0. ``"cosine"`` is ``1 - cos(a, b)`` (a zero
    vector is at distance 1 from every other row).
    """
    if distance == "squared_euclidean":
        return _squared_euclidean(embeddings)
    if distance == "euclidean":
        return safe_sqrt(_squared_euclidean(embeddings))
    return _cosine(embeddings)
