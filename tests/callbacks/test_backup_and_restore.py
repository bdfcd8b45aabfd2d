"""nnkit.callbacks.BackupAndRestore: an interrupted and resumed run equals an uninterrupted one."""

import copy
import json
import os
import pathlib
import shutil
import tempfile

import keras
import numpy as np
import pytest

from nnkit import _io
from nnkit._keras import fit as keras_fit
from nnkit.callbacks import BackupAndRestore, EarlyStopping, ReduceLROnPlateau, StatefulCallback
from nnkit.callbacks import _backup_files as files
from nnkit.callbacks._stateful import session_for
from nnkit.distribute import workers
from nnkit.schedules import CosineAnnealing
from nnkit.testing import assert_round_trip
from tests.conftest import KERAS_NUMPY2

EPOCHS = 20
ES_ARGS = dict(monitor="loss", patience=3, min_delta=0.05)
RL_ARGS = dict(monitor="loss", factor=0.5, patience=1, min_delta=0.05)
INTERRUPT_AT = 6  # the end of this epoch raises (or the begin of the next one)
STOP_EPOCH, BEST_EPOCH = 8, 5  # of the uninterrupted run (checked below)


class Interrupted(Exception):
    """Raised by :class:`Interrupt` to simulate a crash."""


class Interrupt(keras.callbacks.Callback):
    """Raise at the end of epoch ``epoch`` (or after its batch ``batch``, or at its ``begin``)."""

    def __init__(self, epoch, batch=None, begin=False):
        super().__init__()
        self.epoch, self.batch, self.begin = epoch, batch, begin
        self._current = None

    def on_epoch_begin(self, epoch, logs=None):
        self._current = epoch
        if self.begin and epoch == self.epoch:
            raise Interrupted(f"begin of epoch {epoch}")

    def on_train_batch_end(self, batch, logs=None):
        if self.batch is not None and self._current == self.epoch and batch == self.batch:
            raise Interrupted(f"batch {batch} of epoch {self._current}")

    def on_epoch_end(self, epoch, logs=None):
        if self.batch is None and not self.begin and epoch == self.epoch:
            raise Interrupted(f"end of epoch {epoch}")


class Tally(StatefulCallback):
    """A stateful test double: the epochs it saw, plus an array state."""

    def _reset_state(self):
        self.epochs = []
        self.total = np.zeros((2, 3), "float32")

    def get_state(self):
        return {"epochs": list(self.epochs), "total": self.total.copy()}

    def set_state(self, state):
        self.epochs = list(state["epochs"])
        self.total = np.array(state["total"])

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append(epoch)
        self.total = self.total + np.float32(logs["loss"])


class BeginTally(Tally):
    """Changes its state at epoch begins instead."""

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)

    def on_epoch_end(self, epoch, logs=None):
        pass


class Recorder(keras.callbacks.Callback):
    """The learning rate at each epoch begin and EarlyStopping's state at each epoch end."""

    def __init__(self, stop=None):
        super().__init__()
        self.stop = stop
        self.rates, self.states = {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        rate = self.model.optimizer.learning_rate
        self.rates[epoch] = float(np.asarray(rate))

    def on_epoch_end(self, epoch, logs=None):
        if self.stop is not None:
            state = self.stop.get_state()
            self.states[epoch] = {k: state[k] for k in ("wait", "best", "best_epoch")}


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    noise = 0.5 * rng.normal(size=(32, 1))  # the loss plateaus at about 0.25
    return x, (x @ rng.normal(size=(4, 1)) + noise).astype("float32")


DATA = _data()


def _model(schedule=True):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    rate = CosineAnnealing(0.2, total_steps=60) if schedule else 0.2
    model.compile(keras.optimizers.SGD(rate), loss="mse")
    return model


def _callbacks():
    """Fresh stateful callbacks: EarlyStopping, ReduceLROnPlateau and the test double."""
    stop = EarlyStopping(**ES_ARGS, restore_best_weights=True)
    reduce = ReduceLROnPlateau(**RL_ARGS)
    return stop, reduce, Tally()


def _arrange(order, backup, stateful, extra):
    if order == "first":
        return [backup, *stateful, *extra]
    if order == "last":
        return [*stateful, backup, *extra]
    # "between": the crash hits after the stateful callbacks, before the backup saves.
    return [*stateful, *extra, backup]


def _fit(model, callbacks, epochs=EPOCHS):
    x, y = DATA
    return model.fit(
        x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks
    )


def _outcome(model, history, stop, tally, recorder):
    return {
        "epochs": list(history.epoch),
        "loss": list(history.history["loss"]),
        "stopped_epoch": stop.stopped_epoch,
        "stop_reason": stop.stop_reason,
        "best": stop.best,
        "best_epoch": stop.best_epoch,
        "wait": stop.wait,
        "weights": model.get_weights(),
        "tally": (list(tally.epochs), tally.total.copy()),
        "rates": dict(recorder.rates),
    }


_REFERENCE = {}


def uninterrupted(schedule):
    """The run that is never interrupted (computed once per learning-rate kind)."""
    if schedule not in _REFERENCE:
        model = _model(schedule)
        stop, reduce, tally = _callbacks()
        recorder = Recorder(stop)
        theirs = keras.callbacks.EarlyStopping(**ES_ARGS)  # observes only
        history = _fit(model, [stop, reduce, tally, recorder, theirs])
        result = _outcome(model, history, stop, tally, recorder)
        result["states"] = recorder.states
        result["keras_stopped_epoch"] = theirs.stopped_epoch
        _REFERENCE[schedule] = result
    return _REFERENCE[schedule]


def interrupted_then_resumed(backup_dir, schedule, order="first", **backup_kwargs):
    model = _model(schedule)
    stateful = _callbacks()
    with pytest.raises(Interrupted):
        _fit(
            model,
            _arrange(
                order,
                BackupAndRestore(backup_dir, **backup_kwargs),
                stateful,
                [Interrupt(INTERRUPT_AT)],
            ),
        )
    return resume(backup_dir, schedule, order, **backup_kwargs)


def resume(backup_dir, schedule, order="first", **backup_kwargs):
    model = _model(schedule)  # fresh model, fresh callbacks
    stop, reduce, tally = _callbacks()
    recorder = Recorder()
    history = _fit(
        model,
        _arrange(
            order, BackupAndRestore(backup_dir, **backup_kwargs), (stop, reduce, tally), [recorder]
        ),
    )
    return _outcome(model, history, stop, tally, recorder)


def assert_same_run(resumed, reference, first_epoch):
    assert resumed["epochs"] == list(range(first_epoch, reference["stopped_epoch"] + 1))
    np.testing.assert_allclose(resumed["loss"], reference["loss"][first_epoch:], rtol=1e-6)
    for key in ("stopped_epoch", "stop_reason", "best", "best_epoch", "wait"):
        assert resumed[key] == reference[key], key
    for got, expected in zip(resumed["weights"], reference["weights"], strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert resumed["tally"][0] == reference["tally"][0]
    np.testing.assert_allclose(resumed["tally"][1], reference["tally"][1], rtol=1e-6)
    rates = {e: r for e, r in reference["rates"].items() if e >= first_epoch}
    assert resumed["rates"] == pytest.approx(rates, rel=1e-6)


def test_reference_run_exercises_every_callback():
    reference = uninterrupted(schedule=True)
    assert (reference["stopped_epoch"], reference["best_epoch"]) == (STOP_EPOCH, BEST_EPOCH)
    assert STOP_EPOCH > INTERRUPT_AT + 1 and reference["states"][INTERRUPT_AT]["wait"] > 0
    rates = reference["rates"]
    assert rates[INTERRUPT_AT + 1] < 0.5 * rates[INTERRUPT_AT]  # reduced at the interrupted epoch
    assert rates[INTERRUPT_AT - 1] < 0.5 * rates[INTERRUPT_AT - 2]  # and before it


@pytest.mark.parametrize("order", ["first", "last", "between"])
def test_resumed_run_equals_uninterrupted_with_a_schedule(tmp_path, order):
    resumed = interrupted_then_resumed(str(tmp_path / "backup"), True, order)
    # Whatever the order, the crash in an epoch end comes before that epoch's
    # backup is written (once every callback of the epoch has run): the
    # resumed run repeats the epoch, from a consistent backup of the one before.
    assert_same_run(resumed, uninterrupted(True), INTERRUPT_AT)
    assert not (tmp_path / "backup").exists()  # delete_checkpoint


def test_resumed_run_equals_uninterrupted_with_a_float_rate(tmp_path):
    resumed = interrupted_then_resumed(str(tmp_path / "backup"), False, "first")
    assert_same_run(resumed, uninterrupted(False), INTERRUPT_AT)


@pytest.mark.parametrize("order", ["first", "last"])
def test_a_crash_at_the_next_epoch_begin_resumes_after_the_saved_epoch(tmp_path, order):
    backup_dir = str(tmp_path / "backup")
    model = _model(True)
    with pytest.raises(Interrupted):
        _fit(
            model,
            _arrange(
                order, BackupAndRestore(backup_dir), _callbacks(),
                [Interrupt(INTERRUPT_AT + 1, begin=True)],
            ),
        )  # fmt: skip
    assert_same_run(resume(backup_dir, True, order), uninterrupted(True), INTERRUPT_AT + 1)


@pytest.mark.filterwarnings(KERAS_NUMPY2)  # Keras's own callback reads with convert_to_numpy
def test_keras_backup_and_restore_does_not_resume_early_stopping(tmp_path):
    """keras-team/keras#14862: Keras restores weights and epoch, not EarlyStopping's state."""
    reference = uninterrupted(schedule=False)
    assert reference["keras_stopped_epoch"] == reference["stopped_epoch"] == STOP_EPOCH

    def keras_callbacks():
        return [
            keras.callbacks.BackupAndRestore(str(tmp_path / "keras")),
            keras.callbacks.EarlyStopping(**ES_ARGS),
            keras.callbacks.ReduceLROnPlateau(**RL_ARGS),
        ]

    with pytest.raises(Interrupted):
        _fit(_model(False), [*keras_callbacks(), Interrupt(INTERRUPT_AT)])
    callbacks = keras_callbacks()
    history = _fit(_model(False), callbacks)
    assert history.epoch[0] == INTERRUPT_AT + 1
    assert callbacks[1].stopped_epoch > STOP_EPOCH  # its patience started over


@pytest.mark.parametrize("position", ["before", "after"])
def test_state_changed_at_an_epoch_begin_belongs_to_the_next_backup(tmp_path, position):
    """A change after a save but outside its hook must not reach that save's state."""
    backup_dir = str(tmp_path / "backup")

    def run(*extra):
        tally, backup = BeginTally(), BackupAndRestore(backup_dir)
        callbacks = [tally, backup] if position == "before" else [backup, tally]
        _fit(_model(True), [*callbacks, *extra], epochs=4)
        return tally

    with pytest.raises(Interrupted):
        run(Interrupt(2, begin=True))
    assert run().epochs == [0, 1, 2, 3]


# -- the files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A backup directory left by a run that crashed at the begin of INTERRUPT_AT + 1.

    Its latest backup is of the end of INTERRUPT_AT (resumes at INTERRUPT_AT + 1),
    the previous one of INTERRUPT_AT - 1 (``double_checkpoint``).
    """
    backup_dir = str(tmp_path_factory.mktemp("saved") / "backup")
    model = _model(True)
    with pytest.raises(Interrupted):
        _fit(
            model,
            [
                BackupAndRestore(backup_dir, double_checkpoint=True),
                *_callbacks(),
                Interrupt(INTERRUPT_AT + 1, begin=True),
            ],
        )
    return backup_dir


@pytest.fixture
def backup_dir(saved, tmp_path):
    """A private copy of ``saved``."""
    target = str(tmp_path / "backup")
    shutil.copytree(saved, target)
    return target


V1 = pathlib.Path(__file__).parent / "data" / "backup_v1"


@pytest.fixture
def v1_dir(tmp_path):
    """A copy of a backup written by nnkit 0.1 (format 1), at the end of INTERRUPT_AT."""
    target = str(tmp_path / "v1")
    shutil.copytree(V1, target)
    return target


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _manifest(directory, name=files.MANIFEST):
    return _read_json(os.path.join(directory, name))


def test_file_format(backup_dir):
    latest, previous = _manifest(backup_dir), _manifest(backup_dir, files.PREVIOUS)
    g, p = latest["generation"], previous["generation"]
    assert g == p + 1
    assert sorted(os.listdir(backup_dir)) == sorted(
        [
            files.MANIFEST, files.PREVIOUS, files.KERAS_WEIGHTS, files.KERAS_METADATA,
            *(f"backup-{n:06d}.{kind}" for n in (g, p) for kind in ("weights.h5", "npz")),
        ]
    )  # fmt: skip
    assert latest["format_version"] == 2
    assert (latest["epoch"], latest["batch"]) == (INTERRUPT_AT + 1, 0)
    assert set(latest["callbacks"]) == {"EarlyStopping:0", "ReduceLROnPlateau:0", "Tally:0"}
    stop = latest["callbacks"]["EarlyStopping:0"]
    expected = uninterrupted(True)["states"][INTERRUPT_AT]
    assert {k: stop[k] for k in expected} == expected
    assert set(stop["best_weights"]) == {"__ndarrays__"}
    assert set(latest["callbacks"]["Tally:0"]["total"]) == {"__ndarray__"}
    assert latest["callbacks"]["Tally:0"]["epochs"] == list(range(INTERRUPT_AT + 1))
    assert set(latest["rng"]) == {"numpy", "python", "seed_generators"}
    assert previous["epoch"] == INTERRUPT_AT
    assert previous["callbacks"]["Tally:0"]["epochs"] == list(range(INTERRUPT_AT))
    # Keras's names, for Keras's tools: the latest weights, and the position.
    weights = os.path.join(backup_dir, latest["weights"])
    keras_weights = os.path.join(backup_dir, files.KERAS_WEIGHTS)
    assert pathlib.Path(weights).read_bytes() == pathlib.Path(keras_weights).read_bytes()
    assert _manifest(backup_dir, files.KERAS_METADATA) == {"epoch": INTERRUPT_AT + 1, "batch": 0}
    assert _io.leftovers(backup_dir) == []


def test_reads_a_backup_written_by_nnkit_0_1(v1_dir):
    assert _manifest(v1_dir)["format_version"] == 1
    resumed = resume(v1_dir, True, double_checkpoint=True)
    assert_same_run(resumed, uninterrupted(True), INTERRUPT_AT + 1)


def test_the_first_save_after_a_0_1_backup_replaces_its_files(v1_dir):
    backup = BackupAndRestore(v1_dir, delete_checkpoint=False)
    _fit(_model(True), [backup, *_callbacks()], epochs=INTERRUPT_AT + 2)
    assert _manifest(v1_dir)["format_version"] == 2
    assert not any(
        name.endswith((".bkp", ".npz")) and "backup-" not in name for name in os.listdir(v1_dir)
    )


def test_corrupt_manifest_falls_back_to_the_previous_backup(backup_dir):
    with open(os.path.join(backup_dir, files.MANIFEST), "w") as f:
        f.write('{"format_version": 2, "epo')
    with pytest.warns(RuntimeWarning, match="resumed from the previous one"):
        resumed = resume(backup_dir, True, double_checkpoint=True)
    assert_same_run(resumed, uninterrupted(True), INTERRUPT_AT)  # redoes the last epoch


def _snapshot(directory):
    return {name: pathlib.Path(directory, name).read_bytes() for name in os.listdir(directory)}


def test_falling_back_sets_the_unreadable_backup_aside_and_never_deletes_it(backup_dir):
    latest = _manifest(backup_dir)
    weights = os.path.join(backup_dir, latest["weights"])
    with open(weights, "r+b") as f:  # damage the latest weights
        f.seek(100)
        f.write(b"garbage")
    damaged = pathlib.Path(weights).read_bytes()
    backup = BackupAndRestore(backup_dir, double_checkpoint=True, delete_checkpoint=False)
    with pytest.warns(RuntimeWarning, match="SHA-256 differs"):
        history = _fit(_model(True), [backup, *_callbacks()], epochs=INTERRUPT_AT + 2)
    assert history.epoch == [INTERRUPT_AT, INTERRUPT_AT + 1]  # from the previous backup
    aside = f"{files.MANIFEST}.unreadable-{latest['generation']}"
    assert _manifest(backup_dir, aside) == latest  # kept, under another name
    assert pathlib.Path(weights).read_bytes() == damaged  # never deleted nor overwritten
    assert _manifest(backup_dir)["epoch"] == INTERRUPT_AT + 2


def test_restoring_writes_nothing(backup_dir):
    """Several workers may restore at once: restoring never writes to ``backup_dir``."""
    before = _snapshot(backup_dir)
    model = _begin(backup_dir, BackupAndRestore(backup_dir, double_checkpoint=True), *_callbacks())
    assert keras_fit.initial_epoch(model) == INTERRUPT_AT + 1
    assert _snapshot(backup_dir) == before


def _begin(backup_dir, *callbacks):
    """Run the callbacks' on_train_begin as fit would, without training."""
    model = _model(True)
    model.build((None, 4))
    params = {"epochs": EPOCHS, "steps": 4, "verbose": 0}
    for callback in callbacks:
        callback.set_model(model)
        callback.set_params(params)
    for callback in callbacks:
        callback.on_train_begin()
    return model


def _latest_file(directory, key):
    return os.path.join(directory, _manifest(directory)[key])


def _remove_manifest(d):
    os.remove(os.path.join(d, files.MANIFEST))


def _empty_manifest(d):
    open(os.path.join(d, files.MANIFEST), "w").close()


def _foreign_manifest(d):
    with open(os.path.join(d, files.MANIFEST), "w") as f:
        json.dump({"something": "else"}, f)


def _truncated_manifest(d):
    path = pathlib.Path(d) / files.MANIFEST
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _future_manifest(d):
    document = _manifest(d)
    document["format_version"] = 99
    with open(os.path.join(d, files.MANIFEST), "w") as f:
        json.dump(document, f)


def _truncate_weights(d):
    path = _latest_file(d, "weights")
    data = pathlib.Path(path).read_bytes()
    pathlib.Path(path).write_bytes(data[: len(data) // 2])


def _remove_arrays(d):
    os.remove(_latest_file(d, "arrays"))


def _change_arrays(d):
    with open(_latest_file(d, "arrays"), "ab") as f:
        f.write(b"x")


@pytest.mark.parametrize(
    "damage, match",
    [
        (_remove_manifest, "holds Keras's backup files but no 'callback_state.json'"),
        (_empty_manifest, r"callback_state.json' is empty"),
        (_foreign_manifest, r"callback_state.json' is not a backup manifest"),
        (_truncated_manifest, r"callback_state.json' is not a backup manifest"),
        (_future_manifest, "format_version=99"),
        (_truncate_weights, r"backup-\d+.weights.h5' is damaged"),
        (_remove_arrays, r"backup-\d+.npz'.*is missing"),
        (_change_arrays, r"backup-\d+.npz' is damaged"),
    ],
    ids=[
        "missing",
        "empty",
        "foreign",
        "truncated-manifest",
        "future",
        "truncated-weights",
        "no-arrays",
        "arrays",
    ],
)
def test_damaged_backup_without_fallback_raises_a_clear_error_and_touches_nothing(
    backup_dir, damage, match
):
    os.remove(os.path.join(backup_dir, files.PREVIOUS))
    damage(backup_dir)
    before = _snapshot(backup_dir)
    with pytest.raises(ValueError, match=match) as error:
        _begin(backup_dir, BackupAndRestore(backup_dir), *_callbacks())
    assert backup_dir in str(error.value) and "To start afresh" in str(error.value)
    assert _snapshot(backup_dir) == before


def test_a_backup_of_another_architecture_is_refused_clearly(backup_dir):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), loss="mse")
    backup = BackupAndRestore(backup_dir)
    with pytest.raises(ValueError, match=r"does not load into this model.*another model"):
        _fit(model, [backup])
    assert os.path.exists(os.path.join(backup_dir, files.MANIFEST))


def test_damaged_backup_and_fallback_raises(backup_dir):
    for name in (files.MANIFEST, files.PREVIOUS):
        with open(os.path.join(backup_dir, name), "w") as f:
            f.write("{}")
    with pytest.raises(ValueError, match="and so is the previous one"):
        _begin(backup_dir, BackupAndRestore(backup_dir, double_checkpoint=True), *_callbacks())


def test_states_reach_callbacks_listed_before_and_after(backup_dir):
    before, after = EarlyStopping(), Tally()
    _begin(backup_dir, before, BackupAndRestore(backup_dir), after)
    assert before.wait == uninterrupted(True)["states"][INTERRUPT_AT]["wait"] > 0
    assert after.epochs == list(range(INTERRUPT_AT + 1))


def test_states_without_a_matching_callback_are_not_dropped_silently(backup_dir):
    backup = BackupAndRestore(backup_dir)
    _begin(backup_dir, backup, EarlyStopping())  # no ReduceLROnPlateau, no Tally this time
    with pytest.warns(UserWarning, match=r"\['ReduceLROnPlateau:0', 'Tally:0'\]"):
        backup.on_epoch_begin(INTERRUPT_AT + 1)


def test_empty_directory_is_a_fresh_start(tmp_path):
    stop = EarlyStopping()
    backup = BackupAndRestore(str(tmp_path / "nothing"))
    model = _begin(str(tmp_path / "nothing"), backup, stop)
    assert stop.best is None and keras_fit.initial_epoch(model) is None
    assert session_for(stop, create=False).backup is backup


def test_a_kill_during_a_save_leaves_the_previous_backup_readable(backup_dir, monkeypatch):
    """Every step of a save can fail (be killed): the committed backup stays usable."""
    before = _manifest(backup_dir)
    calls = []
    real = _io.atomic_write

    def dying(path, data, **kwargs):
        calls.append(path)
        if os.path.basename(path) == files.MANIFEST:
            raise KeyboardInterrupt("killed while committing")
        return real(path, data, **kwargs)

    monkeypatch.setattr(_io, "atomic_write", dying)
    backup = BackupAndRestore(backup_dir, delete_checkpoint=False)
    with pytest.raises(KeyboardInterrupt):
        _fit(_model(True), [backup, *_callbacks()], epochs=EPOCHS)
    monkeypatch.undo()
    assert _manifest(backup_dir) == before and _io.leftovers(backup_dir) == []
    assert_same_run(resume(backup_dir, True), uninterrupted(True), INTERRUPT_AT + 1)


# -- batch saves ----------------------------------------------------------------


def test_batch_saves_write_the_state_of_the_save(tmp_path):
    backup_dir = str(tmp_path / "backup")
    reference = uninterrupted(True)["states"]

    def run(interrupt):
        model = _model(True)
        backup = BackupAndRestore(backup_dir, save_freq=3)
        _fit(model, [backup, *_callbacks(), interrupt])

    # 4 batches per epoch, a save every 3: the last save due before batch 2 of
    # epoch 4 is after its batch 1 (batches seen: 4·4 + 2 = 18), written at
    # the begin of batch 2, before the crash at its end.
    with pytest.raises(Interrupted):
        run(Interrupt(4, batch=2))
    document = _manifest(backup_dir)
    assert (document["epoch"], document["batch"]) == (4, 1)
    stop = document["callbacks"]["EarlyStopping:0"]
    assert {k: stop[k] for k in reference[3]} == reference[3]  # nothing of epoch 4 yet
    assert document["callbacks"]["Tally:0"]["epochs"] == [0, 1, 2, 3]

    # Interrupted again in the first (resumed) epoch: Keras alone would record epoch 0.
    with pytest.raises(Interrupted):
        run(Interrupt(4, batch=3))
    document = _manifest(backup_dir)
    assert (document["epoch"], document["batch"]) == (4, 2)
    assert document["callbacks"]["Tally:0"]["epochs"] == [0, 1, 2, 3]

    model = _model(True)
    stop, reduce, tally = _callbacks()
    history = _fit(model, [BackupAndRestore(backup_dir, save_freq=3), stop, reduce, tally])
    assert history.epoch[0] == 4 and tally.epochs[:5] == [0, 1, 2, 3, 4]
    assert stop.stop_reason.value == "no_improvement"


# -- several workers --------------------------------------------------------------


class OwnDirectory(keras.callbacks.Callback):
    """The files in this worker's own directory at each epoch begin (after the backup)."""

    def __init__(self, directory):
        super().__init__()
        self.directory = directory
        self.seen = {}

    def on_epoch_begin(self, epoch, logs=None):
        self.seen[epoch] = (
            sorted(os.listdir(self.directory)) if os.path.isdir(self.directory) else []
        )


def test_a_worker_other_than_the_chief_reads_the_shared_backup_and_writes_its_own(
    backup_dir, tmp_path, monkeypatch
):
    """As worker 1 of two: restore from ``backup_dir``, save elsewhere, leave it to the chief."""
    monkeypatch.setattr(workers, "_task", lambda strategy: (False, "worker", 1))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    own = workers.worker_directory(backup_dir)
    assert own != backup_dir and os.path.dirname(own) == str(tmp_path)
    before = _snapshot(backup_dir)

    model = _model(True)
    stop, reduce, tally = _callbacks()
    seen, recorder = OwnDirectory(own), Recorder()
    backup = BackupAndRestore(backup_dir, double_checkpoint=True)  # delete_checkpoint=True
    history = _fit(model, [backup, stop, reduce, tally, seen, recorder])
    resumed = _outcome(model, history, stop, tally, recorder)
    assert_same_run(resumed, uninterrupted(True), INTERRUPT_AT + 1)  # restored from backup_dir
    assert files.MANIFEST in seen.seen[STOP_EPOCH]  # its own saves (of the epoch before)
    assert _snapshot(backup_dir) == before  # untouched, and not deleted: the chief's
    assert not os.path.exists(own)  # its own, deleted at the end
    assert backup.get_config()["backup_dir"] == backup_dir


# -- the callback itself --------------------------------------------------------


def test_detaches_at_train_end_and_keeps_files_when_asked(tmp_path):
    backup_dir = str(tmp_path / "kept")
    backup, stop = BackupAndRestore(backup_dir, delete_checkpoint=False), EarlyStopping("loss")
    model = _model(True)
    _fit(model, [backup, stop], epochs=2)
    assert session_for(stop, create=False).backup is None
    document = _manifest(backup_dir)
    assert document["epoch"] == 2 and document["callbacks"]["EarlyStopping:0"]["wait"] == stop.wait
    assert not any(name.endswith(".bkp") for name in os.listdir(backup_dir))
    assert keras_fit.initial_epoch(model) is None  # a later fit starts where it is told
    copied = copy.deepcopy(backup)
    assert keras_fit.attached_model(copied) is None and backup.model is model
    assert copied.get_config() == backup.get_config()


def test_state_that_is_not_json_is_refused():
    with pytest.raises(TypeError, match=r"X:0.get_state\(\)\['rate'\].*float32"):
        files.encode_states({"X:0": {"rate": np.float32(0.5)}}, {})
    arrays = {}
    plain = files.encode_states(
        {"X:0": {"w": [np.ones(2)], "one": np.zeros(1), "empty": []}}, arrays
    )
    assert plain == {
        "X:0": {"w": {"__ndarrays__": ["a0"]}, "one": {"__ndarray__": "a1"}, "empty": []}
    }
    decoded = files.decode_states(plain, arrays)
    np.testing.assert_array_equal(decoded["X:0"]["w"][0], np.ones(2))
    np.testing.assert_array_equal(decoded["X:0"]["one"], np.zeros(1))


def test_config_round_trip_and_path_like(tmp_path):
    backup = BackupAndRestore(
        tmp_path, save_freq=5, double_checkpoint=True, delete_checkpoint=False
    )
    assert backup.get_config() == {
        "backup_dir": str(tmp_path), "save_freq": 5, "double_checkpoint": True,
        "delete_checkpoint": False,
    }  # fmt: skip
    assert_round_trip(backup)
    assert backup.async_safe is False and BackupAndRestore("d").async_safe is True


@pytest.mark.parametrize(
    "kwargs, error, received",
    [
        (dict(backup_dir=""), ValueError, "backup_dir=''"),
        (dict(backup_dir=None), ValueError, "backup_dir=None"),  # Keras's class, too
        (dict(backup_dir=3), TypeError, "backup_dir=3"),
        (dict(backup_dir="d", save_freq="batch"), ValueError, "save_freq='batch'"),
        (dict(backup_dir="d", save_freq=0), ValueError, "save_freq=0"),
        (dict(backup_dir="d", save_freq=False), TypeError, "save_freq=False"),
        (dict(backup_dir="d", save_freq=2.5), ValueError, "save_freq=2.5"),
        (dict(backup_dir="d", double_checkpoint=1), TypeError, "double_checkpoint=1"),
        (dict(backup_dir="d", delete_checkpoint="no"), TypeError, "delete_checkpoint='no'"),
    ],
)
def test_validation(kwargs, error, received):
    with pytest.raises(error, match=f"Received: {received}"):
        BackupAndRestore(**kwargs)
