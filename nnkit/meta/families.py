"""Ready-made task families: Finn et al.'s sinusoids, and few-shot tasks from scikit-learn's digits."""

import math

import numpy as np

from nnkit import _validation as v
from nnkit.meta.tasks import FewShotClassification, RegressionFamily

#: Quarter turns a digit image can be rotated by (degrees), each a class of its own.
ROTATIONS = (0, 90, 180, 270)


def _check_range(name, value):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"`{name}` must be a (low, high) pair. Received: {name}={value!r}")
    low = v.check_number(f"{name}[0]", value[0])
    high = v.check_number(f"{name}[1]", value[1])
    if not low < high:
        raise ValueError(f"`{name}` must have low < high. Received: {name}={value!r}")
    return low, high


def sinusoid_family(
    *, shots=10, queries=10, amplitude=(0.1, 5.0), phase=(0.0, math.pi), x_range=(-5.0, 5.0)
):
    """The sinusoid regression family of Finn et al. (2017): ``y = A sin(x − φ)``.

    Each task draws ``A ~ U[amplitude]``, ``φ ~ U[phase]`` and its points
    ``x ~ U[x_range]`` (one feature); the task's parameters are ``[A, φ]``.

    Args:
        shots: Support points per task K, an int >= 1. Defaults to ``10``.
        queries: Query points per task, an int >= 1. Defaults to ``10``.
        amplitude: ``(low, high)`` of the amplitude. Defaults to ``(0.1, 5.0)``.
        phase: ``(low, high)`` of the phase. Defaults to ``(0.0, π)``.
        x_range: ``(low, high)`` of the inputs. Defaults to ``(-5.0, 5.0)``.

    Returns:
        A ``RegressionFamily`` whose inputs and targets are float32
        ``(tasks, points, 1)``.

    Raises:
        TypeError: If a range is not a pair of numbers.
        ValueError: If a range is empty or a count is out of range.

    Example:
    >>> import numpy as np
    >>> from nnkit.meta import sinusoid_family
    >>> inputs, y_query, params = sinusoid_family(shots=10).sample(
    ...     600, seed=0, return_parameters=True)
    >>> inputs["x_support"].shape, y_query.shape, params.shape
    ((600, 10, 1), (600, 10, 1), (600, 2))
    >>> bool(np.all((0.1 <= params[:, 0]) & (params[:, 0] <= 5.0)))
    True
    """
    a_low, a_high = _check_range("amplitude", amplitude)
    p_low, p_high = _check_range("phase", phase)
    x_low, x_high = _check_range("x_range", x_range)

    def parameters(rng, num_tasks):
        return np.stack(
            [rng.uniform(a_low, a_high, num_tasks), rng.uniform(p_low, p_high, num_tasks)], axis=1
        )

    def function(params, x):
        amplitude, phase = params[:, None, 0:1], params[:, None, 1:2]
        return amplitude * np.sin(x - phase)

    def inputs(rng, num_tasks, num_points):
        return rng.uniform(x_low, x_high, size=(num_tasks, num_points, 1))

    return RegressionFamily(parameters, function, inputs, shots=shots, queries=queries)


def _digit_classes(digits, rotations):
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype("float32")
    xs, ys = [], []
    for index, degrees in enumerate(rotations):
        for digit in digits:
            chosen = images[data.target == digit]
            xs.append(np.rot90(chosen, k=degrees // 90, axes=(1, 2)))
            ys.append(np.full(len(chosen), digit + 10 * index))
    return np.concatenate(xs)[..., None], np.concatenate(ys)


def digits_tasks(
    split, *, ways=5, shots=1, queries=15, rotations=(0,), test_digits=(5, 6, 7, 8, 9)
):
    """Few-shot tasks carved from scikit-learn's digits, with classes split by digit.

    The meta-training split (``"train"``) has the digits not in
    ``test_digits``, the meta-test split (``"test"``) the others, so a
    meta-test task's classes were never seen in meta-training. Each rotation
    in ``rotations`` adds a rotated copy of every digit of the split as a
    class of its own (Omniglot's augmentation): ``(0, 90, 180, 270)`` makes
    four classes per digit. With the default ``test_digits`` the test split
    has exactly 5 classes (about 180 images each), so every 5-way test task
    has the same classes in a new order with new examples.

    Args:
        split: ``"train"`` or ``"test"``. Required.
        ways: Classes per task, an int >= 2. Defaults to ``5``.
        shots: Support images per class, an int >= 1. Defaults to ``1``.
        queries: Query images per class, an int >= 1. Defaults to ``15``.
        rotations: Degrees, a non-empty subset of ``(0, 90, 180, 270)``.
            Defaults to ``(0,)``.
        test_digits: The held-out digits (0 to 9), at least one, not all.
            Defaults to ``(5, 6, 7, 8, 9)``.

    Returns:
        A ``FewShotClassification`` over 8×8×1 float32 images in [0, 1];
        the class of digit ``d`` rotated by ``rotations[i]`` is ``d + 10·i``.

    Raises:
        ValueError: If ``split``, ``rotations`` or ``test_digits`` is
            invalid, or the split has fewer than ``ways`` classes.

    Example:
    >>> from nnkit.meta import digits_tasks
    >>> train = digits_tasks("train", rotations=(0, 90, 180, 270))
    >>> test = digits_tasks("test", shots=5)
    >>> len(train.classes), len(test.classes)
    (20, 5)
    >>> inputs, y_query = test.sample(4, seed=0)
    >>> inputs["x_support"].shape, y_query.shape
    ((4, 25, 8, 8, 1), (4, 75))
    """
    v.check_one_of("split", split, ("train", "test"))
    rotations = tuple(rotations) if isinstance(rotations, (list, tuple)) else rotations
    if (
        not isinstance(rotations, tuple)
        or not all(isinstance(r, (int, float)) for r in rotations)
        or not rotations
        or len(set(rotations)) != len(rotations)
        or any(r not in ROTATIONS or isinstance(r, bool) for r in rotations)
    ):
        raise ValueError(
            f"`rotations` must be distinct values from {ROTATIONS}. Received: rotations={rotations!r}"
        )
    held_out = v.check_int_list("test_digits", test_digits, minimum=0)
    if len(set(held_out)) != len(held_out) or max(held_out) > 9 or len(held_out) == 10:
        raise ValueError(
            "`test_digits` must be distinct digits 0 to 9, not all ten. "
            f"Received: test_digits={test_digits!r}"
        )
    digits = sorted(held_out) if split == "test" else sorted(set(range(10)) - set(held_out))
    x, y = _digit_classes(digits, rotations)
    return FewShotClassification(x, y, ways=ways, shots=shots, queries=queries)
