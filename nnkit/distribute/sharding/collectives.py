"""Collective bytes per device per step, read from a compiled step's optimized HLO.

A layout's communication cost is what XLA's SPMD partitioner inserted into
the compiled program: ``all-reduce``, ``all-gather``, ``reduce-scatter``,
``all-to-all`` and ``collective-permute`` instructions. This module reads
them from ``compiled.as_text()`` (the optimized HLO of a
``jax.stages.Compiled``, e.g. the ahead-of-time compiled train step of
``memory.py``) and sums, per device,

    collective bytes = Σ over collective instructions of max(operand bytes, result bytes)

that is, the size of the whole buffer each collective works on at one
device: an all-reduce's buffer (operand = result), an all-gather's gathered
result, a reduce-scatter's full operand, an all-to-all's or permute's
buffer. A combined collective over a tuple counts every element. An
asynchronous pair (``all-gather-start`` … ``all-gather-done``, as on GPUs)
counts once, at its ``-done``, with the ``-start``'s operands. Each
instruction counts once: one inside a loop body counts once, not once per
iteration (Keras's train step has no loop unless gradient accumulation or a
scan is used).

This is a *volume* figure for ranking layouts, not the bytes on the wire: a
ring all-reduce over ``n`` devices sends ``2 (n − 1) / n`` of its buffer,
an all-gather ``(n − 1) / n`` of its result. Dtype sizes follow HLO's names
(``f32`` 4 bytes, ``bf16`` 2, ``pred`` 1, ``token`` 0).
"""

import re

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")

_BYTES = {"pred": 1, "s4": 1, "u4": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2}
_BYTES |= {"bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_BYTES |= {"c64": 8, "c128": 16, "token": 0}
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>.*?)\s"
    r"(?P<opcode>[a-z][a-z0-9\-]*)\((?P<operands>[^)]*)\)"
)
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,\s]*)\]")
_OPERAND = re.compile(r"%([\w.\-]+)")


def shape_bytes(shape):
    """Bytes of an HLO shape string (``"f32[64,16]{1,0}"``; a tuple: the sum of its arrays)."""
    total = 0
    for dtype, dims in _ARRAY.findall(shape):
        if dtype not in _BYTES:
            continue
        size = _BYTES[dtype]
        for n in filter(None, (d.strip() for d in dims.split(","))):
            size *= int(n)
        total += size
    return total


def _kind(opcode):
    """The collective an opcode is (``"all-gather"`` for ``all-gather-done``) and its phase."""
    for kind in COLLECTIVES:
        if opcode == kind:
            return kind, "sync"
        if opcode == f"{kind}-start":
            return kind, "start"
        if opcode == f"{kind}-done":
            return kind, "done"
    return None, None


def collective_bytes(hlo_text):
    """``{collective kind: bytes}`` per device per step of an optimized HLO module's text.

    Every kind of ``COLLECTIVES`` is a key (0 where absent); ``sum(...values())``
    is the total. See the module docstring for the counting rule.
    """
    shapes, pending = {}, {}
    totals = dict.fromkeys(COLLECTIVES, 0)
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if match is None:
            continue
        name, shape, opcode = match["name"], match["shape"], match["opcode"]
        result = shape_bytes(shape)
        shapes[name] = result
        kind, phase = _kind(opcode)
        if kind is None:
            continue
        operands = sum(shapes.get(o, 0) for o in _OPERAND.findall(match["operands"]))
        if phase == "start":
            pending[name] = operands
        elif phase == "done":
            started = _OPERAND.findall(match["operands"])
            totals[kind] += max(sum(pending.get(o, 0) for o in started), result)
        else:
            totals[kind] += max(operands, result)
    return totals
