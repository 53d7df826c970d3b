"""The one exception tree of onnxstitch.

Every error a *user* can cause (a bad model file, a wrong link, a seam mismatch, a parity failure,
a missing optional dependency) is a :class:`StitchError`.  Anything else escaping the library is a
bug in onnxstitch and is deliberately *not* a ``StitchError``.

Each message names the offending model key, node or tensor and says how to fix it.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AdapterError",
    "ConversionError",
    "CycleError",
    "DatasetError",
    "DeployError",
    "DeviceError",
    "InputError",
    "IntegrityError",
    "MissingDependencyError",
    "ModelFileError",
    "ModelTooLargeError",
    "PrecisionError",
    "RunTimeoutError",
    "SandboxError",
    "SeamError",
    "ServeError",
    "SpecError",
    "StitchError",
    "UnsafeModelError",
    "UnsupportedOpsError",
    "ValidationError",
    "VersionError",
]


class StitchError(Exception):
    """Base class of every user-facing onnxstitch error.

    Attributes:
        hint: an optional one-line suggestion of how to fix the problem (already part of the message).
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.hint = hint
        full = message if hint is None else f"{message}\n  fix: {hint}"
        super().__init__(full)


class MissingDependencyError(StitchError, ImportError):
    """An optional backend (torch, tensorflow, tf2onnx, a server) is not installed."""

    def __init__(self, package: str, *, extra: str, purpose: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{purpose} needs the optional dependency {package!r}, which is not installed",
            hint=f"pip install 'onnxstitch[{extra}]'",
        )


class ModelFileError(StitchError):
    """A file is not a readable ONNX model (empty, truncated, zip, pickle, text, ...)."""


class UnsafeModelError(ModelFileError):
    """A model or file would read outside its folder, or execute code, if loaded as asked."""


class IntegrityError(ModelFileError):
    """A model's bytes no longer match the sha256 manifest written next to it."""


class ModelTooLargeError(StitchError):
    """A model is past protobuf's 2 GB limit and must be handled by path with external data."""


class ConversionError(StitchError):
    """A framework model could not be converted to ONNX."""


class UnsupportedOpsError(ConversionError):
    """The converter met operators it cannot express in ONNX.

    Attributes:
        ops: mapping of op type to the node names that use it.
    """

    def __init__(self, message: str, *, ops: dict[str, list[str]], hint: str | None = None) -> None:
        self.ops = ops
        super().__init__(message, hint=hint)


class ValidationError(StitchError):
    """The ONNX model does not compute what the reference computes.

    Attributes:
        report: the full comparison report (a ``VerifyReport``), with a per-output table.
    """

    def __init__(self, message: str, *, report: Any = None, hint: str | None = None) -> None:
        self.report = report
        super().__init__(message, hint=hint)


class SpecError(StitchError):
    """A merge specification is malformed: unknown key or tensor, bad link string, bad YAML, ..."""


class AdapterError(SpecError):
    """An adapter was asked for with arguments it cannot be built from (bad perm, dtype, shape, ...)."""


class CycleError(SpecError):
    """The links between parts form a cycle."""

    def __init__(self, message: str, *, cycle: list[str], hint: str | None = None) -> None:
        self.cycle = cycle
        super().__init__(message, hint=hint)


class SeamError(StitchError):
    """One or more seams disagree in dtype, rank, static dims or layout.

    Attributes:
        problems: one human-readable line per problem, every seam's problems together.
    """

    def __init__(self, message: str, *, problems: list[str], hint: str | None = None) -> None:
        self.problems = problems
        super().__init__(message, hint=hint)


class VersionError(StitchError):
    """A model's IR version or opset cannot be brought to the target, or is beyond onnxruntime."""


class InputError(StitchError):
    """Feeds given to a session do not match the model's inputs (name, dtype, rank, dims)."""


class DeviceError(StitchError):
    """A requested execution device/provider is not available."""


class DeployError(StitchError):
    """A model cannot be written as a deployment artefact (Triton repository, KServe manifest)."""


class PrecisionError(StitchError):
    """A quantized or fp16 model no longer agrees with the float32 model (or the native reference).

    Attributes:
        report: the gate's :class:`~onnxstitch.precision.PrecisionReport` (one table per output).
        attribution: ``{part: agreement}`` with each part converted alone (the lowest agreement over
            the outputs and comparisons), so the part that costs the accuracy can be kept in float32;
            empty when it was not measured.
    """

    def __init__(
        self,
        message: str,
        *,
        report: Any = None,
        attribution: dict[str, float] | None = None,
        hint: str | None = None,
    ) -> None:
        self.report = report
        self.attribution = dict(attribution or {})
        super().__init__(message, hint=hint)


class ServeError(StitchError):
    """The inference server could not be started or configured."""


class RunTimeoutError(StitchError):
    """A model run was cancelled: its ``timeout`` passed or ``Session.terminate()`` was called."""


class SandboxError(StitchError):
    """A model crashed, hung or ran out of memory while loaded in the sandbox subprocess."""


class DatasetError(StitchError):
    """A dataset cannot be scored (``ox.score``): a file that is not Parquet / .npy / .npz, a missing
    or mistyped column, a tensor of the wrong inner shape, or a row the model fails on.

    Attributes:
        file: the offending file (``None`` when the problem is not one file's).
        row_group: the Parquet row group (``None`` for a schema problem or a NumPy source).
        column: the column at fault (``None`` when it is not one column's).
        row: the row's id (its kept columns, or its row number in the file) for a row that fails.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row_group: int | None = None,
        column: str | None = None,
        row: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = file
        self.row_group = row_group
        self.column = column
        self.row = row
        super().__init__(message, hint=hint)

    def __reduce__(self) -> tuple[Any, ...]:
        # raised inside Ray actors: keep every attribute across pickling
        return (_rebuild_dataset_error, (str(self), self.file, self.row_group, self.column, self.row))


def _rebuild_dataset_error(
    message: str, file: str | None, row_group: int | None, column: str | None, row: str | None
) -> DatasetError:
    return DatasetError(message, file=file, row_group=row_group, column=column, row=row)
