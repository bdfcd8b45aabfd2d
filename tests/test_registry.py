"""After only ``import nnkit``, every nnkit class loads in a fresh process (issue 15 #2)."""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np

import nnkit.layers as LY
import nnkit.losses as L
import nnkit.regularizers as R
import nnkit.schedules as S
from tests.examples import EXAMPLES


def _fresh(code, tmp_path, order="import nnkit\nimport keras\n"):
    result = subprocess.run(
        [sys.executable, "-c", order + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def test_a_model_with_nnkit_parts_loads_after_only_import_nnkit(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    hidden = LY.DenseBlock(8, activation="relu", kernel_regularizer=R.L2(1e-3))(inputs)
    hidden = LY.ResidualBlock(8)(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    schedule = S.Warmup(S.CosineAnnealing(0.1, 100), 10)
    model.compile(keras.optimizers.SGD(schedule), loss=L.SmoothL1(beta=0.5))
    x = np.random.default_rng(0).normal(size=(8, 6)).astype("float32")
    model.fit(x, x[:, :1], epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", model.predict(x, verbose=0))
    code = """
        import numpy as np
        model = keras.saving.load_model("m.keras", safe_mode=True)
        same = np.allclose(model.predict(np.load("x.npy"), verbose=0), np.load("y.npy"), atol=1e-6)
        print(same, type(model.loss).__name__)
    """
    for order in ("import nnkit\nimport keras\n", "import keras\nimport nnkit\n"):
        assert _fresh(code, tmp_path, order) == "True SmoothL1", order


def test_every_registered_nnkit_class_deserializes_in_a_fresh_process(tmp_path):
    configs = {}
    for key, make in EXAMPLES.items():
        obj = make()
        if keras.saving.get_registered_name(type(obj)).startswith("nnkit>"):
            configs[key] = keras.saving.serialize_keras_object(obj)
    assert len(configs) >= 25
    (tmp_path / "configs.json").write_text(json.dumps(configs))
    code = """
        import json
        configs = json.load(open("configs.json"))
        names = {}
        for key, config in configs.items():
            obj = keras.saving.deserialize_keras_object(config, safe_mode=True)
            names[key] = type(obj).__name__
        print(json.dumps(names))
    """
    names = json.loads(_fresh(code, tmp_path))
    assert names == {key: key.split(".")[1] for key in configs}
