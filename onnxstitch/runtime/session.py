"""A checked, convenient onnxruntime session: ``Session(model_or_path, device="auto")``."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxstitch.errors import (
    DeviceError,
    InputError,
    MissingDependencyError,
    ModelFileError,
    ModelTooLargeError,
    StitchError,
)
from onnxstitch.runtime._feeds import TensorInfo, check_feeds, is_torch_tensor, ort_type_to_numpy, to_numpy

if TYPE_CHECKING:
    import onnx

__all__ = ["DEVICES", "Session", "TensorInfo", "available_providers", "resolve_providers"]

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "tensorrt")
_OPTIMIZATION = ("disabled", "basic", "extended", "all")
_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"
_TRT = "TensorrtExecutionProvider"
_PROTOBUF_LIMIT = 2**31 - 1  # one protobuf message cannot be 2 GiB or more
_global_pool_lock = threading.Lock()
_global_pool_threads: int | None = None


def available_providers() -> list[str]:
    """The execution providers the installed onnxruntime offers."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def _parse_device(device: str) -> tuple[str, int]:
    kind, _, index = device.lower().partition(":")
    if kind not in DEVICES or (index and (kind not in ("cuda", "tensorrt") or not index.isdigit())):
        raise DeviceError(
            f"unknown device {device!r}",
            hint=f"use one of {', '.join(DEVICES)} (cuda and tensorrt take an index, e.g. 'cuda:1')",
        )
    return kind, int(index or 0)


def resolve_providers(device: str) -> list[str]:
    """Execution providers, in priority order, for ``device``.

    Raises:
        DeviceError: the device is unknown or its provider is not available here.
    """
    kind, _ = _parse_device(device)
    available = available_providers()
    wanted = {"cpu": [_CPU], "cuda": [_CUDA, _CPU], "tensorrt": [_TRT, _CUDA, _CPU]}
    if kind == "auto":
        return [_CUDA, _CPU] if _CUDA in available else [_CPU]
    missing = [p for p in wanted[kind][:1] if p not in available]
    if missing:
        raise DeviceError(
            f"device {device!r}: requested provider {missing[0]}, available: {available}",
            hint="pip install 'onnxstitch[gpu]' (onnxruntime-gpu) on a CUDA machine, or use device='cpu'",
        )
    return [p for p in wanted[kind] if p in available]


def _use_global_pool(threads: int | None) -> None:
    """Create onnxruntime's process-wide thread pool once (before the first session)."""
    global _global_pool_threads
    from onnxruntime.capi import _pybind_state as c_api

    size = threads or 0
    with _global_pool_lock:
        if _global_pool_threads is None:
            # once the pool exists onnxruntime refuses sessions with pools of their own, so run the
            # (cached) version probes of onnxstitch.files, which make such sessions, before it does
            from onnxstitch.files._limits import ort_max_ir_version, ort_max_opset

            ort_max_opset()
            ort_max_ir_version()
            c_api.set_global_thread_pool_sizes(size, 1)
            _global_pool_threads = size
        elif threads is not None and _global_pool_threads != size:
            logger.warning(
                "the shared thread pool already has %s threads; ignoring threads=%s",
                _global_pool_threads or "default",
                threads,
            )


def _session_options(optimization: str, threads: int | None, *, shared_threads: bool, spinning: bool) -> Any:
    """onnxruntime ``SessionOptions`` for the given optimisation level and threading."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if shared_threads or _global_pool_threads is not None:
        if not shared_threads:
            logger.info("the process-wide thread pool exists; onnxruntime makes every session share it")
        _use_global_pool(threads)
        options.use_per_session_threads = False
    else:
        options.inter_op_num_threads = 1
        if threads is not None:
            options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _fp16_model(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError as exc:  # the converter needs `packaging`, which not every install has
        raise MissingDependencyError(
            exc.name or "onnxruntime.transformers", extra="gpu", purpose="fp16=True (float16 conversion)"
        ) from exc

    try:
        converted: onnx.ModelProto = convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:  # third-party conversion failure: wrap with context
        raise StitchError(
            f"converting the model to float16 failed: {exc}",
            hint="run it in float32 (fp16=False)",
        ) from exc
    return converted


class Session:
    """An onnxruntime inference session that checks its feeds before it runs.

    Args:
        model_or_path: an ``onnx.ModelProto`` or the path of an ``.onnx`` file (prefer the path for
            big models: onnxruntime then reads external data itself).
        device: ``"auto"`` (CUDA when usable, else CPU), ``"cpu"``, ``"cuda"`` / ``"cuda:N"`` or
            ``"tensorrt"``.
        threads: intra-op threads (``None``: onnxruntime's default, one per core).
        optimization: graph optimisation level: ``"all"``, ``"extended"``, ``"basic"``, ``"disabled"``.
        fp16: convert the model to float16 inside, keeping float32 inputs and outputs.
        shared_threads: run on onnxruntime's process-wide thread pool instead of a pool of its own,
            so several sessions in one process do not steal each other's cores. The pool is created
            with the first such session's ``threads``; once it exists, onnxruntime requires every
            later session of the process to share it, so later sessions join it too (and a plain
            ``onnxruntime.InferenceSession`` made elsewhere with default options is refused).
        spinning: let idle intra-op threads spin (fastest for one session alone); turn it off when
            several sessions or frameworks share the cores.
        cuda_options: extra options of onnxruntime's CUDA execution provider (strings), e.g.
            ``{"prefer_nhwc": "1"}`` (channels-last convolution kernels) or ``{"use_tf32": "0"}``
            (exact fp32 matmuls and convolutions; TF32 is the provider's default).

    Raises:
        DeviceError: the device is unknown or unavailable.
        ModelFileError: the model cannot be read or onnxruntime refuses it.
        ModelTooLargeError: a ``ModelProto`` past 2 GB was given (pass its path instead).
        UnsafeModelError: the file's external data would be read from outside its folder.
        VersionError: the model's IR version or opset is newer than onnxruntime runs.
    """

    def __init__(
        self,
        model_or_path: onnx.ModelProto | str | os.PathLike[str],
        *,
        device: str = "auto",
        threads: int | None = None,
        optimization: str = "all",
        fp16: bool = False,
        shared_threads: bool = False,
        spinning: bool = True,
        cuda_options: Mapping[str, str] | None = None,
    ) -> None:
        import onnxruntime as ort

        if optimization not in _OPTIMIZATION:
            raise StitchError(
                f"unknown optimization level {optimization!r}", hint=f"use one of {', '.join(_OPTIMIZATION)}"
            )
        if threads is not None and threads < 1:
            raise StitchError(f"threads must be a positive number, got {threads}")
        self.device = device
        self.fp16 = fp16
        providers = resolve_providers(device)
        _, device_id = _parse_device(device)
        options = _session_options(optimization, threads, shared_threads=shared_threads, spinning=spinning)
        provider_options: list[dict[str, str]] = []
        for p in providers:
            entry = {"device_id": str(device_id)} if p in (_CUDA, _TRT) else {}
            if p == _CUDA and cuda_options:
                entry.update({str(k): str(v) for k, v in cuda_options.items()})
            provider_options.append(entry)
        source, checked = self._source(model_or_path)
        started = time.perf_counter()
        try:
            self._sess = ort.InferenceSession(
                source, sess_options=options, providers=providers, provider_options=provider_options
            )
            self.creation_seconds = time.perf_counter() - started
            self.inputs = [self._info(a) for a in self._sess.get_inputs()]
            self.outputs = [self._info(a) for a in self._sess.get_outputs()]
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            if not checked and isinstance(source, str):
                # only the cheap checks ran: the full one raises the error that names the fault
                from onnxstitch.files import check_file

                check_file(source)
            raise ModelFileError(
                f"onnxruntime cannot load the model ({self._label}): {exc}",
                hint="check it with `onnxstitch inspect` and onnx.checker.check_model(full_check=True)",
            ) from exc
        self.providers: list[str] = list(self._sess.get_providers())
        if providers[0] != _CPU and providers[0] not in self.providers:
            if device == "auto":
                logger.warning("CUDA provider listed but not usable; running on CPU")
            else:
                raise DeviceError(
                    f"device {device!r}: requested provider {providers[0]} could not be initialised, "
                    f"available: {self.providers}",
                    hint="check the CUDA/cuDNN libraries (import torch first), or use device='cpu'",
                )
        self.on_cuda = self.providers[0] in (_CUDA, _TRT)
        self.device_id = device_id
        self._active: set[Any] = set()
        self._lock = threading.Lock()
        logger.debug("session on %s created in %.3f s", self.providers, self.creation_seconds)

    def _source(self, model_or_path: onnx.ModelProto | str | os.PathLike[str]) -> tuple[str | bytes, bool]:
        """A path for onnxruntime (big models, external data) or the serialised model.

        A path is checked before onnxruntime opens it. Without ``fp16``, only what onnxruntime
        cannot be trusted with is checked here: a file that may name external data gets the full
        :func:`~onnxstitch.files.check_file` (containment), any other only the cheap checks of
        :mod:`onnxstitch.files._precheck`, so ``onnx`` is never imported for it. The second element
        says whether the full check ran (if not, it runs when onnxruntime refuses the file).
        """
        onnx_module = sys.modules.get("onnx")  # not imported: the argument cannot be a ModelProto
        if onnx_module is not None and isinstance(model_or_path, onnx_module.ModelProto):
            self._label = f"graph {model_or_path.graph.name!r}"
            if model_or_path.ByteSize() >= _PROTOBUF_LIMIT:
                raise ModelTooLargeError(
                    f"the model ({self._label}) is past protobuf's 2 GB limit (no in-memory hand-over)",
                    hint="save it with onnxstitch.save(model, path) (external data) and pass the path",
                )
            model = _fp16_model(model_or_path) if self.fp16 else model_or_path
            data: bytes = model.SerializeToString()
            return data, True
        path = Path(model_or_path)
        self._label = str(path)
        if not path.is_file():
            raise ModelFileError(f"model file {str(path)!r} does not exist or is not a file")
        if self.fp16:
            from onnxstitch.files import as_model

            return _fp16_model(as_model(path)).SerializeToString(), True
        from onnxstitch.files._precheck import needs_full_check

        if needs_full_check(path):
            from onnxstitch.files import check_file

            check_file(path)  # onnxruntime itself would follow a hardlink out of the model's folder
            return str(path), True
        return str(path), False

    @staticmethod
    def _info(arg: Any) -> TensorInfo:
        shape = tuple(d if isinstance(d, int | str) else None for d in (arg.shape or []))
        return TensorInfo(arg.name, ort_type_to_numpy(arg.type), shape)

    def __repr__(self) -> str:
        ins = ", ".join(str(i) for i in self.inputs)
        outs = ", ".join(str(o) for o in self.outputs)
        return f"Session({self._label}, providers={self.providers}, inputs=[{ins}], outputs=[{outs}])"

    @property
    def input_names(self) -> list[str]:
        """The model's input names, in graph order."""
        return [i.name for i in self.inputs]

    @property
    def output_names(self) -> list[str]:
        """The model's output names, in graph order."""
        return [o.name for o in self.outputs]

    def run(
        self,
        feeds: Mapping[str, Any],
        *,
        outputs: Sequence[str] | None = None,
        output_device: str = "cpu",
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Check ``feeds`` and run the model.

        Args:
            feeds: input name -> numpy array or torch tensor (CPU or, on a CUDA session, CUDA).
            outputs: names of the outputs to compute (default: all).
            output_device: ``"cpu"`` returns numpy arrays; ``"cuda"`` (CUDA session only) returns
                torch tensors that stay on the GPU (IO binding, no host copy).
            timeout: seconds after which the run is cancelled (``RunOptions.terminate``).

        Returns:
            Output name -> array (or torch tensor with ``output_device="cuda"``), in graph order.

        Raises:
            InputError: the feeds do not match the model's inputs (every problem listed), or an
                unknown output name was asked for.
            DeviceError: ``output_device="cuda"`` on a session that does not run on CUDA.
            RunTimeoutError: the run was cancelled after ``timeout`` seconds or by :meth:`terminate`.
            StitchError: onnxruntime failed while running the model.
        """
        symbols = check_feeds(self.inputs, feeds)
        names = self._output_names(outputs)
        if output_device not in ("cpu", "cuda"):
            raise DeviceError(f"unknown output_device {output_device!r}", hint="use 'cpu' or 'cuda'")
        cuda_feeds = any(is_torch_tensor(v) and v.device.type == "cuda" for v in feeds.values())
        if output_device == "cuda" and not self.on_cuda:
            raise DeviceError(
                f"output_device='cuda' needs a CUDA session, this one runs on {self.providers[0]}",
                hint="create the session with device='cuda'",
            )
        with self._run_options(timeout) as run_options:
            if self.on_cuda and (cuda_feeds or output_device == "cuda"):
                from onnxstitch.runtime._iobinding import run_bound

                return run_bound(self, feeds, names, symbols, output_device, run_options)
            arrays = {name: to_numpy(name, value) for name, value in feeds.items()}
            results = self._call(lambda: self._sess.run(names, arrays, run_options))
        return dict(zip(names, results, strict=True))

    def _output_names(self, outputs: Sequence[str] | None) -> list[str]:
        if outputs is None:
            return self.output_names
        unknown = [n for n in outputs if n not in self.output_names]
        if unknown:
            raise InputError(
                f"unknown output(s) {unknown}",
                hint=f"the model's outputs are: {', '.join(self.output_names)}",
            )
        return list(outputs)

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Call onnxruntime, turning its failures into our errors."""
        try:
            return fn()
        except Exception as exc:  # onnxruntime's own exception types
            if "terminate flag" in str(exc).lower():
                from onnxstitch.errors import RunTimeoutError

                raise RunTimeoutError(
                    f"run of {self._label} was cancelled before it finished",
                    hint="raise the timeout, or run smaller batches (run_batched)",
                ) from exc
            raise StitchError(f"onnxruntime failed running {self._label}: {exc}") from exc

    def _run_options(self, timeout: float | None) -> _ActiveRun:
        import onnxruntime as ort

        if timeout is not None and timeout <= 0:
            raise StitchError(f"timeout must be positive, got {timeout}")
        run_options = ort.RunOptions()
        run_options.log_severity_level = 4  # failures surface as our exceptions, not log spam
        return _ActiveRun(self, run_options, timeout)

    def terminate(self) -> None:
        """Cancel every run in progress on this session (they raise ``RunTimeoutError``).

        The session stays usable for later runs.
        """
        with self._lock:
            for run_options in self._active:
                run_options.terminate = True

    def run_batched(
        self,
        feeds: Mapping[str, Any],
        batch_size: int,
        *,
        outputs: Sequence[str] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run ``feeds`` in slices of ``batch_size`` along dim 0 and concatenate the outputs.

        Args:
            feeds: as for :meth:`run`; every input's dim 0 must have the same size.
            batch_size: rows per run.
            outputs: names of the outputs to compute (default: all).
            progress: called as ``progress(rows_done, rows_total)`` after each slice.

        Returns:
            Output name -> numpy array, the slices' outputs concatenated along dim 0.

        Raises:
            InputError: ``batch_size`` is not positive, dim 0 differs between inputs, or a slice's
                feeds do not match the model.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be a positive number, got {batch_size}")
        arrays = {name: to_numpy(name, value) for name, value in feeds.items()}
        check_feeds(self.inputs, arrays)
        sizes = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
        if len(set(sizes.values())) > 1 or None in sizes.values():
            raise InputError(
                f"run_batched splits every input along dim 0, but their dim 0 sizes differ: {sizes}",
                hint="give inputs with the same number of rows, or call run()",
            )
        total = next(iter(sizes.values()), 0) or 0
        chunks: list[dict[str, Any]] = []
        for start in range(0, total, batch_size):
            part = {name: a[start : start + batch_size] for name, a in arrays.items()}
            chunks.append(self.run(part, outputs=outputs))
            if progress is not None:
                progress(min(start + batch_size, total), total)
        names = self._output_names(outputs)
        if not chunks:
            return {name: self.run(arrays, outputs=outputs)[name] for name in names}
        return {name: np.concatenate([c[name] for c in chunks], axis=0) for name in names}


class _ActiveRun:
    """Registers a RunOptions with its session while a run is in flight; arms the timeout."""

    def __init__(self, session: Session, run_options: Any, timeout: float | None) -> None:
        self.session = session
        self.run_options = run_options
        self.timeout = timeout
        self.timer: threading.Timer | None = None

    def __enter__(self) -> Any:
        with self.session._lock:
            self.session._active.add(self.run_options)
        if self.timeout is not None:
            self.timer = threading.Timer(self.timeout, self._fire)
            self.timer.daemon = True
            self.timer.start()
        return self.run_options

    def _fire(self) -> None:
        self.run_options.terminate = True

    def __exit__(self, *exc: object) -> None:
        if self.timer is not None:
            self.timer.cancel()
        with self.session._lock:
            self.session._active.discard(self.run_options)
