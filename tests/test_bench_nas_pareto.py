"""Smoke test of bench/nas_pareto.py on a small synthetic table: ends with the JSON line."""

import importlib.util
import json
import pathlib

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench" / "nas_pareto.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("nas_pareto", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hypervolume_is_the_staircase_area():
    bench = load_bench()
    # front (cost 1, acc 0.5), (cost 2, acc 0.8); (3, 0.6) dominated; reference cost 4:
    # area = (2 − 1)·0.5 + (4 − 2)·0.8
    assert bench.hypervolume([0.5, 0.8, 0.6], [1.0, 2.0, 3.0], 4.0) == 0.5 + 1.6


def test_a_small_table_ends_with_one_json_object(tmp_path, capsys):
    bench = load_bench()
    space = bench.table_space()
    rows = []
    for i, arch in enumerate(space.architectures()[:24]):
        accuracy = 0.5 + 0.01 * (i % 7)
        rows.append(
            {
                "arch": arch,
                "val_accuracy": [[accuracy] * 3] * 3,
                "params": 100 + 10 * i,
                "seconds_per_epoch": 1.0,
            }
        )
    table = tmp_path / "table.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    figure = tmp_path / "front.png"
    figures = bench.main(
        ["--table", str(table), "--runs", "2", "--budget", "24", "--figure", str(figure),
         "--searchers", "random,pareto_evolution"]
    )  # fmt: skip
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    assert figure.exists() and figures["architectures"] == 24
    # a budget as large as the table: random search sees every row, the whole front
    assert figures["searchers"]["random"]["hypervolume_share_median"] == 1.0
    # the front: accuracy 0.5 + 0.01·(i mod 7) rises until i = 6 (params 160)
    assert [row["params"] for row in figures["table_front"]] == [100, 110, 120, 130, 140, 150, 160]


def test_the_latency_front_reads_the_table_and_needs_it_in_every_row(tmp_path, capsys):
    import pytest

    bench = load_bench()
    archs = bench.table_space().architectures()[:6]
    rows = [
        {"arch": a, "val_accuracy": [[0.5 + 0.01 * i] * 3] * 3, "params": 100,
         "seconds_per_epoch": 1.0, "latency_ms": 0.25 * (i + 1)}
        for i, a in enumerate(archs)
    ]  # fmt: skip
    table = tmp_path / "table.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    argv = ["--table", str(table), "--runs", "1", "--budget", "6", "--searchers", "random"]
    figures = bench.main([*argv, "--cost", "latency_ms"])
    # accuracy and latency both rise with i: every architecture is on the front
    assert [row["latency_ms"] for row in figures["table_front"]] == [
        0.25,
        0.5,
        0.75,
        1.0,
        1.25,
        1.5,
    ]
    del rows[2]["latency_ms"]
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match="nas_latency.py"):
        bench.main([*argv, "--cost", "latency_ms"])
