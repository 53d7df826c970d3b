"""Calibration and hold-out data for :func:`~onnxstitch.precision.quantize` and the accuracy gate.

Accepted forms, all normalised to a list of feed dicts (one per batch) checked against the model:

- a dict ``{input name: array}``, the arrays batched along dim 0 (cut into batches here);
- an iterable of such dicts (each one batch, as a ``CalibrationDataReader`` would yield them);
- a path: an ``.npz`` file (arrays by input name, batched along dim 0), or a folder of ``.npz``
  files (each one batch) and ``.npy`` files (``<input name>.npy``, batched along dim 0; for a model
  with one input any ``.npy`` file is a batch of it).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxstitch.errors import InputError
from onnxstitch.runtime._feeds import TensorInfo

__all__ = ["Calibration", "Feeds", "batches_of", "check_informative", "load_calibration", "split_holdout"]

Feeds = dict[str, np.ndarray[Any, Any]]
Calibration = Mapping[str, Any] | Iterable[Mapping[str, Any]] | str | os.PathLike[str]

#: samples per batch when a dict of batched arrays is cut into calibration or hold-out batches
BATCH = 16
#: one sample in this many goes to the hold-out set when the calibration set is split
HOLDOUT_EVERY = 4


def _inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    from onnxstitch.runtime.verification import _infos

    return _infos(model)


def batches_of(arrays: Mapping[str, np.ndarray[Any, Any]], size: int = BATCH) -> list[Feeds]:
    """Cut a dict of arrays batched along dim 0 into feed dicts of at most ``size`` samples."""
    n = min((len(a) for a in arrays.values()), default=0)
    return [{k: a[i : i + size] for k, a in arrays.items()} for i in range(0, n, size)]


def _from_path(path: Path, names: list[str], what: str) -> list[Feeds]:
    if path.is_file():
        if path.suffix != ".npz":
            raise InputError(
                f"{what} file {str(path)!r} is not an .npz archive",
                hint="save the arrays by input name: numpy.savez(path, **{name: array}); or pass a folder",
            )
        with np.load(path, allow_pickle=False) as archive:
            return batches_of({k: archive[k] for k in archive.files})
    if not path.is_dir():
        raise InputError(
            f"{what} {str(path)!r} does not exist", hint="pass an .npz file or a folder of .npy/.npz"
        )
    feeds: list[Feeds] = []
    named: dict[str, np.ndarray[Any, Any]] = {}
    files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
    if not files:
        raise InputError(f"{what} folder {str(path)!r} holds no .npy or .npz file")
    for file in files:
        if file.suffix == ".npz":
            with np.load(file, allow_pickle=False) as archive:
                feeds.append({k: archive[k] for k in archive.files})
        elif file.stem in names:
            named[file.stem] = np.load(file, allow_pickle=False)
        elif len(names) == 1:
            feeds.append({names[0]: np.load(file, allow_pickle=False)})
        else:
            raise InputError(
                f"{what} file {str(file)!r} is named after no input of the model",
                hint=f"name each .npy file after an input ({', '.join(names)}), or use .npz files",
            )
    return batches_of(named) + feeds if named else feeds


def _check(feed: Mapping[str, Any], infos: list[TensorInfo], where: str, what: str) -> Feeds:
    names = [i.name for i in infos]
    missing = [n for n in names if n not in feed]
    extra = [str(k) for k in feed if k not in names]
    if missing or extra:
        raise InputError(
            f"{what} {where}: missing input(s) {missing}" + (f", unknown name(s) {extra}" if extra else "")
            if missing
            else f"{what} {where}: unknown name(s) {extra}",
            hint=f"the model's inputs are {names}; give one array per input, by name",
        )
    out: Feeds = {}
    for info in infos:
        array = np.asarray(feed[info.name])
        same_kind = np.issubdtype(array.dtype, np.floating) == np.issubdtype(info.dtype, np.floating)
        if array.dtype != info.dtype and not same_kind:
            raise InputError(
                f"{what} {where}: input {info.name!r} is {array.dtype}, the model takes {info.dtype}",
                hint=f"convert it, e.g. array.astype('{info.dtype}')",
            )
        bad_rank = array.ndim != len(info.shape)
        bad_dim = not bad_rank and any(
            isinstance(d, int) and d > 0 and d != s for d, s in zip(info.shape, array.shape, strict=True)
        )
        if bad_rank or bad_dim or array.size == 0:
            want = "[" + ", ".join("?" if d is None else str(d) for d in info.shape) + "]"
            raise InputError(
                f"{what} {where}: input {info.name!r} has shape {list(array.shape)}, the model takes {want}",
                hint="batch the samples along dim 0 and keep every other dim as the model's input has it",
            )
        out[info.name] = np.ascontiguousarray(array.astype(info.dtype, copy=False))
    return out


def load_calibration(
    source: Calibration, model: onnx.ModelProto, *, what: str = "calibration"
) -> list[Feeds]:
    """Normalise ``source`` to checked feed dicts, one per batch.

    Raises:
        InputError: a file or folder cannot be read, a batch lacks an input or names an unknown one,
            or an array's dtype kind, rank or static dims do not fit the input (the message names it);
            no sample at all.
    """
    infos = _inputs(model)
    names = [i.name for i in infos]
    if isinstance(source, str | os.PathLike):
        raw: list[Mapping[str, Any]] = list(_from_path(Path(source), names, what))
    elif isinstance(source, Mapping):
        arrays = {str(k): np.asarray(v) for k, v in source.items()}
        _check(arrays, infos, "(dict of batched arrays)", what)
        raw = list(batches_of(arrays))
    elif isinstance(source, Iterable):
        raw = []
        for i, feed in enumerate(source):
            if not isinstance(feed, Mapping):
                raise InputError(
                    f"{what} batch {i} is a {type(feed).__name__}, not a dict of input name -> array",
                    hint="yield one {input name: array} dict per batch",
                )
            raw.append(feed)
    else:
        raise InputError(
            f"{what} must be a dict of arrays, an iterable of feed dicts or a path, "
            f"got {type(source).__name__}"
        )
    feeds = [_check(feed, infos, f"batch {i}", what) for i, feed in enumerate(raw)]
    if not feeds:
        raise InputError(f"{what} holds no sample", hint="give at least a few representative inputs")
    return feeds


def check_informative(feeds: list[Feeds], *, what: str = "calibration") -> None:
    """Refuse hold-out samples whose float input holds one value everywhere (all zeros, a constant).

    A gate judged on them compares constants: any model would pass. (A constant *calibration* set
    is left to the gate, which then refuses the model it makes.) Integer inputs (token ids, masks)
    are not judged.

    Raises:
        InputError: naming the input and its one value.
    """
    for name in feeds[0]:
        values = [f[name] for f in feeds if np.issubdtype(f[name].dtype, np.floating)]
        if not values:
            continue
        low = min(float(np.min(v)) for v in values)
        high = max(float(np.max(v)) for v in values)
        if low == high:
            samples = sum(len(v) for v in values)
            raise InputError(
                f"{what} input {name!r} is constant ({low:g}) over all {samples} sample(s): nothing "
                f"can be judged on it",
                hint="give representative samples of the data the model will see (holdout=, or a "
                "calibration set a share of which is held out)",
            )


def _concat(feeds: list[Feeds]) -> Feeds | None:
    try:
        return {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
    except ValueError:  # dims other than the batch differ between batches
        return None


def split_holdout(feeds: list[Feeds]) -> tuple[list[Feeds], list[Feeds], str]:
    """Split the calibration set: one sample in :data:`HOLDOUT_EVERY` (interleaved) is held out.

    Returns ``(calibration, holdout, description)``. A set too small to split (fewer than
    ``HOLDOUT_EVERY`` samples or batches) is used for both, and the description says so.
    """
    joined = _concat(feeds)
    if joined is not None:
        n = len(next(iter(joined.values())))
        if n >= HOLDOUT_EVERY:
            held = np.arange(n) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
            calib = batches_of({k: v[~held] for k, v in joined.items()})
            hold = batches_of({k: v[held] for k, v in joined.items()}, size=64)
            return (
                calib,
                hold,
                f"{int(held.sum())} of {n} calibration samples held out (1 in {HOLDOUT_EVERY})",
            )
        return feeds, feeds, f"the {n} calibration sample(s) themselves (too few to hold some out)"
    if len(feeds) >= HOLDOUT_EVERY:
        held_idx = set(range(HOLDOUT_EVERY - 1, len(feeds), HOLDOUT_EVERY))
        calib = [f for i, f in enumerate(feeds) if i not in held_idx]
        hold = [f for i, f in enumerate(feeds) if i in held_idx]
        return calib, hold, f"{len(hold)} of {len(feeds)} calibration batches held out (1 in {HOLDOUT_EVERY})"
    return feeds, feeds, f"the {len(feeds)} calibration batch(es) themselves (too few to hold some out)"
