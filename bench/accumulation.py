"""Gradient accumulation under MirroredStrategy: its per-update overhead and its exactness.

Two logical CPU devices (``tf.config.set_logical_device_configuration``),
``nnkit.distribute.accumulate_gradients``:

- overhead: the time of one update made of ``N=4`` micro-batches of ``B``
  against one update on one batch of ``4B`` (both fit here), under
  ``MirroredStrategy`` and on one device (Keras's own accumulation there),
  median over repeats of a ``fit`` of ``--updates`` updates after a traced
  warm-up epoch;
- exactness: the largest absolute weight difference after 20 updates
  between ``N=4`` micro-batches under ``MirroredStrategy`` and one batch of
  ``4B``, under ``MirroredStrategy`` and on one device, for SGD with
  momentum and Adam.

Usage: ``python bench/accumulation.py``; ``--quick`` for a smoke run. All
figures as one JSON object on the last line.
"""

import argparse
import json
import os
import statistics
import sys
import time

N = 4


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--updates", type=int, default=50, help="updates per timed fit")
    parser.add_argument("--repeats", type=int, default=5, help="timed fits per setting")
    args = parser.parse_args(argv)
    if args.updates < 1 or args.repeats < 1:
        parser.error("--updates and --repeats must be >= 1")
    return args


def _devices():
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:  # before anything initialises the runtime (listing logical devices does)
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    except RuntimeError:  # already initialised (e.g. in a test): use what is there
        pass
    return [d.name for d in tf.config.list_logical_devices("CPU")[:2]]


def _model(width, optimizer, accumulate):
    import keras

    from nnkit.distribute import accumulate_gradients

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((width,)), keras.layers.Dense(width, "relu"), keras.layers.Dense(1)]
    )
    if accumulate:
        accumulate_gradients(optimizer, N)
    model.compile(optimizer, loss="mse")
    return model


def _data(rows, width):
    import numpy as np

    x = np.random.default_rng(0).normal(size=(rows, width)).astype("float32")
    return x, np.sin(x.sum(axis=1, keepdims=True))


def _strategy(devices, mirrored):
    import tensorflow as tf

    if mirrored:
        # A key range of its own (as tests/distribute/_mirrored.py): strategies on the
        # same devices in one process otherwise reuse each other's collective keys.
        tf.distribute.MirroredStrategy._collective_key_base += 100_000
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def time_per_update(devices, *, mirrored, accumulate, width, batch, updates, repeats):
    import keras

    strategy = _strategy(devices, mirrored)
    micro = batch if accumulate else N * batch
    x, y = _data(N * batch * updates, width)
    with strategy.scope():
        model = _model(width, keras.optimizers.Adam(1e-4), accumulate)
    model.fit(x, y, batch_size=micro, epochs=1, shuffle=False, verbose=0)  # trace
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.fit(x, y, batch_size=micro, epochs=1, shuffle=False, verbose=0)
        times.append((time.perf_counter() - start) / updates)
    return statistics.median(times)


def weight_difference(devices, name, *, width, batch):
    import keras
    import numpy as np

    def run(mirrored, accumulate):
        x, y = _data(N * batch * 20, width)
        with _strategy(devices, mirrored).scope():
            optimizer = (
                keras.optimizers.SGD(0.05, momentum=0.9)
                if name == "sgd"
                else keras.optimizers.Adam(1e-3)
            )
            model = _model(width, optimizer, accumulate)
        micro = batch if accumulate else N * batch
        model.fit(x, y, batch_size=micro, epochs=1, shuffle=False, verbose=0)
        assert int(model.optimizer.iterations.numpy()) == 20  # noqa: S101  (a bench check)
        return model.get_weights()

    accumulated = run(True, True)
    differences = {}
    for label, reference in (("mirrored", run(True, False)), ("one_device", run(False, False))):
        differences[label] = max(
            float(np.abs(a - b).max()) for a, b in zip(accumulated, reference, strict=True)
        )
    return differences


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    devices = _devices()
    width, batch = (32, 8) if args.quick else (256, 64)
    updates = 5 if args.quick else args.updates
    repeats = 1 if args.quick else args.repeats
    figures = {"micro_batches": N, "micro_batch": batch, "width": width, "devices": devices}
    timing = {}
    for mirrored in (True, False):
        key = "mirrored" if mirrored else "one_device"
        accumulated = time_per_update(
            devices,
            mirrored=mirrored,
            accumulate=True,
            width=width,
            batch=batch,
            updates=updates,
            repeats=repeats,
        )
        large = time_per_update(
            devices,
            mirrored=mirrored,
            accumulate=False,
            width=width,
            batch=batch,
            updates=updates,
            repeats=repeats,
        )
        timing[key] = {
            "accumulated_ms_per_update": round(accumulated * 1e3, 3),
            "large_batch_ms_per_update": round(large * 1e3, 3),
            "overhead_ratio": round(accumulated / large, 3),
        }
    figures["time"] = timing
    figures["max_weight_difference_20_updates"] = {
        name: weight_difference(devices, name, width=width, batch=batch) for name in ("sgd", "adam")
    }
    print(json.dumps(figures, sort_keys=True))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
