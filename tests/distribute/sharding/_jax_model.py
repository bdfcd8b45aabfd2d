"""The test model and data shared by the JAX subprocess scripts (no JAX work at import)."""

import keras
import numpy as np

D, HEADS, FF, VOCAB, SEQ, BATCH, STEPS = 32, 8, 64, 64, 8, 16, 4
OPTIMIZERS = {"sgd": lambda: keras.optimizers.SGD(0.1), "adam": lambda: keras.optimizers.Adam(1e-3)}
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def build(*, d=D, heads=HEADS, vocab=VOCAB):
    """A 2-block transformer (every layer named, so two builds have the same paths)."""

    def block(x, i):
        a = keras.layers.MultiHeadAttention(heads, d // heads, name=f"block_{i}_attention")(x, x)
        x = keras.layers.LayerNormalization(name=f"block_{i}_norm_1")(x + a)
        h = keras.layers.Dense(FF, activation="relu", name=f"block_{i}_ff_1")(x)
        h = keras.layers.Dense(d, name=f"block_{i}_ff_2")(h)
        return keras.layers.LayerNormalization(name=f"block_{i}_norm_2")(x + h)

    ids = keras.Input((SEQ,), dtype="int32")
    x = keras.layers.Embedding(vocab, d, name="embedding")(ids)
    for i in range(2):
        x = block(x, i)
    return keras.Model(ids, keras.layers.Dense(vocab, name="head")(x), name="tiny")


def data():
    """``(x, y)``: ``BATCH * STEPS`` next-token pairs of ``SEQ`` tokens, seeded."""
    tokens = np.random.default_rng(0).integers(0, VOCAB, size=(BATCH * STEPS, SEQ + 1))
    tokens = tokens.astype("int32")
    return tokens[:, :-1], tokens[:, 1:]


def initial_weights():
    keras.utils.set_random_seed(0)
    return build().get_weights()


def train(model, optimizer, initial, x, y, *, batch=BATCH):
    """Losses of ``len(x) // batch`` steps from ``initial``, and the final weights."""
    model.set_weights(initial)
    model.compile(optimizer=optimizer, loss=LOSS)
    losses = [
        float(model.train_on_batch(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]))
        for i in range(len(x) // batch)
    ]
    return losses, [np.asarray(w) for w in model.get_weights()]


def max_difference(weights, others):
    return max(float(np.max(np.abs(a - b))) for a, b in zip(weights, others, strict=True))
