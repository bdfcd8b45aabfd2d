"""Every variable nnkit creates has an explicit, correct ``aggregation`` under ``tf.distribute``.

Under ``MirroredStrategy`` each variable has one copy per replica. A write in
the train step (replica context) goes through the variable's aggregation:

- trainable weights are written by the optimizer after the all-reduce, in
  cross-replica context, so their aggregation does not matter;
- a value computed identically on every replica (from the all-reduced
  gradients, a counter, a factor set on the host) takes
  ``"only_first_replica"``: the first replica's value is written to all copies;
- a statistic of each replica's part of the batch takes ``"mean"`` (or is
  computed from all-reduced sums, as synchronized batch normalization does);
- not ``"sum"`` with Keras's ``assign_add``, which assigns the new total: the
  old total would be added once per replica;
- not the default ``"none"`` for state written during training: each replica
  keeps its own copy and the first replica's is read and saved.

nnkit itself creates variables in two places (``Scaled`` and the gradient
monitor's hook); its layers create Keras layers whose variables follow Keras's
rules: trainable weights, seed-generator states (advanced by the same constant on
every replica) and batch-normalization statistics (``"none"``, identical across
replicas only when synchronized, which ``nnkit.distribute.check`` asks for).
The tests below check the creation sites in the source, the variables that
appear during a mirrored ``fit`` with every callback, and the state the
forward pass of every nnkit layer writes.
"""

import ast
import pathlib

import keras
import numpy as np
import pytest

import nnkit
from tests.distribute import _harness as H
from tests.distribute._mirrored import mirrored_strategy

ROOT = pathlib.Path(nnkit.__file__).parent
CREATORS = {"Variable", "add_weight", "add_variable"}


def _creation_sites():
    """``[(where, name prefix or None, aggregation literal or None)]`` for every call to
    ``*.Variable(...)``, ``*.add_weight(...)`` or ``*.add_variable(...)`` in ``nnkit/``."""
    sites = []
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called not in CREATORS:
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            sites.append(
                (
                    f"{path.relative_to(ROOT.parent)}:{node.lineno}",
                    _leading_text(keywords.get("name")),
                    _leading_text(keywords.get("aggregation")),
                )
            )
    return sites


def _leading_text(node):
    """A string literal, or the literal start of an f-string; ``None`` otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return node.values[0].value
    return None


SITES = _creation_sites()


def test_the_source_audit_finds_the_known_creation_sites():
    where = {site.split(":")[0] for site, _, _ in SITES}
    assert "nnkit/schedules/scaled.py" in where
    assert any(w.startswith("nnkit/callbacks/") for w in where)
    # Every row of the table is still used by some creation site.
    names = {name for _, name, _ in SITES}
    for prefix in H.INTENDED_AGGREGATION:
        assert any(name and name.startswith(prefix) for name in names), f"stale row {prefix!r}"


@pytest.mark.parametrize("site, name, aggregation", SITES, ids=[s[0] for s in SITES])
def test_every_creation_site_passes_its_intended_aggregation_explicitly(site, name, aggregation):
    assert aggregation is not None, (
        f"{site}: pass aggregation= explicitly (the default 'none' keeps one value per replica)"
    )
    assert name is not None, f"{site}: give the variable a literal name (or f-string prefix)"
    intended = H.intended_aggregation(name)
    assert intended is not None, (
        f"{site}: variable {name!r} is not in tests/distribute/_harness.py::"
        "INTENDED_AGGREGATION; decide its aggregation (see this module's docstring) and add it"
    )
    assert aggregation == intended, f"{site}: aggregation={aggregation!r}, intended {intended!r}"
    assert aggregation != "sum", f"{site}: 'sum' adds the old total once per replica"


def _callbacks(tmp_path):
    callbacks = []
    for component in H.discover():
        if component.kind == "callback":
            callbacks.append(H._local_paths(component.make(), tmp_path / component.key))
    return callbacks


def test_variables_created_during_a_mirrored_fit_with_every_callback(tmp_path):
    """Every callback at once, and a schedule that ReduceLROnPlateau wraps in ``Scaled``."""
    strategy = mirrored_strategy()
    x = H.features()
    y = H.regression_targets(x)
    with H.record_variables() as created:
        with strategy.scope():
            model = nnkit.models.mlp(H.WIDTH, [8], output_units=2)
            model.compile(
                keras.optimizers.SGD(nnkit.schedules.CosineAnnealing(0.05, 16), momentum=0.5),
                "mse",
                jit_compile=False,
            )
        # SWA and EarlyStopping(restore_best_weights=True) are both in the list: SWA's
        # average wins and says so (docs/generalization.md, "SWA and its neighbours").
        with pytest.warns(UserWarning, match="the model ends on SWA's average"):
            model.fit(
                x,
                y,
                batch_size=H.GLOBAL_BATCH,
                epochs=2,
                validation_data=(x[:16], y[:16]),
                callbacks=_callbacks(tmp_path),
                shuffle=False,
                verbose=0,
            )
    by_nnkit = [record for record in created if record.by_nnkit]
    # nnkit's optimizers make their own state: test_optimizer_state_under_a_mirrored_fit.
    for prefix in set(H.INTENDED_AGGREGATION) - {OPTIMIZER_PREFIX} - set(H.MODEL_VARIABLES):
        assert any(r.name.split(":")[0].rsplit("/", 1)[-1].startswith(prefix) for r in by_nnkit), (
            f"no {prefix!r} variable was created: the audit did not see it"
        )
    assert not H.wrong_aggregation(created)
    assert not H.out_of_sync(created)


LAYERED = [c for c in H.discover() if c.kind in ("layer", "model")]


def _model_with(component):
    obj = component.make()
    if component.kind == "model":
        return obj
    return keras.Sequential([keras.Input((H.WIDTH,)), obj, keras.layers.Dense(2)])


@pytest.mark.parametrize("component", LAYERED, ids=str)
def test_the_forward_pass_writes_no_unaggregated_state(component):
    """What each nnkit layer writes in its training-mode forward pass, as traced by
    ``nnkit.distribute.check``: only batch-normalization statistics, which the check
    reports until they are synchronized, and nothing after ``synchronize_batch_norm``.
    """
    strategy = mirrored_strategy()
    with strategy.scope():
        model = _model_with(component)
        model.compile("sgd", "mse")
    codes = nnkit.distribute.check(model, raise_on_error=False).codes()
    assert "unaggregated_state" not in codes and "state_not_traced" not in codes, codes
    has_batch_norm = bool(nnkit.distribute.batchnorm.batch_norm_layers(model))
    assert ("unsynchronized_batch_norm" in codes) == has_batch_norm, codes
    nnkit.distribute.synchronize_batch_norm(model)
    assert nnkit.distribute.check(model, raise_on_error=False).codes() == []


def test_out_of_sync_detects_unsynchronized_batch_norm_statistics():
    """The negative control for the replica checks above and in the conformance tests."""
    strategy = mirrored_strategy()
    x = H.features()
    y = H.regression_targets(x)
    with H.record_variables() as created:
        with strategy.scope():
            model = keras.Sequential(
                [keras.Input((H.WIDTH,)), nnkit.layers.DenseBlock(8, normalization="batch")]
            )
            model.compile("sgd", "mse", jit_compile=False)
        model.fit(x, y[:, :1] @ np.ones((1, 8), "float32"), batch_size=16, verbose=0)
    diverged = H.out_of_sync(created)
    assert len(diverged) == 2, diverged
    assert all("moving_" in d and "aggregation 'none'" in d for d in diverged), diverged


OPTIMIZER_PREFIX = "nnkit_optimizer_"


@pytest.mark.parametrize("component", [c for c in H.discover() if c.kind == "optimizer"], ids=str)
def test_optimizer_state_under_a_mirrored_fit(component, tmp_path):
    """Every variable an nnkit optimizer makes is mirrored, with its intended aggregation,
    and the same on every replica after training."""
    strategy = mirrored_strategy()
    x = H.features()
    with H.record_variables() as created:
        with strategy.scope():
            model = nnkit.models.mlp(H.WIDTH, [8], output_units=2)
            model.compile(component.make(), "mse", jit_compile=False)
        model.fit(x, H.regression_targets(x), batch_size=H.GLOBAL_BATCH, epochs=2, verbose=0)
    state = [
        r
        for r in created
        if r.by_nnkit and r.name.split(":")[0].rsplit("/", 1)[-1].startswith(OPTIMIZER_PREFIX)
    ]
    assert len(state) >= len(model.trainable_variables)  # at least one slot per weight
    # (The optimizer's own `iteration` and `learning_rate` are Keras's, made in its __init__.)
    assert not H.wrong_aggregation(state)
    assert not H.out_of_sync(created)
