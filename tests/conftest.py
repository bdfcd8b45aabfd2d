"""Session set-up shared by every test: two logical CPU devices.

TensorFlow fixes its devices when it first initializes them, so the split
happens in ``pytest_configure``, before any test module is imported. With two
logical CPU devices, ``tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])``
runs real two-replica training (all-reduce included) on one CPU; everything
else still runs on ``CPU:0`` as before.
"""

import os

LOGICAL_CPUS = 2


def pytest_configure(config):
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return
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
