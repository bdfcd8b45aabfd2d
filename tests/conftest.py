"""Session set-up shared by every test: two logical CPU devices.

TensorFlow fixes its devices when it first initializes them, so the split
happens in ``pytest_configure``, before any test module is imported. With two
logical CPU devices, ``tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])``
runs real two-replica training (all-reduce included) on one CPU; everything
else still runs on ``CPU:0`` as before.
"""

import functools
import os

LOGICAL_CPUS = 2

#: ``pytest.mark.filterwarnings`` for tests that run Keras's *own* callbacks
#: (``keras.callbacks.ReduceLROnPlateau``, ``BackupAndRestore``...), whose
#: host reads use ``keras.ops.convert_to_numpy`` and warn under numpy 2.
KERAS_NUMPY2 = "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"


def _quiet_keras_saving():
    """Hide numpy 2's ``copy`` warning inside Keras's saving calls, and only there.

    Keras's saving code converts TensorFlow variables with ``np.array``, so
    every ``model.save`` warns, plain Keras models included. Wrapping the
    public entry points keeps the warning an error everywhere else, so one
    raised by nnkit's own calls still fails the tests (issue 15 #6).
    """
    import keras

    from nnkit._arrays import quiet_keras_numpy2

    def quiet(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with quiet_keras_numpy2():
                return fn(*args, **kwargs)

        return wrapper

    keras.Model.save = quiet(keras.Model.save)
    keras.Model.save_weights = quiet(keras.Model.save_weights)
    keras.saving.save_model = quiet(keras.saving.save_model)
    keras.saving.save_weights = quiet(keras.saving.save_weights)
    # copy.deepcopy / pickle of a model go through Keras's saving too (its __reduce__).
    keras.Model.__reduce__ = quiet(keras.Model.__reduce__)


def _hypothesis_profiles():
    """Register the Hypothesis profiles of the property tests and load one.

    ``ci`` (the default) is fixed so that every run tries the same examples:
    a bounded number of examples per property (the whole property suite
    adds a few minutes on two cores), no deadline (a compiled train step
    takes seconds to trace the first time), ``derandomize=True`` (examples
    drawn from a seed derived from the test, so CI is reproducible) and no
    example database (nothing written to ``.hypothesis/``; the failing
    examples we keep are ``@example`` decorators in the tests). ``dev``
    (``HYPOTHESIS_PROFILE=dev``) explores more, at random, and keeps its
    database in ``.hypothesis/`` (ignored by git).
    """
    try:
        from hypothesis import HealthCheck, settings
    except ImportError:  # the dev extras are not installed: the property tests skip
        return
    settings.register_profile(
        "ci",
        max_examples=8,
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    settings.register_profile(
        "dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    _hypothesis_profiles()
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
    _quiet_keras_saving()
    import tensorflow as tf

    (cpu,) = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * LOGICAL_CPUS
    )


def pytest_runtest_setup(item):
    """Give every test's ``MirroredStrategy`` objects collective keys no earlier test used.

    Each new ``MirroredStrategy`` numbers its collectives from the same keys,
    so strategies made by different tests in one process can collide
    ("Shape mismatch in the collective instance ..."); see
    ``tests/distribute/_mirrored.py``, which does the same for several
    strategies within one test.
    """
    import sys

    tf = sys.modules.get("tensorflow")
    if tf is not None:
        from tests.distribute._mirrored import KEY_RANGE

        tf.distribute.MirroredStrategy._collective_key_base += KEY_RANGE
