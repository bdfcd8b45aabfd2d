"""A pytest plugin that runs Keras's own callback tests against nnkit's classes.

Loaded with ``-p tests.callbacks._keras_swap`` in a pytest subprocess (see
``test_keras_suites.py``): before Keras's test modules are imported, the
names ``EarlyStopping``, ``ReduceLROnPlateau``, ``BackupAndRestore`` and
``ModelCheckpoint`` of
``keras.src.callbacks`` (the module those tests call ``callbacks``) are
replaced by nnkit's classes.
"""

SWAPPED = ("EarlyStopping", "ReduceLROnPlateau", "BackupAndRestore", "ModelCheckpoint")


def pytest_configure(config):
    from keras.src import callbacks

    import nnkit.callbacks

    for name in SWAPPED:
        setattr(callbacks, name, getattr(nnkit.callbacks, name))
