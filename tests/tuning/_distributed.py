"""Run one script as keras-tuner's chief and two workers on 127.0.0.1 (gRPC), with a deadline.

Every process runs the same script with ``KERASTUNER_TUNER_ID`` /
``KERASTUNER_ORACLE_IP`` / ``KERASTUNER_ORACLE_PORT`` set, as docs/tuning.md
says to: the workers train, the chief serves the oracle. A process still
running at the deadline is killed. Used by ``tests/tuning/test_distributed.py``
and ``tests/search/test_distributed_search.py``.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
ROLES = ("chief", "tuner0", "tuner1")


def free_port():
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(script, args, role, port, log):
    env = dict(os.environ)
    env.update(
        KERASTUNER_TUNER_ID=role,
        KERASTUNER_ORACLE_IP="127.0.0.1",
        KERASTUNER_ORACLE_PORT=str(port),
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=str(ROOT),
    )
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        env=env,
        cwd=str(ROOT),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def run_chief_and_workers(script, args, log_dir, timeout):
    """Run ``script args`` as the chief and two workers; ``(exit codes, output)`` by role.

    Every process is killed if they have not all ended within ``timeout`` seconds.
    """
    port = free_port()
    logs = {role: open(pathlib.Path(log_dir) / f"{role}.log", "w") for role in ROLES}
    processes = {}
    try:
        processes["chief"] = _start(script, args, "chief", port, logs["chief"])
        for role in ROLES[1:]:
            processes[role] = _start(script, args, role, port, logs[role])
        deadline = time.monotonic() + timeout
        for process in processes.values():
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs.values():
            log.close()
    output = {role: (pathlib.Path(log_dir) / f"{role}.log").read_text() for role in ROLES}
    codes = {role: process.returncode for role, process in processes.items()}
    return codes, output


def failure_text(codes, output):
    """The exit codes and each process's last lines, for an assertion message."""
    return f"{codes}\n" + "\n".join(
        f"--- {role} ---\n{text[-3000:]}" for role, text in output.items()
    )
