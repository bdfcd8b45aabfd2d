"""Few-shot tasks for meta-learning: samplers over labelled arrays and over function families.

A *task* is a support set (what the learner adapts on) and a query set (what
it is scored on). A sampler draws batches of tasks in the format every
``nnkit.meta`` learner takes::

    inputs = {"x_support": (tasks, shots, ...), "y_support": (tasks, shots, ...),
              "x_query": (tasks, queries, ...)}
    y_query:  (tasks, queries, ...)

``sampler.sample(n, seed)`` returns ``(inputs, y_query)`` as numpy arrays,
ready for ``fit``/``evaluate``; ``sampler.batches(...)`` is a
``keras.utils.PyDataset`` that draws fresh tasks for every step, reproducibly
from a seed.
"""

import abc
import numbers

import keras
import numpy as np

from nnkit import _validation as v


def generator(seed):
    """A ``numpy.random.Generator`` from ``seed``: ``None``, an int >= 0, a list of them, or one."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        return np.random.default_rng()
    if isinstance(seed, (list, tuple)):
        return np.random.default_rng(
            [v.check_int("seed", s, minimum=0, limit=v.SEED_LIMIT) for s in seed]
        )
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(
            "`seed` must be None, an int >= 0, a list of ints or a numpy Generator. "
            f"Received: seed={seed!r}"
        )
    return np.random.default_rng(v.check_int("seed", seed, minimum=0, limit=v.SEED_LIMIT))


def _floats(x):
    x = np.asarray(x)
    return x.astype("float32") if x.dtype.kind == "f" else x


class TaskSampler(abc.ABC):
    """Base class of the task samplers: draws batches of few-shot tasks.

    A subclass implements ``draw``; ``sample`` and ``batches``
    turn it into arrays and into a dataset for ``fit``.
    """

    @abc.abstractmethod
    def draw(self, rng, num_tasks):
        """``(inputs, y_query)`` for ``num_tasks`` tasks drawn with ``rng`` (a numpy Generator)."""

    def sample(self, num_tasks, seed=None):
        """``(inputs, y_query)``: ``num_tasks`` tasks as numpy arrays (see the module docs).

        ``seed``: ``None`` (fresh entropy), an int, a list of ints, or a
        ``numpy.random.Generator``.
        """
        num_tasks = v.check_positive_int("num_tasks", num_tasks)
        return self.draw(generator(seed), num_tasks)

    def batches(self, tasks_per_batch=25, steps_per_epoch=100, *, seed=0):
        """A ``TaskBatches`` of this sampler: fresh tasks for every step of ``fit``."""
        return TaskBatches(self, tasks_per_batch, steps_per_epoch, seed=seed)


class TaskBatches(keras.utils.PyDataset):
    """A ``keras.utils.PyDataset`` that draws a new batch of tasks for every step.

    Pass it to ``fit`` as ``x`` (it yields ``(inputs, y_query)``). Batch
    ``i`` of epoch ``e`` is drawn with the seed ``[seed, e, i]``, so a run is
    reproducible, every epoch sees new tasks, and a batch does not depend on
    the order Keras fetches batches in.

    Args:
        sampler: The ``TaskSampler`` to draw from. Required.
        tasks_per_batch: Tasks per step (the meta-batch), an int >= 1.
            Defaults to ``25``.
        steps_per_epoch: Batches per epoch, an int >= 1. Defaults to ``100``.
        seed: An int >= 0. Defaults to ``0``.

    Raises:
        TypeError: If ``sampler`` is not a ``TaskSampler`` or a number
            has the wrong type.
        ValueError: If a number is out of range.

    Example:
    >>> from nnkit.meta import sinusoid_family
    >>> batches = sinusoid_family().batches(tasks_per_batch=4, steps_per_epoch=3, seed=1)
    >>> inputs, y_query = batches[0]
    >>> len(batches), inputs["x_support"].shape, y_query.shape
    (3, (4, 10, 1), (4, 10, 1))

    References:
        Keras, ``keras.utils.PyDataset``.
    """

    def __init__(self, sampler, tasks_per_batch=25, steps_per_epoch=100, *, seed=0):
        super().__init__()
        self.sampler = v.check_instance("sampler", sampler, TaskSampler, "a TaskSampler")
        self.tasks_per_batch = v.check_positive_int("tasks_per_batch", tasks_per_batch)
        self.steps_per_epoch = v.check_positive_int("steps_per_epoch", steps_per_epoch)
        self.seed = v.check_int("seed", seed, minimum=0, limit=v.SEED_LIMIT)
        self.epoch = 0

    def __len__(self):
        return self.steps_per_epoch

    def __getitem__(self, index):
        if not 0 <= index < self.steps_per_epoch:
            raise IndexError(f"batch {index} out of range (0 to {self.steps_per_epoch - 1})")
        return self.sampler.sample(self.tasks_per_batch, seed=[self.seed, self.epoch, index])

    def on_epoch_end(self):
        self.epoch += 1


class FewShotClassification(TaskSampler):
    """N-way K-shot classification tasks drawn from any labelled arrays.

    Use it to meta-train or meta-test a classifier on classes it has not
    seen: a task picks ``ways`` different classes, then ``shots`` support and
    ``queries`` query examples of each, all different (drawn without
    replacement, so support and query never share an example), and labels
    the classes ``0 .. ways − 1`` in a random order. Split the classes (not
    the examples) between a meta-training and a meta-test sampler.

    Formula, for one task::

        c_1 .. c_N  ~ distinct classes, uniformly        (N = ways)
        e_j1 .. e_j(K+Q) ~ distinct examples of c_j       (K = shots, Q = queries)
        support = {(e_jk, j) : k ≤ K},   query = {(e_jk, j) : k > K}

    Args:
        x: The examples, an array ``(n, ...)``. Required.
        y: Their class labels, ``(n,)`` (any values). Required.
        ways: Classes per task N, an int >= 2. Defaults to ``5``.
        shots: Support examples per class K, an int >= 1. Defaults to ``1``.
        queries: Query examples per class Q, an int >= 1. Defaults to ``15``.

    Raises:
        TypeError: If a count has the wrong type.
        ValueError: If ``x`` and ``y`` differ in length, ``y`` is not one
            label per example, or fewer than ``ways`` classes have ``shots +
            queries`` examples.

    Example:
    >>> import numpy as np
    >>> from nnkit.meta import FewShotClassification
    >>> x = np.arange(40, dtype="float32").reshape(20, 2)
    >>> sampler = FewShotClassification(x, np.repeat([0, 1, 2, 3], 5), ways=3, shots=2, queries=3)
    >>> inputs, y_query = sampler.sample(2, seed=0)
    >>> inputs["x_support"].shape, inputs["y_support"].shape, y_query.shape
    ((2, 6, 2), (2, 6), (2, 9))
    >>> sorted(set(inputs["y_support"][0].tolist()))
    [0, 1, 2]

    References:
        Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS
        2016 (the N-way K-shot protocol).
    """

    def __init__(self, x, y, *, ways=5, shots=1, queries=15):
        self.x = _floats(v.check_array("x", x))
        y = np.asarray(v.check_array("y", y))
        if y.ndim != 1 or len(y) != len(self.x):
            raise ValueError(
                "`y` must hold one label per example of `x`. Received: x with shape "
                f"{self.x.shape}, y with shape {y.shape}"
            )
        self.ways = v.check_int("ways", ways, minimum=2)
        self.shots = v.check_positive_int("shots", shots)
        self.queries = v.check_positive_int("queries", queries)
        labels, counts = np.unique(y, return_counts=True)
        need = self.shots + self.queries
        self.classes = labels[counts >= need]
        if len(self.classes) < self.ways:
            raise ValueError(
                f"{self.ways}-way tasks need {self.ways} classes with at least shots + queries "
                f"= {need} examples; {len(self.classes)} of the {len(labels)} classes have that "
                f"many. Received: ways={self.ways}, shots={self.shots}, queries={self.queries}"
            )
        self._members = {label: np.flatnonzero(y == label) for label in self.classes}

    def draw(self, rng, num_tasks):
        n, k, q = self.ways, self.shots, self.queries
        support = np.empty((num_tasks, n * k), "int64")
        query = np.empty((num_tasks, n * q), "int64")
        y_support = np.empty((num_tasks, n * k), "int32")
        y_query = np.empty((num_tasks, n * q), "int32")
        for t in range(num_tasks):
            chosen = rng.choice(len(self.classes), size=n, replace=False)
            picks = [
                rng.choice(self._members[self.classes[c]], size=k + q, replace=False)
                for c in chosen
            ]
            s_order, q_order = rng.permutation(n * k), rng.permutation(n * q)
            support[t] = np.concatenate([p[:k] for p in picks])[s_order]
            query[t] = np.concatenate([p[k:] for p in picks])[q_order]
            y_support[t] = np.repeat(np.arange(n), k)[s_order]
            y_query[t] = np.repeat(np.arange(n), q)[q_order]
        inputs = {"x_support": self.x[support], "y_support": y_support, "x_query": self.x[query]}
        return inputs, y_query


class RegressionFamily(TaskSampler):
    """Regression tasks from a family of functions: each task is one member of the family.

    Use it for function families such as the sinusoids of Finn et al.
    (``sinusoid_family`` builds that one): a task draws the parameters of
    its function, ``shots + queries`` inputs, and their targets; the first
    ``shots`` points are the support set, the rest the query set. The three
    callables are vectorized over tasks (numpy in, numpy out).

    Formula, for task ``t``::

        p_t ~ parameters,   x_t1 .. x_t(K+Q) ~ inputs,   y_ti = function(p_t, x_ti)

    Args:
        parameters: ``parameters(rng, num_tasks)`` → array ``(tasks, ...)``,
            the functions' parameters. Required.
        function: ``function(parameters, x)`` → targets ``(tasks, points,
            ...)`` for inputs ``x`` of ``(tasks, points, ...)``. Required.
        inputs: ``inputs(rng, num_tasks, num_points)`` → ``(tasks, points,
            ...)``. Required.
        shots: Support points per task K, an int >= 1. Defaults to ``10``.
        queries: Query points per task Q, an int >= 1. Defaults to ``10``.

    Raises:
        TypeError: If a callable is not callable or a count has the wrong type.
        ValueError: If a count is out of range, or (when sampling) a
            callable returns arrays of the wrong leading shape.

    Example:
    >>> import numpy as np
    >>> from nnkit.meta import RegressionFamily
    >>> lines = RegressionFamily(
    ...     parameters=lambda rng, n: rng.normal(size=(n, 1)),
    ...     function=lambda slope, x: slope[:, None, :] * x,
    ...     inputs=lambda rng, n, points: rng.uniform(-1, 1, size=(n, points, 1)),
    ...     shots=4, queries=6)
    >>> inputs, y_query, slopes = lines.sample(3, seed=0, return_parameters=True)
    >>> inputs["y_support"].shape, y_query.shape, slopes.shape
    ((3, 4, 1), (3, 6, 1), (3, 1))
    >>> bool(np.allclose(y_query, slopes[:, None, :] * inputs["x_query"]))
    True

    References:
        Finn, Abbeel and Levine, "Model-Agnostic Meta-Learning for Fast
        Adaptation of Deep Networks", ICML 2017 (section 5.1, regression).
    """

    def __init__(self, parameters, function, inputs, *, shots=10, queries=10):
        for name, value in (("parameters", parameters), ("function", function), ("inputs", inputs)):
            if not callable(value):
                raise TypeError(f"`{name}` must be callable. Received: {name}={value!r}")
        self.parameters = parameters
        self.function = function
        self.inputs = inputs
        self.shots = v.check_positive_int("shots", shots)
        self.queries = v.check_positive_int("queries", queries)

    def _checked(self, name, value, leading):
        value = _floats(value)
        if value.shape[: len(leading)] != leading:
            raise ValueError(
                f"`{name}` must return an array whose shape starts with {leading}. "
                f"Received: shape {value.shape}"
            )
        return value

    def draw(self, rng, num_tasks):
        inputs, y_query, _ = self._draw_with_parameters(rng, num_tasks)
        return inputs, y_query

    def _draw_with_parameters(self, rng, num_tasks):
        points = self.shots + self.queries
        params = self._checked("parameters", self.parameters(rng, num_tasks), (num_tasks,))
        x = self._checked("inputs", self.inputs(rng, num_tasks, points), (num_tasks, points))
        y = self._checked("function", self.function(params, x), (num_tasks, points))
        k = self.shots
        inputs = {"x_support": x[:, :k], "y_support": y[:, :k], "x_query": x[:, k:]}
        return inputs, y[:, k:], params

    def sample(self, num_tasks, seed=None, *, return_parameters=False):
        """``(inputs, y_query)``, and the tasks' parameters with ``return_parameters``."""
        num_tasks = v.check_positive_int("num_tasks", num_tasks)
        inputs, y_query, params = self._draw_with_parameters(generator(seed), num_tasks)
        if return_parameters:
            return inputs, y_query, params
        return inputs, y_query
