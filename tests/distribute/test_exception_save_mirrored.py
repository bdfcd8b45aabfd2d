"""ExceptionSave under MirroredStrategy (two logical CPUs): a data error mid-epoch writes a
backup from which the rerun ends equal to the uninterrupted run (the same under the strategy;
float tolerance only for the all-reduce's summation order)."""

import keras
import numpy as np
import pytest

from tests.callbacks import _exception_run as R
from tests.distribute._mirrored import mirrored_strategy

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="MirroredStrategy is TensorFlow's"
)


# Global steps (6 batches an epoch): mid-epoch 1, an epoch's first batch.
@pytest.mark.parametrize("fail_at", [9, 12])
def test_a_data_error_resumes_exactly_under_mirrored_strategy(fail_at, tmp_path):
    want_weights, want_losses = R.run(str(tmp_path / "want"), strategy=mirrored_strategy())
    backup_dir = str(tmp_path / "backup")
    # Under the strategy the error surfaces as TensorFlow's UnknownError with the message.
    with pytest.raises(Exception, match="the data source went away"):
        R.run(backup_dir, fail_at, strategy=mirrored_strategy())
    weights, losses = R.run(backup_dir, strategy=mirrored_strategy())
    # The distributed iterator prefetches: the error surfaces (and the save is made) at
    # the step where it is raised, which can be before the failing batch's.
    assert min(losses) <= fail_at // R.BATCHES
    assert losses == pytest.approx({e: want_losses[e] for e in losses}, rel=1e-6)
    for a, b in zip(weights, want_weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
