"""One example instance of every public nnkit class, for the shared conformance tests.

Keys are ``"<subpackage>.<Name>"``. ``tests/test_conventions.py`` fails when a
public class has no row here, so every new component is covered by the shared
tests (config round trip, conventions, ...) as soon as it is exported.
"""

import os
import tempfile

import nnkit.callbacks as C
import nnkit.diagnostics as D
import nnkit.layers as LY
import nnkit.losses as L
import nnkit.meta as ML
import nnkit.models as M
import nnkit.optimizers as O
import nnkit.regularizers as R
import nnkit.schedules as S
import nnkit.search as NS
import nnkit.tuning as T


def _net():
    import keras

    return keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(4, name="body"), keras.layers.Dense(1, name="head")]
    )


_CHECKPOINTS = tempfile.mkdtemp(prefix="nnkit-ckpt-")

EXAMPLES = {
    # schedules
    "schedules.Constant": lambda: S.Constant(0.05),
    "schedules.CosineAnnealing": lambda: S.CosineAnnealing(
        0.1, 40, 0.001, warmup_steps=4, cycle_steps=10, cycle_mult=2.0, cycle_decay=0.5
    ),
    "schedules.StepDecay": lambda: S.StepDecay(0.1, 7, 0.5),
    "schedules.MultiStepDecay": lambda: S.MultiStepDecay(0.1, [5, 9, 20], 0.3),
    "schedules.Warmup": lambda: S.Warmup(S.StepDecay(0.1, 5), 6, initial_learning_rate=0.01),
    "schedules.JoinSchedules": lambda: S.JoinSchedules(
        [S.Constant(0.02), S.CosineAnnealing(0.1, 20), S.Constant(0.001)], [5, 25]
    ),
    "schedules.EpochSchedule": lambda: S.EpochSchedule(
        S.CosineAnnealing(0.1, 6, warmup_steps=1), 4, granularity="epoch"
    ),
    "schedules.Scaled": lambda: S.Scaled(S.StepDecay(0.1, 5), scale=0.5),
    "schedules.OneCycle": lambda: S.OneCycle(
        0.1, 40, rise_fraction=0.25, anneal_strategy="linear", three_phase=True
    ),
    "schedules.Cyclical": lambda: S.Cyclical(0.01, 0.1, 6, 4, mode="exp_range", gamma=0.99),
    "schedules.OneCycleMomentum": lambda: S.OneCycleMomentum(
        40, rise_fraction=0.25, base_momentum=0.8, max_momentum=0.9, three_phase=True
    ),
    # callbacks
    "callbacks.EarlyStopping": lambda: C.EarlyStopping(
        "val_loss",
        0.001,
        3,
        mode="min",
        baseline=100.0,
        restore_best_weights=True,
        start_from_epoch=1,
        divergence_threshold=1e6,
        smoothing=0.5,
    ),  # fmt: skip
    "callbacks.ReduceLROnPlateau": lambda: C.ReduceLROnPlateau(
        "val_loss", 0.5, 3, mode="min", min_delta=0.001, cooldown=1, min_lr=1e-5
    ),
    "callbacks.LearningRateMonitor": lambda: C.LearningRateMonitor(
        "lr", sample_every=10, log_dir="logs"
    ),
    "callbacks.GradientNormMonitor": lambda: C.GradientNormMonitor(
        2, by="variable", on_nonfinite="stop", rules=D.DiagnosisRules(window=3), log_dir="logs"
    ),
    "callbacks.BackupAndRestore": lambda: C.BackupAndRestore(
        "backup", save_freq=10, double_checkpoint=True, delete_checkpoint=False
    ),
    "callbacks.ModelCheckpoint": lambda: C.ModelCheckpoint(
        # A temporary folder, one per process: tests that fit with it must not write into
        # the checkout, and two runs compared with each other must save to the same path.
        os.path.join(_CHECKPOINTS, "m-{epoch}.weights.h5"),
        "val_loss",
        save_weights_only=True,
        keep_last=1,
        keep_best=1,
    ),
    "callbacks.TimeLimit": lambda: C.TimeLimit("02:00:00", 1.5, boundary="batch"),
    "callbacks.ThroughputMonitor": lambda: C.ThroughputMonitor(
        16, tokens_per_sample=4, window=3, flops_per_step=1e6, peak_flops=1e12
    ),
    "callbacks.ExceptionSave": lambda: C.ExceptionSave(verbose=0),
    "callbacks.PreemptionSave": lambda: C.PreemptionSave(
        ["SIGTERM", "SIGUSR1"], grace_period=30, exit_status=99, verbose=0
    ),
    "callbacks.StochasticWeightAveraging": lambda: C.StochasticWeightAveraging(
        1, 2, learning_rate=S.CosineAnnealing(0.05, 10, 0.001, cycle_steps=5), batch_size=16
    ),
    # losses
    "losses.SmoothL1": lambda: L.SmoothL1(0.5, reduction="sum", name="box_loss"),
    "losses.ContrastiveLoss": lambda: L.ContrastiveLoss(2.0, reduction="mean_with_sample_weight"),
    "losses.TripletLoss": lambda: L.TripletLoss(
        0.2, mining="hard", distance="cosine", soft=True, reduction="none", dtype="float64"
    ),
    "losses.SparseCategoricalCrossentropy": lambda: L.SparseCategoricalCrossentropy(
        True, 0.1, reduction="sum", name="smoothed"
    ),
    # layers
    "layers.DropPath": lambda: LY.DropPath(0.2, seed=4, name="skip"),
    "layers.DenseBlock": lambda: LY.DenseBlock(
        16,
        activation="selu",
        normalization="layer",
        dropout=0.1,
        kernel_initializer="lecun_uniform",
        kernel_regularizer="l2",
        name="hidden",
    ),  # fmt: skip
    "layers.ResidualBlock": lambda: LY.ResidualBlock(
        16,
        activation="gelu",
        normalization="batch",
        dropout=0.1,
        pre_activation=True,
        zero_init_residual=True,
        kernel_initializer=None,
        kernel_regularizer="l1",
    ),  # fmt: skip
    "layers.MCDropout": lambda: LY.MCDropout(0.25, noise_shape=(None, 16), seed=3),
    # models (train-step wrappers)
    "models.SharpnessAwareMinimization": lambda: M.SharpnessAwareMinimization(
        M.mlp(16, [8], output_units=2), rho=0.1, adaptive=True, num_batch_splits=2, name="sam"
    ),
    "models.MixUp": lambda: M.MixUp(
        M.mlp(16, [8], output_units=2), alpha=0.4, mode="cutmix", seed=5, name="mix"
    ),
    # regularizers
    "regularizers.L1": lambda: R.L1(0.001),
    "regularizers.L2": lambda: R.L2(0.0005),
    "regularizers.WeightDecay": lambda: R.WeightDecay(0.0005),
    # diagnostics
    "diagnostics.DiagnosisRules": lambda: D.DiagnosisRules(
        1e-7, 1e-4, 3, exploding_threshold=500.0, jump_factor=20.0, update_ratio_band=30.0
    ),
    # optimizers
    "optimizers.KFAC": lambda: O.KFAC(
        0.05,
        damping=1e-2,
        damping_type="eigen",
        momentum=0.5,
        statistics_decay=0.9,
        refresh_every=5,
        kl_clip=None,
        max_update_norm=1.0,
        output_fisher="mean_squared_error",
    ),  # fmt: skip
    # search
    "search.Choice": lambda: NS.Choice(
        "stage_1_width", [8, 16], parent="stages", parent_values=[2]
    ),
    # tuning
    "tuning.SearchSpace": lambda: T.SearchSpace(
        T.SearchSpace().restrict(learning_rate=(1e-3, 1e-2)).fixed(depth=2).knobs
    ),
    "tuning.MLPHyperModel": lambda: T.MLPHyperModel(
        8,
        3,
        space=T.SearchSpace().drop("residual"),
        output_activation="softmax",
        loss="categorical_crossentropy",
        metrics=["accuracy"],
        epochs=10,
        train_size=100,
        patience=3,
    ),  # fmt: skip
    "tuning.LearningRateRangeTest": lambda: T.LearningRateRangeTest(
        1e-5, 1.0, 30, sweep="linear", stop_factor=3.0, smoothing=0.8
    ),
    "tuning.MedianStopping": lambda: T.MedianStopping(
        "val_loss", 3, 1, mode="min", directory="median", verbose=1
    ),
    # optimizers (cadences short enough that the harness's 8 steps refresh several times)
    # Small blocks and damping keep the factors well conditioned over the harness's 8 steps, so
    # a mirrored run's last-bit differences stay small in the roots and bases.
    "optimizers.SGD": lambda: O.SGD(
        S.OneCycle(0.05, 8), momentum=S.OneCycleMomentum(8, rise_fraction=0.4), nesterov=True
    ),
    "optimizers.Adam": lambda: O.Adam(
        S.OneCycle(0.01, 8), beta_1=S.OneCycleMomentum(8, rise_fraction=0.4), weight_decay=1e-3
    ),
    "optimizers.Shampoo": lambda: O.Shampoo(
        0.02,
        graft="adam",
        relative_damping=1e-2,
        refresh_every=2,
        start_preconditioning_step=2,
        max_preconditioner_dim=12,
    ),  # fmt: skip
    "optimizers.SOAP": lambda: O.SOAP(
        0.02,
        epsilon=1e-4,
        refresh_every=2,
        start_preconditioning_step=3,
        max_preconditioner_dim=4,
        weight_decay=0.01,
    ),  # fmt: skip
    # meta
    "meta.MAML": lambda: ML.MAML(
        _net(), inner_learning_rate=0.05, inner_steps=2, first_order=True, transductive=False
    ),
    # One inner step: with two, the harness's SGD(0.05) on the rates diverges to NaN in
    # three steps (on one device too), which the mirrored test once read as replica drift.
    "meta.MetaSGD": lambda: ML.MetaSGD(
        _net(),
        inner_learning_rate=0.05,
        inner_steps=1,
        first_order=True,
        transductive=False,
        rate_shape="variable",
    ),
    "meta.ANIL": lambda: ML.ANIL(
        _net(),
        head="head",
        inner_learning_rate=0.05,
        inner_steps=2,
        first_order=True,
        transductive=False,
    ),
    "meta.Reptile": lambda: ML.Reptile(
        _net(), inner_learning_rate=0.05, inner_steps=3, transductive=False
    ),
}

# Base classes that are public for subclassing but never instantiated directly.
ABSTRACT = {"schedules.Schedule", "callbacks.StatefulCallback", "callbacks.MonitorCallback"}
# Value types (enums, decisions) that are public but are not components.
ABSTRACT |= {"callbacks.StopReason", "callbacks.Reason", "callbacks.Decision"}
# An exception (a SystemExit) that fit raises, not a component.
ABSTRACT |= {"callbacks.Preempted"}
ABSTRACT |= {"initializers.LSUVReport", "initializers.LSUVLayerResult"}
ABSTRACT |= {"diagnostics.GradientNorms", "diagnostics.GradientReport"}
ABSTRACT |= {"diagnostics.VariableGroups"}
ABSTRACT |= {"distribute.ReadinessReport", "distribute.LayoutReport", "distribute.VariablePlan"}
ABSTRACT |= {"distribute.MemoryEstimate", "distribute.LayoutChoice"}
# JAX only (jax.checkpoint), refused on TensorFlow, the suite's backend: its construction,
# get_config and round trip run on JAX in tests/distribute/sharding/test_remat.py.
ABSTRACT |= {"distribute.Remat"}
ABSTRACT |= {"tuning.SensitivityReport", "tuning.LRFinderResult"}
ABSTRACT |= {"meta.MetaLearner", "meta.TaskSampler"}
# A space holds its build function and a table its rows: not JSON, not Keras-saved components.
ABSTRACT |= {"search.ArchitectureSpace", "search.TabularBenchmark"}
# A shared searcher holds a searcher, a lock and a journal: a driver, not a Keras component.
ABSTRACT |= {"search.AsyncSearch"}
# The supernet holds a space (its build function) and a trained Keras model: a plain helper,
# not JSON-configurable and not saved as a Keras object (no registration, no round trip).
ABSTRACT |= {"search.OneShotSupernet"}
# Task samplers hold arrays and callables (not JSON): data sources, not Keras-saved components.
ABSTRACT |= {"meta.FewShotClassification", "meta.RegressionFamily", "meta.TaskBatches"}


def examples_in(subpackage):
    """``{Name: factory}`` for one subpackage."""
    prefix = f"{subpackage}."
    return {k[len(prefix) :]: f for k, f in EXAMPLES.items() if k.startswith(prefix)}
