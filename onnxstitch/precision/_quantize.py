"""``quantize``: int8 per part through onnxruntime's quantization tools, behind the accuracy gate."""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import onnx

from onnxstitch.errors import MissingDependencyError, StitchError
from onnxstitch.precision._calibration import (
    Calibration,
    Feeds,
    check_informative,
    load_calibration,
    split_holdout,
)
from onnxstitch.precision._flow import gated, quiet_root_logger
from onnxstitch.precision._large import is_large
from onnxstitch.precision._parts import choose, named_copy, node_parts
from onnxstitch.precision._rewrite import global_pools
from onnxstitch.precision._stem import THIN_CHANNELS, choose_thin

__all__ = ["FORMATS", "METHODS", "PRECISIONS", "quantize"]

logger = logging.getLogger(__name__)

PRECISIONS = ("int8", "int8-dynamic", "fp32")
FORMATS = ("qdq", "qoperator")
METHODS = ("minmax", "entropy", "percentile")

Progress = Callable[[int, int], None]


def _reader(feeds: list[Feeds], progress: Progress | None) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.index = 0

        def get_next(self) -> Feeds | None:
            if self.index >= len(feeds):
                return None
            feed = feeds[self.index]
            self.index += 1
            if progress is not None:
                progress(self.index, len(feeds))
            return feed

        def __len__(self) -> int:
            return len(feeds)

    return _Reader()


class _Quantizer:
    """Converts the working copy for any ``{part: precision}``; calibrates once (cached in ``folder``)."""

    def __init__(
        self,
        work: onnx.ModelProto,
        feeds: list[Feeds],
        folder: Path,
        options: dict[str, Any],
        progress: Progress | None,
        *,
        external: bool,
    ) -> None:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        from onnxstitch.files import save

        self.work, self.feeds, self.folder = work, feeds, folder
        self.options, self.progress = options, progress
        self.external = external
        self.parts = node_parts(work)
        self.source = folder / "model.onnx"
        self.cache = folder / "calibration.json"
        # past 2 GB every file is written with external data (<name>.onnx.data beside it)
        save(work, folder / "named.onnx", external_data=external)
        files: dict[str, Any] = (
            {
                "save_as_external_data": True,
                "all_tensors_to_one_file": True,
                "external_data_location": self.source.name + ".data",
            }
            if external
            else {}
        )
        # shape inference only (no graph optimization): nodes keep their names, so their parts.
        # Symbolic shape inference (dynamic dims of transformers) needs sympy, which onnxruntime
        # does not require: without it, or where it fails on a model, ONNX shape inference alone.
        symbolic = importlib.util.find_spec("sympy") is not None
        with quiet_root_logger():
            try:
                quant_pre_process(
                    str(folder / "named.onnx"),
                    str(self.source),
                    skip_optimization=True,
                    skip_symbolic_shape=not symbolic,
                    **files,
                )
            except Exception as exc:  # symbolic inference raises anything: retry without it
                if not symbolic:
                    raise
                logger.info(
                    "symbolic shape inference failed (%s: %s); ONNX shape inference only",
                    type(exc).__name__,
                    exc,
                )
                # onnx appends to an existing external data file: start from none
                folder.joinpath(self.source.name + ".data").unlink(missing_ok=True)
                quant_pre_process(
                    str(folder / "named.onnx"),
                    str(self.source),
                    skip_optimization=True,
                    skip_symbolic_shape=True,
                    **files,
                )
        (folder / "named.onnx").unlink()
        (folder / "named.onnx.data").unlink(missing_ok=True)
        self.runs = 0
        self.made: dict[tuple[frozenset[tuple[str, str]], frozenset[str]], onnx.ModelProto] = {}

    def __call__(self, choice: Mapping[str, str], keep: Collection[str] = ()) -> onnx.ModelProto:
        """The working copy with ``choice``'s precisions; the convolutions named in ``keep`` stay
        float32 inside static int8 parts. The same arguments give the same (cached) model."""
        key = (frozenset(choice.items()), frozenset(keep))
        if key not in self.made:
            self.made[key] = self._convert(choice, keep)
        return self.made[key]

    def _convert(self, choice: Mapping[str, str], keep: Collection[str]) -> onnx.ModelProto:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_dynamic,
            quantize_static,
        )

        o = self.options
        static = [
            n.name
            for n, p in zip(self.work.graph.node, self.parts, strict=True)
            if choice[p] == "int8" and n.name not in keep
        ]
        dynamic = [
            n.name
            for n, p in zip(self.work.graph.node, self.parts, strict=True)
            if choice[p] == "int8-dynamic"
        ]
        self.runs += 1
        path = self.source
        with quiet_root_logger():
            if static:
                out = self.folder / f"static_{self.runs}.onnx"
                quantize_static(
                    str(path),
                    str(out),
                    _reader(self.feeds, self.progress) if not self.cache.exists() else None,
                    quant_format=QuantFormat.QDQ if o["format"] == "qdq" else QuantFormat.QOperator,
                    per_channel=o["per_channel"],
                    reduce_range=o["reduce_range"],
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_quantize=static,
                    calibrate_method={
                        "minmax": CalibrationMethod.MinMax,
                        "entropy": CalibrationMethod.Entropy,
                        "percentile": CalibrationMethod.Percentile,
                    }[o["calibrate_method"]],
                    calibration_cache_path=str(self.cache),
                    use_external_data_format=self.external,
                )
                path = out
            if dynamic:
                out = self.folder / f"dynamic_{self.runs}.onnx"
                quantize_dynamic(
                    str(path),
                    str(out),
                    per_channel=o["per_channel"],
                    reduce_range=o["reduce_range"],
                    weight_type=QuantType.QInt8,
                    nodes_to_quantize=dynamic,
                    use_external_data_format=self.external,
                )
                path = out
        if not self.external:
            return onnx.load(str(path))
        from onnxstitch.files import load

        return load(path)  # the hardened reader: external data read into the model


def thin_convs(model: onnx.ModelProto, min_channels: int) -> set[str]:
    """Names of the Conv nodes with fewer than ``min_channels`` input channels per group."""
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    out = set()
    for node in model.graph.node:
        dims = weights.get(node.input[1]) if node.op_type == "Conv" and len(node.input) > 1 else None
        if dims is not None and len(dims) >= 2 and dims[1] < min_channels:
            out.add(node.name)
    return out


def quantize(
    model: onnx.ModelProto | str | os.PathLike[str],
    calibration: Calibration,
    *,
    parts: Mapping[str, str] | Iterable[str] | str | None = None,
    reference: Callable[..., Any] | None = None,
    holdout: Calibration | None = None,
    min_agreement: float = 0.99,
    rtol: float = 0.05,
    format: str = "qdq",
    per_channel: bool = True,
    reduce_range: bool = False,
    calibrate_method: str = "minmax",
    min_conv_channels: int | None = None,
    global_pool: bool = True,
    progress: Progress | None = None,
) -> onnx.ModelProto:
    """Quantize a model to int8, part by part, and refuse the result if it no longer agrees.

    Static int8 (``"int8"``) goes through onnxruntime's ``quantize_static`` with settings measured
    on an AVX-512 VNNI CPU (``docs/precision.md``, ``scripts/bench/bench_quantize.py``): activations
    uint8 and weights int8 (U8S8, the pairing VNNI's int8 dot product takes; S8S8 ran 5-7x *slower*
    than float32, U8U8 no faster at batch 64); per-channel weights (per-tensor was slower at batch
    64 and, on random data, less accurate); QDQ format (``format="qoperator"`` was no faster:
    onnxruntime fuses the QDQ pairs into the same int8 kernels when it loads the model, and QDQ is
    the portable form TensorRT and other runtimes read); no ``reduce_range`` (7-bit weights, for
    CPUs without VNNI); MinMax calibration (entropy was no better). Dynamic int8
    (``"int8-dynamic"``) quantizes the weights of MatMul/Gemm nodes and the activations at run
    time (``quantize_dynamic``): for parts of matrix products (transformers), where static int8
    erred far more on held-out data.

    What is quantized: ``parts`` names it by part key (the provenance of each node of a merged
    model; a model that was not merged is the one part ``"model"``). By default, what pays: a
    part with a convolution gets static int8; a part of matrix products only gets dynamic int8
    when its MatMul/Gemm weights hold at least 262,144 elements; any other part (a small MLP
    head, glue) stays float32, where int8 saves less than its quantize/dequantize work costs.

    The gate: the quantized model, the float32 model and (when given) ``reference`` run on the
    hold-out samples: ``holdout``, or one calibration sample in 4 held out (interleaved). A
    classifier-like output (float, last dim > 1) must keep its top-1 prediction on
    ``min_agreement`` of the samples, any other output must stay within ``rtol * max|expected|``
    on that share of samples; against the float32 model and against the reference. The report is
    recorded in the result's ``onnxstitch.precision`` metadata (``onnxstitch inspect`` shows it).

    onnxruntime's tools log through the root logger; while they run a root logger without any
    handler gets a ``NullHandler``, so they do not configure logging for the whole process.

    A model past 2 GB (more than ``onnxstitch.precision._large.LARGE_BYTES`` of tensors) goes through
    files with external data in a temporary folder: onnxruntime's tools run with
    ``use_external_data_format=True`` and the gate's sessions open files. The result is read back
    with its weights in memory (a quarter of the float32 size for int8 weights).

    Args:
        model: a ``ModelProto`` (never modified) or a path.
        calibration: a dict of arrays batched along dim 0, an iterable of feed dicts, an ``.npz``
            file or a folder of ``.npy``/``.npz`` files (see :mod:`onnxstitch.precision`).
        parts: ``{part: "int8" | "int8-dynamic" | "fp32"}`` (parts left out stay fp32), a part
            name or a list of them (static int8), or ``None`` for what pays.
        reference: the native chain, called as ``ox.verify`` calls it (inputs as positional numpy
            arrays in graph order).
        holdout: the samples to judge on, in any form ``calibration`` takes.
        min_agreement: the lowest share of agreeing samples accepted, per output and comparison.
        rtol: tolerance of non-classifier outputs, relative to the output's ``max|expected|``.
        format: ``"qdq"`` or ``"qoperator"``.
        per_channel: one scale per output channel of each weight.
        reduce_range: 7-bit weights (for CPUs without VNNI).
        calibrate_method: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        min_conv_channels: a convolution with fewer input channels per group (the stem on RGB or
            grey images) stays float32 inside an int8 part. ``None`` (the default) decides by
            timing on this machine: the model is quantized with the thin (< 4 channels)
            convolutions float32 and int8, both run at batch 1 and at the timing batch, and the
            stem goes int8 only when that is at least 10 % faster (onnxruntime's int8 kernel is
            slow on a 1- or 3-channel stem alone, but a float stem costs layout changes around it;
            which wins depends on the model: ``docs/precision.md``). The timings are recorded in
            the result's settings (``thin_convs``). An int pins it without timing; 0 quantizes
            every convolution.
        global_pool: in a static int8 part, rewrite ``Transpose(NCHW→NHWC)`` → ``ReduceMean`` over
            the spatial axes (how Keras' ``GlobalAveragePooling2D`` arrives) as ``GlobalAveragePool``
            → ``Flatten`` before quantizing, so that onnxruntime pools in int8
            (``QLinearGlobalAveragePool``) instead of dequantizing the whole feature map first.
        progress: called as ``progress(done, total)`` after each calibration batch.

    Returns:
        A new ``ModelProto``: node provenance kept, ``onnxstitch.precision`` recorded.

    Raises:
        PrecisionError: the quantized model agrees less than ``min_agreement`` (its ``report`` holds
            one table per output, its ``attribution`` each part's agreement quantized alone).
        InputError: calibration or hold-out data lacks an input, has the wrong dtype or shape
            (naming the tensor), or a float input is constant over the whole hold-out set (nothing
            could be judged on it).
        SpecError: an unknown part or precision.
        MissingDependencyError: onnxruntime's quantization tools cannot be imported.
        StitchError: an unknown ``format`` or ``calibrate_method``, or onnxruntime's tools failed.
    """
    from onnxstitch.files import as_model

    if format not in FORMATS:
        raise StitchError(f"unknown quantization format {format!r}", hint=f"use one of {list(FORMATS)}")
    if calibrate_method not in METHODS:
        raise StitchError(
            f"unknown calibrate_method {calibrate_method!r}", hint=f"use one of {list(METHODS)}"
        )
    try:
        import onnxruntime.quantization
    except ImportError as exc:
        raise MissingDependencyError("onnxruntime", extra="gpu", purpose="ox.quantize") from exc
    original = as_model(model)
    work = named_copy(original)
    choice = choose(work, parts, allowed=PRECISIONS, converted="int8")
    feeds = load_calibration(calibration, work)
    if holdout is None:
        calib, held, held_text = split_holdout(feeds)
    else:
        calib, held = feeds, load_calibration(holdout, work, what="holdout")
        held_text = f"{sum(len(next(iter(f.values()))) for f in held)} given sample(s)"
    check_informative(held, what="holdout" if holdout is not None else "calibration (its held-out share)")
    import onnxruntime

    static_parts = {p for p, v in choice.items() if v == "int8"}
    qwork, pooled = global_pools(work, static_parts, node_parts(work)) if global_pool else (work, [])
    owners = zip(qwork.graph.node, node_parts(qwork), strict=True)
    in_static = {n.name for n, p in owners if p in static_parts}
    thin = thin_convs(qwork, THIN_CHANNELS if min_conv_channels is None else min_conv_channels) & in_static
    settings: dict[str, Any] = {
        "format": format,
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "activations": "uint8",
        "weights": "int8",
        "calibrate_method": calibrate_method,
        "min_conv_channels": "auto" if min_conv_channels is None else min_conv_channels,
        "kept_fp32": sorted(thin),
        "global_pool": pooled,
        "calibration_batches": len(calib),
        "onnxruntime": onnxruntime.__version__,
    }
    options = {
        "format": format,
        "per_channel": per_channel,
        "reduce_range": reduce_range,
        "calibrate_method": calibrate_method,
    }
    external = is_large(qwork)
    logger.info("quantizing parts %s%s", choice, " (files with external data: past 2 GB)" if external else "")
    with tempfile.TemporaryDirectory(prefix="onnxstitch-quant-") as folder:
        try:
            quantizer = _Quantizer(qwork, calib, Path(folder), options, progress, external=external)
        except (ValueError, RuntimeError, KeyError, onnx.checker.ValidationError) as exc:
            raise StitchError(
                f"onnxruntime's shape inference failed before quantization: {type(exc).__name__}: {exc}",
                hint="check the model with onnx.checker.check_model(model, full_check=True)",
            ) from exc

        def quantized(c: Mapping[str, str], keep: Collection[str]) -> onnx.ModelProto:
            try:
                return quantizer(c, keep)
            except (ValueError, RuntimeError, KeyError, onnx.checker.ValidationError) as exc:
                raise StitchError(
                    f"onnxruntime's quantization failed for parts {dict(c)}: {type(exc).__name__}: {exc}",
                    hint="keep the failing part in float32 (parts={...: 'fp32'})",
                ) from exc

        if min_conv_channels is None and thin and not external:
            thin, settings["thin_convs"] = choose_thin(lambda keep: quantized(choice, keep), thin, held)
            settings["kept_fp32"] = sorted(thin)
        elif min_conv_channels is None and thin:  # two more models past 2 GB to time: not done
            settings["thin_convs"] = {
                "convs": sorted(thin),
                "decided": "not timed: the model is past 2 GB (pin min_conv_channels to choose)",
                "chosen": "float32",
            }

        def convert(c: Mapping[str, str]) -> onnx.ModelProto:
            return quantized(c, thin)

        return gated(
            original,
            work,
            choice,
            convert,
            held,
            held_text,
            reference=reference,
            min_agreement=min_agreement,
            rtol=rtol,
            settings=settings,
            what="int8",
        )
