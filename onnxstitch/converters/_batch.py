"""Which dim 0 is the batch: proved by running the model at batch sizes that differ per input.

A converter used to tie dim 0 of every input to one ``batch`` symbol. An input that is not
batch-major (a memory, a key table) then looked batchable, and a server would split it across
requests. Here a dim 0 is the batch only where the model shows it:

* run the model with every input's dim 0 at 2, then at 3: the outputs whose dim 0 follows (2, then
  3) are the batch outputs; none → nothing is proven;
* with several inputs, run once more per input with only that input's dim 0 at 3: an input is the
  batch when a batch output follows it, or when the model refuses to run (it is tied to the others).

Feeds are the caller's examples with their rows repeated or cut (valid token ids stay valid).

Functions:
    ``prove_batch(run, examples, *, what) -> BatchProof | None``  the proof (``None``: no proof).
    ``prove_onnx(model, *, what) -> BatchProof | None``  the same, running ``model`` in onnxruntime
        on seeded random feeds.
    ``apply_proof(model, proof, symbol="batch") -> model``  (in place) an unproven input's dim 0
        gets its own ``<input>_dim0``; a batch output's unlinked dim 0 becomes ``symbol``; a
        non-batch output labelled ``symbol`` gets ``<output>_dim0``.
    ``split_unproven(spec, names, proof) -> spec``  a torch dynamic-dims spec with an own symbol for
        each input whose dim 0 is not the batch.
    ``as_numpy(tensors) -> list[np.ndarray]``  CPU numpy copies of torch tensors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from onnxstitch.converters import _common

__all__ = ["BatchProof", "apply_proof", "as_numpy", "prove_batch", "prove_onnx", "split_unproven"]

logger = logging.getLogger(__name__)

_SMALL, _LARGE = 2, 3
_PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class BatchProof:
    """What the runs showed.

    Attributes:
        inputs: indices (graph-input order) of the inputs whose dim 0 is the batch.
        outputs: indices of the outputs whose dim 0 follows it.
    """

    inputs: frozenset[int]
    outputs: frozenset[int]


def prove_batch(
    run: Callable[[list[np.ndarray]], Sequence[np.ndarray]],
    examples: Sequence[np.ndarray],
    *,
    what: str,
    fixed: Collection[int] = (),
) -> BatchProof | None:
    """Find the inputs whose dim 0 is the batch by running ``run`` at sizes that differ per input.

    Args:
        run: the model: arrays in input order -> outputs in order.
        examples: one array per input (rank >= 1 for a candidate; its rows are repeated or cut).
        what: the model, for the log.
        fixed: indices of inputs whose dim 0 is static (never resized, never the batch).

    Returns:
        The proof, or ``None`` when the model cannot run at dim 0 = 2 and 3 or no output follows.
    """
    candidates = [i for i, a in enumerate(examples) if a.ndim >= 1 and a.shape[0] >= 1 and i not in fixed]
    if not candidates:
        return None

    def firsts(sizes: dict[int, int]) -> list[int | None] | None:
        arrays = [_rows(a, sizes[i]) if i in sizes else a for i, a in enumerate(examples)]
        try:
            outs = run(arrays)
        except Exception as exc:  # the model may refuse sizes that differ: that is evidence too
            logger.debug("%s: does not run at dim-0 sizes %s: %s", what, sizes, exc)
            return None
        return [int(np.shape(o)[0]) if np.ndim(o) >= 1 else None for o in outs]

    small = firsts(dict.fromkeys(candidates, _SMALL))
    large = firsts(dict.fromkeys(candidates, _LARGE))
    if small is None or large is None or len(small) != len(large):
        logger.info("%s: cannot run at batch sizes %d and %d; dim 0 left as declared", what, _SMALL, _LARGE)
        return None
    follows = frozenset(j for j, (s, b) in enumerate(zip(small, large, strict=True)) if (s, b) == (2, 3))
    if not follows:
        logger.info("%s: no output's dim 0 follows the inputs' dim 0; no batch dim", what)
        return None
    if len(candidates) == 1:
        return BatchProof(frozenset(candidates), follows)
    batch = set()
    for i in candidates:
        moved = firsts({**dict.fromkeys(candidates, _SMALL), i: _LARGE})
        if moved is None or any(moved[j] == _LARGE for j in follows if j < len(moved)):
            batch.add(i)
    logger.info("%s: dim 0 of inputs %s is the batch (of %s)", what, sorted(batch), candidates)
    return BatchProof(frozenset(batch), follows)


def prove_onnx(model: onnx.ModelProto, *, what: str) -> BatchProof | None:
    """:func:`prove_batch` for an ONNX model run in onnxruntime on seeded random feeds."""
    if model.ByteSize() >= _PROTOBUF_LIMIT:
        return None
    try:
        from onnxstitch.runtime.session import Session
        from onnxstitch.runtime.verification import random_feeds

        # a Session, not a bare InferenceSession: it also works once a process-wide pool exists
        session = Session(model, device="cpu", optimization="basic")
        feeds = random_feeds(model, _LARGE)
    except Exception as exc:  # no proof, no claim
        logger.info("%s: cannot run the model to find its batch dim: %s", what, exc)
        return None
    names = session.input_names
    declared = {v.name: _common.value_dims(v) for v in model.graph.input}
    fixed = [i for i, n in enumerate(names) if declared.get(n) and isinstance(declared[n][0], int)]

    def run(arrays: list[np.ndarray]) -> Sequence[np.ndarray]:
        return list(session.run(dict(zip(names, arrays, strict=True))).values())

    return prove_batch(run, [feeds[n] for n in names], what=what, fixed=fixed)


def apply_proof(model: onnx.ModelProto, proof: BatchProof, symbol: str = "batch") -> onnx.ModelProto:
    """Name dim 0 of the inputs and outputs after ``proof`` (in place); return ``model``."""
    inits = {t.name for t in model.graph.initializer}
    inputs = [v for v in model.graph.input if v.name not in inits]
    for i, value in enumerate(inputs):
        dims = value.type.tensor_type.shape.dim
        if i not in proof.inputs and dims and dims[0].dim_param == symbol:
            dims[0].dim_param = f"{value.name}_dim0"
    other_axes = {d for v in inputs for d in _common.value_dims(v)[1:] if isinstance(d, str)}
    input_dim0 = {_common.value_dims(v)[0] for v in inputs if _common.value_dims(v)}
    for j, value in enumerate(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims or dims[0].HasField("dim_value"):
            continue
        if j in proof.outputs and dims[0].dim_param not in input_dim0 | other_axes:
            old = dims[0].dim_param
            dims[0].dim_param = symbol
            if old:
                _common.rename_dims(model, {old: symbol})
        elif j not in proof.outputs and dims[0].dim_param == symbol:
            dims[0].dim_param = f"{value.name}_dim0"
    return model


def split_unproven(
    spec: dict[str, dict[int, str]], names: Sequence[str], proof: BatchProof, symbol: str = "batch"
) -> dict[str, dict[int, str]]:
    """A new dynamic-dims spec: an input whose dim 0 is ``symbol`` but not proven gets ``<input>_dim0``."""
    out = {name: dict(axes) for name, axes in spec.items()}
    for i, name in enumerate(names):
        if i not in proof.inputs and out.get(name, {}).get(0) == symbol:
            out[name][0] = f"{name}_dim0"
    return out


def _rows(array: np.ndarray, n: int) -> np.ndarray:
    """``array`` with ``n`` rows: its own rows repeated in order (or cut)."""
    picked: np.ndarray = np.take(array, np.arange(n) % array.shape[0], axis=0)
    return picked


def as_numpy(tensors: Sequence[Any]) -> list[np.ndarray]:
    """CPU numpy copies of torch tensors (or arrays), for :func:`prove_batch`."""
    out = []
    for t in tensors:
        detach = getattr(t, "detach", None)
        out.append(np.asarray(detach().cpu().numpy()) if detach is not None else np.asarray(t))
    return out
