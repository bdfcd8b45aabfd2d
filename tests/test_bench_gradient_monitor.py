"""Smoke test of bench/gradient_monitor_overhead.py: ``--quick`` runs and ends with the JSON line."""

import importlib.util
import json
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "gradient_monitor_overhead.py"
CONFIGS = {"baseline", "monitor", "monitor_n1"}
FIGURES = {
    "steps_per_second",
    "best_steps_per_second",
    "step_ms",
    "ratio",
    "ratio_min",
    "ratio_max",
    "ratio_cpu",
    "ratio_best",
    "fit_ratio",
    "first_epoch_extra_s",
}


def load_bench():
    spec = importlib.util.spec_from_file_location("gradient_monitor_overhead", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_ends_with_one_json_object(capsys):
    # One model keeps the smoke test to seconds; the full run covers both.
    figures = load_bench().main(["--quick", "--repeats", "1", "--models", "mlp"])
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last_line) == figures
    assert {
        "benchmark",
        "target_ratio",
        "default_sample_every",
        "all_within_target",
        "ratio_default",
        "ratio_every_step",
        "models",
        "settings",
        "environment",
    } <= set(figures)
    assert figures["benchmark"] == "gradient_monitor_overhead"
    assert figures["default_sample_every"] == 10
    assert set(figures["models"]) == {"mlp"}
    mlp = figures["models"]["mlp"]
    assert mlp["params"] == 16 * 16 + 16 + 16 * 16 + 16 + 16 * 10 + 10  # the --quick widths
    assert set(mlp["configs"]) == CONFIGS
    for name, result in mlp["configs"].items():
        assert set(result) == FIGURES, name
        assert result["steps_per_second"] > 0, name
        assert result["ratio"] > 0, name
    assert mlp["configs"]["baseline"]["ratio"] == 1.0
    assert figures["ratio_default"] == {"mlp": mlp["configs"]["monitor"]["ratio"]}
    assert figures["ratio_every_step"] == {"mlp": mlp["configs"]["monitor_n1"]["ratio"]}
    environment = figures["environment"]
    assert environment["cpu_count"] >= 1
    assert environment["keras"]
    assert {"load_average_before", "load_average_after"} <= set(environment)


def test_large_model_has_over_a_million_parameters():
    bench = load_bench()
    features, hidden, _, _ = bench.spec_of("large", bench.parse_args([]))
    sizes = [features, *hidden, bench.CLASSES]
    assert sum((a + 1) * b for a, b in zip(sizes, sizes[1:], strict=False)) >= 1_000_000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--models", "mlp,nope"], "nope"),
        (["--steps", "5", "--epochs", "2"], "multiple"),
        (["--repeats", "0"], "--repeats"),
    ],
)
def test_bad_arguments_are_refused(capsys, argv, message):
    with pytest.raises(SystemExit):
        load_bench().parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_quick_run_on_the_jax_backend_times_the_train_functions_directly():
    # JAX's train function is stateless, (state, iterator) -> (logs, state), and
    # donates its state: the in-graph part threads it and writes it back.
    import os
    import subprocess
    import sys

    env = dict(os.environ, KERAS_BACKEND="jax")
    argv = [sys.executable, str(BENCH), "--quick", "--repeats", "1", "--models", "mlp"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["environment"]["backend"] == "jax"
    in_graph = figures["models"]["mlp"]["in_graph"]
    assert in_graph["baseline_ms"] > 0
    assert in_graph["default_cadence_ratio"] > 0 and in_graph["every_step_ratio"] > 0
