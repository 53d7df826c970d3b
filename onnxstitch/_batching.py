"""Whether a model can be batched by a server, and why not: one rule for ``deploy`` and ``inspect``.

A model is batchable when dim 0 of every input and every output is one shared symbol. onnxstitch's
converters and composer give that symbol (``batch``) only to a dim the model shows to be the batch
(a dynamic dim 0 that reaches the outputs' dim 0), so a tensor that is not batch-major — a memory,
a key table — carries a symbol of its own and keeps batching off.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Batching", "batching"]

Shape = Sequence[int | str | None] | None


@dataclass(frozen=True)
class Batching:
    """The verdict: ``dim`` is the shared batch symbol (``None``: no batching) and ``reason`` says why."""

    dim: str | None
    reason: str

    def __bool__(self) -> bool:
        return self.dim is not None


def batching(inputs: Sequence[tuple[str, Shape]], outputs: Sequence[tuple[str, Shape]]) -> Batching:
    """Decide from ``(name, shape)`` of the inputs and outputs (shape items: int, symbol or ``None``)."""
    ends = [("input", n, s) for n, s in inputs] + [("output", n, s) for n, s in outputs]
    if not inputs or not outputs:
        return Batching(None, "the model has no inputs or no outputs")
    firsts = Counter(s[0] for _, _, s in ends if s and isinstance(s[0], str))
    symbol = "batch" if "batch" in firsts else (firsts.most_common(1)[0][0] if firsts else None)
    problems = []
    for role, name, shape in ends:
        if shape is None:
            problems.append(f"{role} {name!r} has an unknown rank")
        elif not shape:
            problems.append(f"{role} {name!r} is a scalar (no dim 0)")
        elif isinstance(shape[0], int):
            problems.append(f"{role} {name!r} has the static dim 0 {shape[0]}")
        elif shape[0] is None:
            problems.append(f"{role} {name!r} has an unnamed dim 0 (not shown to be the batch)")
        elif shape[0] != symbol:
            problems.append(f"{role} {name!r} has dim 0 {shape[0]!r}, not the batch dim")
    if symbol is None:
        return Batching(None, "no input or output has a symbolic dim 0: " + "; ".join(problems))
    if problems:
        return Batching(None, f"dim 0 is {symbol!r} elsewhere, but " + "; ".join(problems))
    return Batching(symbol, f"dim 0 of every input and output is {symbol!r}")
