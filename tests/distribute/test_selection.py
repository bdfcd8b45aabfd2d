"""Strategy selection: the pure decision over injected environments, then the real constructors."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import keras
import pytest
import tensorflow as tf

from nnkit.distribute import choose_strategy, strategy

TWO_WORKERS = {
    "cluster": {"worker": ["host1:2222", "host2:2222"]},
    "task": {"type": "worker", "index": 1},
}
CHIEF_AND_WORKER = {
    "cluster": {"chief": ["host1:2222"], "worker": ["host2:2222"]},
    "task": {"type": "chief", "index": 0},
}
ONE_WORKER = {"cluster": {"worker": ["host1:2222"]}, "task": {"type": "worker", "index": 0}}
GPUS2 = ["GPU:0", "GPU:1"]

# (environment given to choose_strategy, expected kind, words expected in the reason)
AUTO_CASES = [
    ({}, "default", ["no TPU", "no multi-worker TF_CONFIG", "no GPU"]),
    ({"tf_config": ""}, "default", ["no multi-worker TF_CONFIG"]),
    ({"devices": ["GPU:0"]}, "default", ["one local device (GPU:0)"]),
    ({"devices": GPUS2}, "mirrored", ["2 local devices (GPU:0, GPU:1)"]),
    ({"devices": ["CPU:0", "CPU:1", "CPU:2"]}, "mirrored", ["3 local devices"]),
    ({"tf_config": TWO_WORKERS}, "multiworker", ["2 workers", "worker:1"]),
    ({"tf_config": json.dumps(CHIEF_AND_WORKER)}, "multiworker", ["2 workers", "chief:0"]),
    ({"tf_config": TWO_WORKERS, "devices": GPUS2 * 2}, "multiworker", ["2 workers"]),
    ({"tf_config": ONE_WORKER}, "default", ["TF_CONFIG names one worker"]),
    ({"tf_config": ONE_WORKER, "devices": GPUS2}, "mirrored", ["2 local devices"]),
    ({"tpu_connects": True, "tf_config": TWO_WORKERS, "devices": GPUS2}, "tpu", ["TPU"]),
    (
        {
            "tf_config": {
                "cluster": {"chief": ["h1:1"], "worker": ["h2:1"], "evaluator": ["h3:1"]},
                "task": {"type": "evaluator", "index": 0},
            }
        },
        "default",
        ["evaluator"],
    ),
]


@pytest.mark.parametrize(("env", "kind", "words"), AUTO_CASES)
def test_auto_follows_the_rules_in_order(env, kind, words):
    chosen, reason = choose_strategy("auto", **env)
    assert chosen == kind
    for word in words:
        assert word in reason


@pytest.mark.parametrize("kind", ["tpu", "mirrored", "default", "one_device"])
def test_an_explicit_kind_is_taken_as_asked(kind):
    chosen, reason = choose_strategy(kind, tf_config=TWO_WORKERS, devices=GPUS2, tpu_connects=True)
    assert (chosen, reason) == (kind, f"requested (kind={kind!r})")


def test_multiworker_reads_tf_config_when_asked():
    assert choose_strategy("multiworker", tf_config=TWO_WORKERS) == (
        "multiworker",
        "requested; TF_CONFIG names 2 worker(s)",
    )
    chosen, reason = choose_strategy("multiworker")
    assert chosen == "multiworker" and "only worker" in reason
    with pytest.raises(ValueError, match="not valid JSON"):
        choose_strategy("multiworker", tf_config="{oops")


@pytest.mark.parametrize("kind", ["parameter_server", "PS", "ParameterServer"])
def test_parameter_server_names_the_alternative(kind):
    with pytest.raises(ValueError, match="MultiWorkerMirroredStrategy") as info:
        choose_strategy(kind)
    assert f"kind={kind!r}" in str(info.value)


def test_parameter_server_cluster_names_the_alternative():
    config = {
        "cluster": {"worker": ["h1:1", "h2:1"], "ps": ["h3:1"]},
        "task": {"type": "worker", "index": 0},
    }
    with pytest.raises(ValueError, match="MultiWorkerMirroredStrategy.*Received: tf_config="):
        choose_strategy(tf_config=config)
    with pytest.raises(ValueError, match="MultiWorkerMirroredStrategy"):
        choose_strategy("multiworker", tf_config=json.dumps(config))


def test_parameter_server_strategy_objects_are_refused_everywhere():
    cls = tf.distribute.experimental.ParameterServerStrategy
    instance = cls.__new__(cls)  # a real one needs a cluster; the type is what is checked
    for value in (cls, instance):
        with pytest.raises(ValueError, match="MultiWorkerMirroredStrategy"):
            strategy(value)
        with pytest.raises(ValueError, match="MultiWorkerMirroredStrategy"):
            choose_strategy(value)


@pytest.mark.parametrize("kind", ["data_parallel_jax", "model_parallel", "Data_Parallel"])
def test_keras_distribution_is_jax_only(kind):
    with pytest.raises(ValueError, match="only on the JAX backend.*KERAS_BACKEND=jax"):
        choose_strategy(kind)
    with pytest.raises(ValueError, match="only on the JAX backend"):
        strategy(kind)


def test_keras_distribution_object_is_jax_only_on_tensorflow():
    distribution = keras.distribution.DataParallel(devices=["cpu:0", "cpu:1"])
    with pytest.raises(ValueError, match="only on the JAX backend.*Received: kind=<DataParallel"):
        strategy(distribution)
    with pytest.raises(ValueError, match="only on the JAX backend"):
        choose_strategy(distribution)


BAD_TF_CONFIGS = [
    ("{not json", "not valid JSON"),
    ('["worker"]', "must be a JSON object"),
    ({"cluster": ["h1:1"]}, "must map task types"),
    ({"cluster": {"worker": "h1:1"}}, "must map task types"),
    ({"cluster": {"worker": ["h1:1", "h2:1"]}}, r"tf_config\['task'\]"),
    ({"cluster": {"worker": ["h1:1", "h2:1"]}, "task": {"type": "worker"}}, "index"),
    ({"cluster": {"worker": ["h1:1", "h2:1"]}, "task": {"type": "worker", "index": 2}}, "index"),
    ({"cluster": {"worker": ["h1:1", "h2:1"]}, "task": {"type": "chief", "index": 0}}, "type"),
    ({"cluster": {"worker": ["h1:1", "h2:1"]}, "task": {"type": "worker", "index": True}}, "index"),
]


@pytest.mark.parametrize(("tf_config", "words"), BAD_TF_CONFIGS)
def test_invalid_tf_config_is_echoed(tf_config, words):
    with pytest.raises(ValueError, match=words) as info:
        choose_strategy(tf_config=tf_config)
    # choose_strategy names its argument; strategy() reads the environment variable.
    assert f"Received: tf_config={tf_config!r}" in str(info.value)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="must be one of .*Received: kind='gpu'"):
        choose_strategy("gpu")
    with pytest.raises(ValueError, match="must be one of"):
        choose_strategy(3)
    with pytest.raises(TypeError, match="list of device names.*Received: devices='GPU:0'"):
        choose_strategy(devices="GPU:0")
    with pytest.raises(TypeError, match=r"devices\[1\]"):
        choose_strategy(devices=["GPU:0", 1])
    with pytest.raises(TypeError, match="tpu_connects"):
        choose_strategy(tpu_connects=1)


@pytest.mark.parametrize("devices", [{"a": 1}, {"GPU:0", "GPU:1"}])
def test_devices_must_be_an_ordered_list_not_a_mapping_or_set(devices):
    # A dict used to be accepted silently (its keys read as device names).
    with pytest.raises(TypeError, match="`devices` must be a list of device names") as info:
        choose_strategy(devices=devices)
    assert f"Received: devices={devices!r}" in str(info.value)


@pytest.fixture
def plain_environment(monkeypatch):
    """No TF_CONFIG and nothing pointing at a TPU, whatever the machine running the tests has."""
    for name in ("TF_CONFIG", "TPU_NAME", "KUBE_GOOGLE_CLOUD_TPU_ENDPOINTS", "TPU_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def _records(caplog):
    return [r for r in caplog.records if r.name == "nnkit.distribute"]


def test_auto_on_this_machine_is_the_default_strategy_and_logs_why(plain_environment, caplog):
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    with caplog.at_level(logging.INFO, logger="nnkit.distribute"):
        result = strategy(verbose=0)
    assert result is tf.distribute.get_strategy()
    assert result.num_replicas_in_sync == 1
    (record,) = _records(caplog)
    assert "with 1 replica(s): no TPU, no multi-worker TF_CONFIG, no GPU" in record.getMessage()


def test_mirrored_over_the_two_logical_cpus(plain_environment, caplog):
    with caplog.at_level(logging.INFO, logger="nnkit.distribute"):
        explicit = strategy("mirrored", devices=["CPU:0", "CPU:1"], verbose=0)
        automatic = strategy(devices=["CPU:0", "CPU:1"], verbose=0)
    for result in (explicit, automatic):
        assert isinstance(result, tf.distribute.MirroredStrategy)
        assert result.num_replicas_in_sync == 2
    first, second = (r.getMessage() for r in _records(caplog))
    assert "MirroredStrategy with 2 replica(s): requested (kind='mirrored')" in first
    assert "MirroredStrategy with 2 replica(s): 2 local devices (CPU:0, CPU:1)" in second
    # The replicas really run: a value summed over them counts both.
    total = explicit.reduce("SUM", explicit.run(lambda: tf.constant(1.0)), axis=None)
    assert float(total) == 2.0


def test_the_choice_is_one_printed_line_at_default_verbosity(plain_environment, capsys, caplog):
    """The issue: the choice was silent unless INFO logging was configured."""
    with caplog.at_level(logging.INFO, logger="nnkit.distribute"):
        result = strategy(devices=["CPU:0", "CPU:1"])
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "nnkit.distribute.strategy: MirroredStrategy with 2 replica(s): "
        "2 local devices (CPU:0, CPU:1)"
    ]
    assert not _records(caplog)  # printed once, not also logged
    assert result.nnkit_choice == ("mirrored", "2 local devices (CPU:0, CPU:1)")
    given = strategy(result)
    assert given is result and given.nnkit_choice == ("given", "the given MirroredStrategy")
    assert "the given MirroredStrategy" in capsys.readouterr().out
    quiet = strategy("default", verbose=0)
    assert capsys.readouterr().out == ""
    assert quiet.nnkit_choice == ("default", "requested (kind='default')")
    with pytest.raises(ValueError, match="verbose=-1"):
        strategy(verbose=-1)
    with pytest.raises(TypeError, match="verbose=True"):
        strategy(verbose=True)


def test_one_device_and_default_and_a_given_strategy(plain_environment):
    one = strategy("one_device", devices=["CPU:1"])
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    assert one.num_replicas_in_sync == 1
    assert one.extended.worker_devices[0].endswith("CPU:1")
    assert strategy("default") is tf.distribute.get_strategy()
    mirrored = tf.distribute.MirroredStrategy(["CPU:0", "CPU:1"])
    assert strategy(mirrored) is mirrored
    with mirrored.scope():  # "default" is the strategy in scope
        assert strategy("default") is mirrored


def test_constructor_argument_errors(plain_environment):
    with pytest.raises(ValueError, match="exactly one device"):
        strategy("one_device", devices=["CPU:0", "CPU:1"])
    for kind in ("default", "tpu", "multiworker"):
        with pytest.raises(ValueError, match="`devices` applies only to"):
            strategy(kind, devices=["CPU:0"])
    with pytest.raises(TypeError, match="`tpu` must be a string"):
        strategy("tpu", tpu=3)
    with pytest.raises(TypeError, match="a string or tf.distribute.Strategy"):
        strategy(object())


def test_tpu_that_does_not_connect_is_an_error_not_a_fallback(plain_environment):
    if tf.config.list_physical_devices("TPU"):
        pytest.skip("this machine has a TPU")
    with pytest.raises(ValueError, match="none could be connected.*Received: tpu=None"):
        strategy("tpu")
    with pytest.raises(ValueError, match="none could be connected.*Received: tpu=''"):
        strategy(tpu="")  # named by the caller: no quiet fallback under "auto" either


def _run(code, **env):
    """Run ``code`` in a fresh Python with ``env`` set; TF_CONFIG and TPU hints removed."""
    base = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "TPU_NAME")}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "TF_CPP_MIN_LOG_LEVEL": "2", **env},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_multiworker_constructor_in_a_fresh_process():
    """MultiWorkerMirroredStrategy must be made at start-up, hence its own process."""
    code = """
        import logging, os
        logging.basicConfig(level=logging.INFO, format="%(name)s|%(message)s")
        import tensorflow as tf
        from nnkit.distribute import strategy
        os.environ["TF_CONFIG"] = '{"cluster": {"worker": ["localhost:1"]}, '\\
            '"task": {"type": "worker", "index": 0}}'
        auto = strategy(verbose=0)
        del os.environ["TF_CONFIG"]
        worker = strategy("multiworker", verbose=0)
        print(type(auto).__name__, type(worker).__name__, worker.num_replicas_in_sync)
    """
    result = _run(code, KERAS_BACKEND="tensorflow")
    assert result.stdout.split() == [
        "_DefaultDistributionStrategy",
        "CollectiveAllReduceStrategy",
        "1",
    ]
    lines = [line for line in result.stderr.splitlines() if line.startswith("nnkit.distribute|")]
    assert len(lines) == 2
    assert "TF_CONFIG names one worker" in lines[0]
    assert "no TF_CONFIG cluster, so this process is the only worker" in lines[1]


def test_jax_only_machine():
    """Without TensorFlow, nnkit.distribute imports and the JAX route works; strategy() refuses."""
    pytest.importorskip("jax")
    code = """
        import sys
        sys.modules["tensorflow"] = None  # as if TensorFlow were not installed
        import keras
        import nnkit.distribute as nd
        assert keras.backend.backend() == "jax"
        print(nd.choose_strategy(devices=["GPU:0", "GPU:1"])[0])
        try:
            nd.strategy()
        except ValueError as error:
            print("refused:", "keras.distribution" in str(error))
        distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
        print(nd.global_batch_size(8, distribution), nd.per_replica_batch_size(64, distribution))
        print(nd.global_batch_size(8))
        keras.distribution.set_distribution(distribution)
        print(nd.global_batch_size(8))
        print(type(nd.scale_learning_rate(0.1, 256, 1024, warmup_steps=5)).__name__)
        print("tensorflow" in sys.modules and sys.modules["tensorflow"] is not None)
    """
    out = _run(code, KERAS_BACKEND="jax", JAX_NUM_CPU_DEVICES="2", JAX_PLATFORMS="cpu").stdout
    assert out.split("\n")[:-1] == [
        "mirrored",
        "refused: True",
        "16 32",
        "8",
        "16",
        "Warmup",
        "False",
    ]
