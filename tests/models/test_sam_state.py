"""SAM's second pass starts from the state as it was before the first (issue 22 finding).

With a radius ``ρ`` so small that ``w + ε ≈ w``, pass 2 draws the same
dropout masks as pass 1 only if it starts from the seed state pass 1
started from; then one SAM step equals one plain SGD step of the same model
from the same seed. On TensorFlow pass 2 read the state pass 1 had already
advanced (other masks, a different step).
"""

import keras
import numpy as np

from nnkit.models import SharpnessAwareMinimization


def _model():
    keras.utils.set_random_seed(3)
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dropout(0.5, seed=7),
            keras.layers.Dense(1),
        ]
    )


def test_sam_with_a_tiny_radius_steps_like_sgd_with_the_same_dropout_masks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 6)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    plain = _model()
    plain.compile(keras.optimizers.SGD(0.1), loss="mse")
    plain.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    inner = _model()
    sam = SharpnessAwareMinimization(inner, rho=1e-7)
    sam.compile(keras.optimizers.SGD(0.1), loss="mse")
    sam.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(plain.get_weights(), inner.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
