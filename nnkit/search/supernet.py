"""Experimental: a one-shot supernet (weight sharing) for the staged Conv1D space.

One set of weights, the largest of each op, is trained by sampling one
architecture (a *path*) uniformly at random per batch; every architecture is
then scored with the weights it inherits, without retraining. This is the
cheap proxy the weight-sharing literature proposes, and it is **not**
trusted here: ``bench/nas_supernet.py`` measures its ranking against
nnkit's tabular benchmark (Kendall τ) and docs/architecture-search.md
reports the figure. It is no searcher of `make_searcher` and no default.
"""

import numpy as np

from nnkit import _validation as v
from nnkit.search._supernet_model import SupernetModel, stage_key
from nnkit.search.space import ArchitectureSpace

_CHOICES = ("stages", "downsample", "residual", "head")


def _options(space):
    """The options of a `conv1d_space`, or a ValueError naming what is missing."""
    from nnkit.search.spaces import build_conv1d

    if not isinstance(space, ArchitectureSpace):
        raise TypeError(
            f"`space` must be a nnkit.search.ArchitectureSpace from conv1d_space(). "
            f"Received: space={space!r}"
        )
    by_name = {choice.name: choice.values for choice in space.choices}
    if space.build_fn is not build_conv1d or not set(_CHOICES) <= set(by_name):
        raise ValueError(
            "`space` must be a conv1d_space() (the supernet shares the weights of its "
            f"staged convolutions). Received: space={space!r}"
        )
    stages = by_name["stages"]
    channels = sorted({c for i in range(max(stages)) for c in by_name[stage_key(i, "channels")]})
    kernels = sorted({k for i in range(max(stages)) for k in by_name[stage_key(i, "kernel")]})
    if any(k % 2 == 0 for k in kernels):
        raise ValueError(
            "The supernet shares one kernel by its centre taps, so every kernel size must be "
            f"odd. Received: kernels={kernels!r}"
        )
    return {
        "stages": tuple(sorted(stages)),
        "channels": tuple(channels),
        "kernels": tuple(kernels),
        "downsample": tuple(by_name["downsample"]),
        "residual": tuple(by_name["residual"]),
        "head": tuple(by_name["head"]),
    }


def _codes(options, archs, in_channels):
    """Per-architecture masks and one-hots, the model's lookup tables."""
    stages, width = max(options["stages"]), max(options["channels"])
    heads = [(d, h) for d in options["stages"] for h in options["head"]]
    count = len(archs)
    codes = {
        "channels": np.zeros((count, stages, width)),
        "kernels": np.zeros((count, stages, len(options["kernels"]))),
        "project": np.zeros((count, stages)),
        "residual": np.zeros((count,)),
        "downsample": np.zeros((count, len(options["downsample"]))),
        "head": np.zeros((count, len(heads))),
    }
    for p, arch in enumerate(archs):
        channels_in = in_channels
        for i in range(stages):
            if i < arch["stages"]:
                c = arch[stage_key(i, "channels")]
                codes["channels"][p, i, :c] = 1.0
                codes["kernels"][p, i, options["kernels"].index(arch[stage_key(i, "kernel")])] = 1.0
                codes["project"][p, i] = float(channels_in != c)
                channels_in = c
            else:
                codes["kernels"][p, i, 0] = 1.0
        codes["residual"][p] = float(arch["residual"])
        codes["downsample"][p, options["downsample"].index(arch["downsample"])] = 1.0
        codes["head"][p, heads.index((arch["stages"], arch["head"]))] = 1.0
    return codes


class OneShotSupernet:
    """Experimental one-shot supernet of a `conv1d_space`, trained by random single-path sampling.

    Use it only to study weight sharing: every architecture of the space is
    scored after one training of shared weights, but on nnkit's benchmark
    its ranking agrees only weakly with standalone training (see "Weight
    sharing (experimental)" in docs/architecture-search.md for the measured
    Kendall τ); prefer `simulate`/`search_architectures` with random search,
    evolution or ASHA. The space has no BatchNorm, so inherited weights are
    used as they are (no statistics to re-estimate).

    Formula: one weight ``W`` per op at its largest size; each batch trains
    the path ``a ~ Uniform(space.architectures())``, whose op uses
    ``W[centre k taps, :c_in, :c_out]``; ``evaluate(a) = accuracy`` of that
    path's logits on the given data with the trained ``W`` (no retraining).
    The channels beyond ``c`` are masked to zero rather than sliced, which
    gives the same numbers and one compiled graph for every path.

    Args:
        space: A `conv1d_space` (odd kernel sizes). Required.
        input_shape: ``(length,)`` or ``(length, channels)`` of one example.
            Required.
        num_classes: Number of classes (logits out). Required.
        seed: Seed of the initial weights. Defaults to ``0``.

    Raises:
        TypeError: If ``space`` is not an `ArchitectureSpace` or
            ``input_shape`` is not a tuple of ints.
        ValueError: If ``space`` is not a `conv1d_space`, a kernel size is
            even, or a size is not positive.

    Example:
    >>> import numpy as np
    >>> from nnkit.search import OneShotSupernet, conv1d_space
    >>> space = conv1d_space(stages=(1, 2), channels=(4, 8), kernels=(3,))
    >>> supernet = OneShotSupernet(space, (16,), 3)
    >>> len(supernet.architectures)  # (2 + 4) channel patterns x 2 x 2 x 2
    48
    >>> x = np.zeros((8, 16), "float32"); y = np.zeros(8, "int32")
    >>> 0.0 <= supernet.evaluate(supernet.architectures[0], x, y) <= 1.0
    True

    References:
        Guo et al., "Single Path One-Shot Neural Architecture Search with
        Uniform Sampling", ECCV 2020; Bender et al., "Understanding and
        Simplifying One-Shot Architecture Search", ICML 2018; Yu et al.,
        "Evaluating the Search Phase of Neural Architecture Search", ICLR 2020.
    """

    def __init__(self, space, input_shape, num_classes, *, seed=0):
        import keras

        self.options = _options(space)
        shape = v.check_sequence("input_shape", input_shape, "a tuple such as (40,)")
        if len(shape) not in (1, 2):
            raise ValueError(
                "`input_shape` must be (length,) or (length, channels). "
                f"Received: input_shape={input_shape!r}"
            )
        self.input_shape = tuple(v.check_positive_int("input_shape", n) for n in shape)
        self.num_classes = v.check_positive_int("num_classes", num_classes)
        self.seed = v.check_int("seed", seed, minimum=0, limit=v.SEED_LIMIT)
        self.space = space
        self.architectures = space.architectures()
        self._index = {space.key(arch): p for p, arch in enumerate(self.architectures)}
        in_channels = self.input_shape[1] if len(self.input_shape) > 1 else 1
        keras.utils.set_random_seed(self.seed)
        self.model = SupernetModel(
            self.options,
            _codes(self.options, self.architectures, in_channels),
            self.input_shape,
            self.num_classes,
        )
        self.model({"x": np.zeros((1, *self.input_shape), "float32"), "path": np.zeros(1)})
        self._compiled = False

    def index(self, arch):
        """The path number of ``arch``; a ValueError names an architecture outside the space."""
        key = self.space.key(arch) if isinstance(arch, dict) else None
        if key not in self._index:
            raise ValueError(f"`arch` is not an architecture of the space. Received: arch={arch!r}")
        return self._index[key]

    def sample_paths(self, count, seed):
        """``count`` path numbers drawn uniformly over the space's architectures."""
        count = v.check_non_negative_int("count", count)
        seed = v.check_int("seed", seed, minimum=0, limit=v.SEED_LIMIT)
        rng = np.random.default_rng(seed)
        return rng.integers(len(self.architectures), size=count)

    def train(self, x, y, *, epochs, batch_size=64, learning_rate=3e-3, seed=0):
        """Train the shared weights, one uniformly drawn path per batch; returns the History.

        Each epoch is a fresh permutation of ``x`` cut into
        ``len(x) // batch_size`` full batches (the remainder is left out),
        each batch with a new path; Adam at ``learning_rate`` on the sparse
        cross-entropy of the logits. One `fit` call runs every epoch.
        """
        import keras

        x = np.asarray(v.check_array("x", x, min_ndim=2), "float32")
        y = np.asarray(v.check_array("y", y), "int32").reshape(-1)
        if len(x) != len(y):
            raise ValueError(
                f"`x` and `y` must have as many rows. Received: len(x)={len(x)}, len(y)={len(y)}"
            )
        epochs = v.check_positive_int("epochs", epochs)
        batch_size = v.check_int("batch_size", batch_size, minimum=1, maximum=len(x))
        learning_rate = v.check_positive_number("learning_rate", learning_rate)
        seed = v.check_int("seed", seed, minimum=0, limit=v.SEED_LIMIT)
        batches = len(x) // batch_size
        rng = np.random.default_rng(seed)
        order = np.concatenate(
            [rng.permutation(len(x))[: batches * batch_size] for _ in range(epochs)]
        )
        paths = np.repeat(self.sample_paths(batches * epochs, seed + 1), batch_size)
        if not self._compiled:
            self.model.compile(
                optimizer=keras.optimizers.Adam(learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
            self._compiled = True
        return self.model.fit(
            {"x": x[order], "path": paths},
            y[order],
            batch_size=batch_size,
            epochs=1,
            shuffle=False,
            verbose=0,
        )

    def logits(self, arch, x, *, batch_size=1000):
        """The logits of ``arch`` on ``x`` with the inherited (shared) weights."""
        path = self.index(arch)
        x = np.asarray(v.check_array("x", x, min_ndim=2), "float32")
        batch_size = v.check_positive_int("batch_size", batch_size)
        return self.model.predict(
            {"x": x, "path": np.full(len(x), path)}, batch_size=batch_size, verbose=0
        )

    def evaluate(self, arch, x, y):
        """The accuracy of ``arch`` on ``(x, y)`` with inherited weights, no retraining."""
        y = np.asarray(v.check_array("y", y), "int64").reshape(-1)
        logits = self.logits(arch, x)
        if len(logits) != len(y):
            raise ValueError(
                f"`x` and `y` must have as many rows. Received: len(x)={len(logits)}, "
                f"len(y)={len(y)}"
            )
        return float(np.mean(np.argmax(logits, axis=-1) == y))

    def path_model(self, arch):
        """``space.build(arch)`` holding ``arch``'s slice of the shared weights (to fine-tune)."""
        self.index(arch)
        model = self.space.build(arch, self.input_shape, self.num_classes)
        model.set_weights(self.model.path_weights(arch))
        return model

    def __repr__(self):
        return f"OneShotSupernet({self.space.name!r}, {len(self.architectures)} paths)"
