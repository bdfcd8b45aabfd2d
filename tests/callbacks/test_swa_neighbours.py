"""StochasticWeightAveraging with EarlyStopping(restore_best_weights=True) and BackupAndRestore.

The rule (docs/generalization.md): the model ends on SWA's average in either
callback order, with one warning naming both; a resumed run ends on the same
weights as an uninterrupted one; Keras's BackupAndRestore is refused.
"""

import warnings

import keras
import numpy as np
import pytest

from nnkit._arrays import to_numpy
from nnkit.callbacks import BackupAndRestore, EarlyStopping, StochasticWeightAveraging
from tests.callbacks.test_stochastic_weight_averaging import Record, _data, _fit, _model

EARLY_STOPPING = {"nnkit": EarlyStopping, "keras": keras.callbacks.EarlyStopping}


def _restorer(kind):
    # mode="max" on a falling loss: the best epoch is epoch 0, far from the average.
    return EARLY_STOPPING[kind]("loss", mode="max", patience=10, restore_best_weights=True)


def _run(order, kind, *, batch_norm=False, extra=()):
    model, record = _model(batch_norm=batch_norm), Record()
    swa, stop = StochasticWeightAveraging(2), _restorer(kind)
    pair = [swa, stop] if order == "swa_first" else [stop, swa]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _fit(model, [*extra, record, *pair], epochs=5)
    return model, record, swa, stop, [str(w.message) for w in caught]


@pytest.mark.parametrize("kind", sorted(EARLY_STOPPING))
@pytest.mark.parametrize("order", ["swa_first", "restorer_first"])
def test_the_average_wins_in_either_order_with_one_warning(order, kind):
    model, record, swa, stop, messages = _run(order, kind)
    assert stop.best_epoch == 0 and swa.averaged_epochs == [2, 3, 4]
    want = [np.mean([w[i] for w in record.weights[2:]], axis=0) for i in range(4)]
    for got, expected in zip(model.trainable_variables, want, strict=True):
        np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-6, atol=1e-7)
    conflict = [m for m in messages if "both set the weights" in m]
    assert len(conflict) == 1 and "best_epoch=0" in conflict[0] and "[2, 3, 4]" in conflict[0]


@pytest.mark.parametrize("kind", sorted(EARLY_STOPPING))
def test_both_orders_end_on_the_same_weights_non_trainable_included(kind):
    first, *_, messages = _run("swa_first", kind, batch_norm=True)
    second, *_ = _run("restorer_first", kind, batch_norm=True)
    assert any("no `batch_norm_data`" in m for m in messages)
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


class _Interrupted(Exception):
    pass


class _InterruptAt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 3:
            raise _Interrupted


@pytest.mark.parametrize("order", ["swa_first", "restorer_first"])
def test_a_resumed_run_ends_on_the_uninterrupted_runs_weights(tmp_path, order):
    reference, *_ = _run(order, "nnkit")
    backup = str(tmp_path / "backup")
    with pytest.raises(_Interrupted):
        _run(order, "nnkit", extra=[BackupAndRestore(backup), _InterruptAt()])
    model, _, swa, stop, messages = _run(order, "nnkit", extra=[BackupAndRestore(backup)])
    assert swa.averaged_epochs == [2, 3, 4] and stop.best_epoch == 0
    assert sum("both set the weights" in m for m in messages) == 1
    for got, want in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_keras_backup_and_restore_is_refused(tmp_path):
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(ValueError, match="nnkit.callbacks.BackupAndRestore"):
        _fit(_model(), [backup, StochasticWeightAveraging(1)], epochs=2)


def test_batch_norm_data_still_recomputes_after_the_override():
    x, _ = _data()
    model = _model(batch_norm=True)
    swa = StochasticWeightAveraging(2, batch_norm_data=x)
    with pytest.warns(UserWarning, match="both set the weights"):
        _fit(model, [swa, _restorer("nnkit")], epochs=4)
    moving_mean = to_numpy(model.layers[0].moving_mean)
    np.testing.assert_allclose(moving_mean, x.mean(axis=0), rtol=1e-4, atol=1e-5)
