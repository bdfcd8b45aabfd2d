"""bench/nas_latency.py: a latency in every row, resumable; the shipped table has them all."""

import importlib.util
import json
import math
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench" / "nas_latency.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("nas_latency", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_latencies_are_written_once_and_the_rest_of_each_row_kept(tmp_path, capsys):
    bench = load_bench()
    archs = bench.table_space().architectures()[:2]
    rows = [{"arch": a, "params": 10 + i, "val_accuracy": [[0.5]]} for i, a in enumerate(archs)]
    table = tmp_path / "table.jsonl"
    table.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    # --threads 0: TensorFlow is already initialized in this process (set_threads would raise).
    argv = ["--table", str(table), "--threads", "0"]
    figures = bench.main([*argv, "--repeats", "3", "--every", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == figures
    assert (figures["measured_now"], figures["with_latency"]) == (2, 2)
    written = [json.loads(line) for line in table.read_text().splitlines()]
    for before, after in zip(rows, written, strict=True):
        assert {k: after[k] for k in before} == before
        assert 0 < after["latency_ms"] < 1e4 and math.isfinite(after["latency_ms"])
        assert after["latency_iqr_ms"] >= 0
    # A rerun measures nothing new and leaves the file as it was.
    text = table.read_text()
    assert bench.main(argv)["measured_now"] == 0
    assert table.read_text() == text


def test_the_shipped_table_has_a_latency_in_every_row():
    lines = (ROOT / "bench" / "data" / "nas_mnist1d.jsonl").read_text().splitlines()
    latencies = [json.loads(line)["latency_ms"] for line in lines]
    assert len(latencies) == 312
    assert all(math.isfinite(t) and t > 0 for t in latencies)
