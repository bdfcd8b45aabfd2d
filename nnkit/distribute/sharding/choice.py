"""``choose_layout``: the mesh and strategy that fit a memory budget with the least communication.

For ``n`` devices every factorization ``n = B · M`` into a data axis ``B``
and a model axis ``M`` is crossed with every strategy of
``planning.STRATEGIES`` that uses that mesh (a strategy splitting on the
model axis needs ``M > 1``, one that does not needs ``M = 1``; one that
shards state over the data axis needs ``B > 1``). Each candidate is planned
(``plan_layout``) and its train step compiled ahead of time on shapes only
(``memory.compile_step``), which gives both

- its per-device ``peak_bytes`` (XLA's ``memory_analysis()``, as
  ``estimate_memory``), and
- its ``collective_bytes`` per device per step, read from the compiled HLO
  (``collectives.py``: the buffer size of every collective).

Candidates whose peak exceeds the budget are dropped; the rest are ranked by
collective bytes, ties broken by the lower peak. Communication volume is a
proxy for step time that needs no accelerator; it does not weigh a fast
intra-node link against a slow inter-node one.
"""

import dataclasses

import keras

from nnkit import _validation as v
from nnkit._keras import aot
from nnkit.distribute.model_parallelism import _require_jax, device_mesh
from nnkit.distribute.sharding import planning
from nnkit.distribute.sharding.collectives import collective_bytes
from nnkit.distribute.sharding.memory import MemoryEstimate, check_step_arguments, compile_step


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One row of ``LayoutChoice.table``: a strategy on a mesh, its cost, and its fate.

    Attributes:
        strategy: The strategy planned.
        mesh_shape: ``(B, M)``, the sizes of the data and model axes.
        peak_bytes: XLA's peak bytes per device of the train step.
        state_bytes: Parameter and optimizer-state bytes per device.
        collective_bytes: Bytes of the step's collectives per device.
        fits: Whether ``peak_bytes <= memory_budget``.
        rank: 1 for the choice, 2, 3, ... for the other fitting
            candidates; ``None`` if dropped.
        dropped: Why it was dropped (``""`` if it was not).
    """

    strategy: str
    mesh_shape: tuple
    peak_bytes: int
    state_bytes: int
    collective_bytes: int
    fits: bool
    rank: int | None
    dropped: str = ""


@dataclasses.dataclass(frozen=True)
class LayoutChoice:
    """What ``choose_layout`` chose, and the table of every candidate behind the choice.

    Attributes:
        strategy: The chosen strategy.
        mesh_shape: The chosen mesh ``(B, M)`` over ``(batch_axis, model_axis)``.
        layout_map: Its ``keras.distribution.LayoutMap`` (on that mesh).
        report: Its ``LayoutReport`` (per variable axes, bytes, reason).
        table: A tuple of ``Candidate``, one per strategy and mesh tried,
            ranked first, then the dropped ones.
        memory_budget: The budget the candidates were held to, in bytes.
    """

    strategy: str
    mesh_shape: tuple
    layout_map: object
    report: object
    table: tuple
    memory_budget: float

    def __str__(self):
        lines = [
            f"chose {self.strategy!r} on mesh {self.mesh_shape[0]}x{self.mesh_shape[1]} "
            f"(budget {self.memory_budget:.0f} bytes per device)",
            f"{'rank':>4}  {'strategy':<10} {'mesh':<6} {'peak B':>12} {'state B':>12} "
            f"{'collective B':>13}  dropped",
        ]
        for row in self.table:
            rank = "-" if row.rank is None else str(row.rank)
            mesh = f"{row.mesh_shape[0]}x{row.mesh_shape[1]}"
            lines.append(
                f"{rank:>4}  {row.strategy:<10} {mesh:<6} {row.peak_bytes:>12} "
                f"{row.state_bytes:>12} {row.collective_bytes:>13}  {row.dropped}"
            )
        return "\n".join(lines)


def applies(strategy, batch_size, model_size):
    """Whether ``strategy`` uses a ``(batch_size, model_size)`` mesh (see the module docstring)."""
    uses_model_axis = strategy.endswith("tp")
    shards_over_data = strategy not in ("dp", "tp")
    return (model_size > 1) == uses_model_axis and (batch_size > 1 or not shards_over_data)


def _device_names(devices):
    if not isinstance(devices, (list, tuple)):
        count = v.check_int("devices", devices, minimum=1)
        available = keras.distribution.list_devices()
        if count > len(available):
            raise ValueError(
                f"`devices` must be at most the {len(available)} devices available "
                f"({available[:4]}...), or a list of devices. Received: devices={devices!r}"
            )
        return list(available[:count])
    if not devices:
        raise ValueError(f"`devices` must not be empty. Received: devices={devices!r}")
    names = []
    for device in devices:
        if isinstance(device, str):
            names.append(device)
        elif hasattr(device, "platform") and hasattr(device, "id"):
            names.append(f"{device.platform}:{device.id}")
        else:
            raise TypeError(
                "`devices` must be a number of devices or a list of JAX devices (or names "
                f"such as 'cpu:0'); item {device!r} is neither. Received: devices={devices!r}"
            )
    return names


def _check_strategies(strategies):
    if strategies is None:
        return tuple(planning.STRATEGIES)
    expected = f"a list of strategy names from {list(planning.STRATEGIES)}, or None"
    strategies = v.check_sequence("strategies", strategies, expected)
    if not strategies:
        raise ValueError(f"`strategies` must not be empty. Received: strategies={strategies!r}")
    return tuple(v.check_one_of("strategies", s, planning.STRATEGIES) for s in strategies)


def _paths(build_fn):
    model = aot.shapes_only(build_fn)
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`build_fn` must return a keras.Model. Received: build_fn() returning "
            f"{type(model).__name__}"
        )
    return model, [variable.path for variable in model.variables]


def choose_layout(
    build_fn,
    devices,
    memory_budget,
    batch,
    *,
    optimizer="adam",
    loss="mse",
    strategies=None,
    batch_axis="batch",
    model_axis="model",
):
    """Choose the mesh and sharding strategy that fit a memory budget with the least communication.

    Use it before training a model too large for plain data parallelism:
    give the building function, the devices and each device's memory, and
    it tries every mesh ``(B, M)`` with ``B · M`` devices and every strategy
    that uses it (``"dp"`` and ``"fsdp"`` on ``(n, 1)``, ``"tp"`` on
    ``(B, M > 1)``, ``"fsdp_tp"`` on ``(B > 1, M > 1)``, ...), each planned by
    ``plan_layout`` and compiled ahead of time on shapes only (nothing of the
    model's size is allocated). It drops the candidates whose peak bytes per
    device (as ``estimate_memory``) exceed ``memory_budget`` and ranks the
    rest by the bytes their compiled step's collectives move per device,
    ``Σ max(operand bytes, result bytes)`` over all-reduce, all-gather,
    reduce-scatter, all-to-all and collective-permute; ties go to the lower
    peak. The layer names must be the same on every call of ``build_fn``
    (name the layers): the layout map's keys are variable paths.

    Args:
        build_fn: A function with no arguments returning the ``keras.Model``
            (called once per candidate, on shapes only). Required.
        devices: The number of devices (the first of
            ``keras.distribution.list_devices()``) or a list of JAX devices
            (or names such as ``"cpu:0"``). Required.
        memory_budget: Bytes of memory per device, a number ``> 0``. Required.
        batch: ``(x, y)``, one global batch as objects with a ``shape`` and a
            ``dtype``. Required.
        optimizer: A Keras optimizer or its name. Defaults to ``"adam"``.
        loss: The loss, as for ``model.compile``. Defaults to ``"mse"``.
        strategies: The strategies to try, or ``None`` for every one of
            ``plan_layout``'s. Defaults to ``None``.
        batch_axis: Name of the mesh's data axis. Defaults to ``"batch"``.
        model_axis: Name of the mesh's model axis. Defaults to ``"model"``.

    Returns:
        A ``LayoutChoice``: ``strategy``, ``mesh_shape``, ``layout_map``,
        ``report`` and ``table`` (a ``Candidate`` per strategy and mesh:
        peak, state and collective bytes, fits, rank, why dropped).

    Raises:
        ValueError: If the Keras backend is not JAX, ``memory_budget`` is not
            ``> 0``, ``devices`` is empty or more than are available, a
            strategy is unknown, no candidate applies, two builds give
            different variable paths, or no candidate fits the budget (the
            message gives the smallest peak).
        TypeError: If an argument has the wrong type.

    Example:
    >>> import keras, numpy as np
    >>> from nnkit.distribute import choose_layout
    >>> def build():
    ...     return keras.Sequential([keras.Input((16,)), keras.layers.Dense(64, name="up"),
    ...                              keras.layers.Dense(16, name="down")], name="mlp")
    >>> batch = (np.zeros((32, 16), "float32"), np.zeros((32, 16), "float32"))
    >>> choice = choose_layout(build, 8, 2**20, batch)  # JAX backend only  # doctest: +SKIP
    >>> choice.strategy, choice.mesh_shape  # Megatron over all 8  # doctest: +SKIP
    ('tp', (1, 8))
    >>> [(row.strategy, row.mesh_shape, row.rank) for row in choice.table][:2]  # doctest: +SKIP
    [('tp', (1, 8), 1), ('tp', (2, 4), 2)]
    >>> choose_layout(build, 8, 1000, batch, strategies=["dp"])  # doctest: +SKIP
    Traceback (most recent call last):
    ...
    ValueError: No layout fits `memory_budget`: the smallest peak per device is ...

    References:
        Zheng et al., 2022, Alpa: Automating Inter- and Intra-Operator
        Parallelism for Distributed Deep Learning (arXiv:2201.12023).
    """
    _require_jax("choose_layout()")
    memory_budget = v.check_number("memory_budget", memory_budget, minimum=0, min_inclusive=False)
    names = _device_names(devices)
    strategies = _check_strategies(strategies)
    for name, value in (("batch_axis", batch_axis), ("model_axis", model_axis)):
        v.check_str(name, value)
    if batch_axis == model_axis:
        raise ValueError(
            "`batch_axis` and `model_axis` must differ. "
            f"Received: batch_axis={batch_axis!r}, model_axis={model_axis!r}"
        )
    empty = keras.distribution.LayoutMap(device_mesh(devices=names[:1]))
    check_step_arguments(build_fn, empty, batch, optimizer, loss)
    n = len(names)
    meshes = [(n // m, m) for m in range(1, n + 1) if n % m == 0]
    candidates = [(s, b, m) for b, m in meshes for s in strategies if applies(s, b, m)]
    if not candidates:
        raise ValueError(
            f"No strategy of `strategies` uses a mesh of {n} device(s) (with one device only "
            f"'dp' applies). Received: strategies={list(strategies)}"
        )
    model, paths = _paths(build_fn)
    if _paths(build_fn)[1] != paths:
        raise ValueError(
            "`build_fn` gives different variable paths on each call, so a layout map's keys "
            "(variable paths) would match nothing in the next build: name the layers, or call "
            "keras.utils.clear_session() inside build_fn. Received: build_fn="
            f"{getattr(build_fn, '__name__', build_fn)!r}"
        )
    rows, plans = [], {}
    for strategy, b, m in candidates:
        mesh = device_mesh(m, devices=names, batch_axis=batch_axis, model_axis=model_axis)
        layout_map, report = planning.plan_layout(
            model, mesh, strategy, batch_axis=batch_axis, model_axis=model_axis
        )
        compiled, parameters, optimizer_bytes = compile_step(
            build_fn, layout_map, batch, optimizer=optimizer, loss=loss, batch_axis=batch_axis
        )
        peak = MemoryEstimate.from_compiled(compiled, parameters, optimizer_bytes).peak_bytes
        moved = sum(collective_bytes(compiled.as_text()).values())
        fits = peak <= memory_budget
        dropped = "" if fits else f"peak {peak} > budget {memory_budget:.0f}"
        rows.append(
            Candidate(
                strategy, (b, m), peak, parameters + optimizer_bytes, moved, fits, None, dropped
            )
        )
        plans[(strategy, (b, m))] = (layout_map, report)
    fitting = sorted((r for r in rows if r.fits), key=lambda r: (r.collective_bytes, r.peak_bytes))
    if not fitting:
        smallest = min(rows, key=lambda r: r.peak_bytes)
        raise ValueError(
            f"No layout fits `memory_budget`: the smallest peak per device is "
            f"{smallest.peak_bytes} bytes ({smallest.strategy!r} on mesh "
            f"{smallest.mesh_shape[0]}x{smallest.mesh_shape[1]}). Use more devices, a smaller "
            f"batch or model, or a budget of at least that. Received: memory_budget="
            f"{memory_budget!r}"
        )
    ranked = [dataclasses.replace(r, rank=i + 1) for i, r in enumerate(fitting)]
    best = ranked[0]
    layout_map, report = plans[(best.strategy, best.mesh_shape)]
    return LayoutChoice(
        strategy=best.strategy,
        mesh_shape=best.mesh_shape,
        layout_map=layout_map,
        report=report,
        table=tuple(ranked) + tuple(r for r in rows if not r.fits),
        memory_budget=memory_budget,
    )
