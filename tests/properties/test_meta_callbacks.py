"""Properties of the meta-learners over task and shot counts, and of callbacks over short runs.

Meta-learners (MAML, Reptile, ANIL, MetaSGD): for any number of ways (2 to
4), shots (1 to 3), queries and tasks per batch (1 included), one ``fit``
step runs, the loss is finite and the query predictions have one row per
query example. Callbacks: a run shorter than a callback's window (patience,
SWA's start epoch, MedianStopping's warmup) trains every epoch and ends
with finite weights: the window never fires early and nothing crashes.
"""

import math

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnkit._arrays import to_numpy
from nnkit.callbacks import EarlyStopping, StochasticWeightAveraging
from nnkit.meta import ANIL, MAML, FewShotClassification, MetaSGD, Reptile, TaskBatches
from nnkit.tuning import MedianStopping


def _classifier(ways):
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, activation="relu", name="body"),
            keras.layers.Dense(ways, name="head"),
        ]
    )


@settings(max_examples=6)
@given(
    learner=st.sampled_from(["maml", "reptile", "anil", "meta_sgd"]),
    ways=st.integers(2, 4),
    shots=st.integers(1, 3),
    queries=st.integers(1, 3),
    tasks=st.integers(1, 3),
)
def test_meta_learners_fit_any_task_shape(learner, ways, shots, queries, tasks):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(6), shots + queries)
    x = rng.normal(size=(len(y), 4)).astype("float32")
    sampler = FewShotClassification(x, y, ways=ways, shots=shots, queries=queries)
    model = _classifier(ways)
    make = {
        "maml": lambda: MAML(model, inner_steps=1),
        "reptile": lambda: Reptile(model, inner_steps=1),
        "anil": lambda: ANIL(model, head="head", inner_steps=1),
        "meta_sgd": lambda: MetaSGD(model, inner_steps=1),
    }[learner]
    meta = make()
    meta.compile(
        keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    batches = TaskBatches(sampler, tasks_per_batch=tasks, steps_per_epoch=1)
    history = meta.fit(batches, epochs=1, verbose=0)
    assert math.isfinite(history.history["loss"][-1])
    inputs, y_query = sampler.sample(tasks, seed=0)
    assert tuple(meta.predict(inputs, verbose=0).shape[:2]) == (tasks, ways * queries)


@settings(max_examples=6)
@given(
    epochs=st.integers(1, 3),
    window=st.integers(4, 50),
    callback=st.sampled_from(["early_stopping", "swa", "median_stopping"]),
)
def test_runs_shorter_than_a_window_train_every_epoch(tmp_path_factory, epochs, window, callback):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.01), loss="mse")
    made = {
        "early_stopping": lambda: EarlyStopping("loss", patience=window),
        "swa": lambda: StochasticWeightAveraging(start_epoch=window),
        "median_stopping": lambda: MedianStopping(
            "loss", warmup_epochs=window, directory=str(tmp_path_factory.mktemp("median"))
        ),
    }[callback]()
    x = np.ones((8, 3), "float32")
    if callback == "swa":
        # An averaging window that cannot start is refused before training (issue 21).
        with pytest.raises(ValueError, match=f"start_epoch={window}, epochs={epochs}"):
            model.fit(x, x[:, :1], epochs=epochs, verbose=0, callbacks=[made])
        return
    history = model.fit(x, x[:, :1], epochs=epochs, verbose=0, callbacks=[made])
    assert len(history.history["loss"]) == epochs
    assert all(np.all(np.isfinite(to_numpy(w))) for w in model.weights)
