"""``onnxstitch convert torch|keras|tensorflow``: a framework model to one validated ``.onnx`` file.

Examples::

    onnxstitch convert torch mypkg.models:build --example-input image=1x3x224x224:float32 -o head.onnx
    onnxstitch convert torch model.pt2 --trusted -o head.onnx
    onnxstitch convert keras backbone.keras -o backbone.onnx
    onnxstitch convert keras backbone.keras --input-signature image=Nx224x224x3:float32 -o backbone.onnx
    onnxstitch convert tensorflow saved_model_dir/ -o backbone.onnx
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Annotated, Any

import typer

from onnxstitch.cli._common import console, hints_as_flags, import_object, print_json, stage_progress
from onnxstitch.errors import ConversionError, StitchError

__all__ = ["parse_dynamic", "parse_layouts", "parse_tensor_spec", "register"]

_SPEC = re.compile(r"^(?:(?P<name>[^=]+)=)?(?P<shape>[^:=]*)(?::(?P<dtype>[A-Za-z0-9_]+))?$")
_DYNAMIC = re.compile(r"^(?P<name>[^:]+):(?P<axis>-?\d+)=(?P<symbol>.+)$")
_DYNAMIC_DIMS = ("N", "?", "-1", "None", "none", "batch")

Output = Annotated[
    Path, typer.Option("--output", "-o", dir_okay=False, help="Where to write the .onnx file.")
]
Opset = Annotated[int | None, typer.Option(help="ai.onnx opset of the result (default: the converter's).")]
Validate = Annotated[
    bool,
    typer.Option(
        "--validate/--no-validate", help="Compare the ONNX model with the native one (batch 1 and 7)."
    ),
]
Rtol = Annotated[float, typer.Option(min=0.0, help="Relative tolerance of the validation.")]
Atol = Annotated[float, typer.Option(min=0.0, help="Absolute tolerance of the validation.")]
Layout = Annotated[
    list[str] | None,
    typer.Option(
        "--layout",
        help="tensor=NCHW|NHWC (rank 4), NCL|NLC (rank 3) or NCDHW|NDHWC (rank 5), over the detected "
        "layout (repeatable).",
    ),
]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")]


def import_tensorflow_quietly() -> None:
    """Import TensorFlow now, keeping its start-up chatter off the terminal (CLI only).

    ``TF_CPP_MIN_LOG_LEVEL=2`` (unless the user set it) hides its C++ info/warning log lines; the
    oneDNN notice and absl's "All log messages before absl::InitializeLog()" are written to the
    stderr file descriptor while the library loads, before that level applies, so fd 2 points at
    /dev/null for the import itself (a failing import is left to the converter to report).
    """
    import importlib
    import importlib.util
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        importlib.import_module("tensorflow")
    except Exception:  # the converter imports it again and says what is wrong
        logging.getLogger(__name__).debug("importing tensorflow failed", exc_info=True)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextmanager
def _working(json_out: bool, source: Any) -> Iterator[None]:
    """Stage progress on stderr (each converter stage and the elapsed time); with ``--json`` no
    progress, and whatever the frameworks print goes to stderr. Errors come out in the command
    line's words (``--no-validate``, ``--rtol``, not ``validate=False``)."""
    with hints_as_flags():
        if json_out:
            with redirect_stdout(sys.stderr):
                yield
        else:
            with stage_progress(f"converting {source}"):
                yield


# ---------------------------------------------------------------------------------------- parsing
def parse_tensor_spec(text: str, *, option: str) -> tuple[str | None, list[int | None], str]:
    """Parse ``[name=]1x3x224x224[:float32]`` into ``(name, dims, dtype)``; ``N``/``?`` dims are None.

    Raises:
        StitchError: the text does not have that form.
    """
    match = _SPEC.match(text.strip())
    dims: list[int | None] = []
    ok = match is not None and bool(match.group("shape"))
    if match is not None and ok:
        for item in match.group("shape").split("x"):
            if item.isdigit():
                dims.append(int(item))
            elif item in _DYNAMIC_DIMS:
                dims.append(None)
            else:
                ok = False
    if not ok or match is None:
        raise StitchError(
            f"{option} {text!r} is not of the form [name=]DIMxDIM...[:dtype]",
            hint=f"e.g. {option} 1x3x224x224 or {option} image=1x3x224x224:float32 "
            "(N or ? for a dynamic dim where allowed)",
        )
    return match.group("name"), dims, match.group("dtype") or "float32"


def parse_dynamic(items: list[str]) -> dict[str, dict[int, str]]:
    """Parse ``name:axis=symbol`` items into ``{name: {axis: symbol}}``.

    Raises:
        StitchError: an item does not have that form.
    """
    spec: dict[str, dict[int, str]] = {}
    for item in items:
        match = _DYNAMIC.match(item.strip())
        if match is None:
            raise StitchError(
                f"--dynamic {item!r} is not of the form input:axis=symbol",
                hint="e.g. --dynamic tokens:0=batch --dynamic tokens:1=seq",
            )
        spec.setdefault(match.group("name"), {})[int(match.group("axis"))] = match.group("symbol")
    return spec


def parse_layouts(items: list[str] | None, *, form: str = "tensor") -> dict[str, str] | None:
    """Parse ``tensor=NCHW`` items into ``{tensor: layout}`` (``None`` when none given).

    Layouts: ``NCHW``/``NHWC`` (rank 4), ``NCL``/``NLC`` (rank 3), ``NCDHW``/``NDHWC`` (rank 5).
    ``form`` names the left-hand side in messages (``key:tensor`` for ``merge``).

    Raises:
        StitchError: an item does not have that form.
    """
    from onnxstitch import _meta

    if not items:
        return None
    layouts = {}
    for item in items:
        name, sep, layout = item.partition("=")
        if not sep or not name or layout not in _meta.LAYOUTS:
            raise StitchError(
                f"--layout {item!r} is not of the form {form}=NCHW|NHWC|NCL|NLC|NCDHW|NDHWC",
                hint=f"e.g. --layout {'a:feat' if ':' in form else 'x'}=NCHW",
            )
        layouts[name] = layout
    return layouts


def _example_tensors(items: list[str]) -> Any:
    """Seeded example tensors from ``--example-input`` items: a tuple, or a dict when named."""
    import torch

    generator = torch.Generator().manual_seed(0)
    named: dict[str, Any] = {}
    positional: list[Any] = []
    for item in items:
        name, dims, dtype_name = parse_tensor_spec(item, option="--example-input")
        dtype = getattr(torch, dtype_name, None)
        if not isinstance(dtype, torch.dtype) or None in dims:
            raise StitchError(
                f"--example-input {item!r}: needs static dims and a torch dtype (got {dtype_name!r})",
                hint="e.g. --example-input image=1x3x224x224:float32 (dims of a real example)",
            )
        shape = [int(d) for d in dims if d is not None]
        if dtype.is_floating_point:
            tensor = torch.randn(shape, generator=generator).to(dtype)
        else:
            tensor = torch.zeros(shape, dtype=dtype)
        if name is None:
            positional.append(tensor)
        else:
            named[name] = tensor
    if named and positional:
        raise StitchError("--example-input: name every input or none of them", hint="e.g. x=2x4:float32")
    return named if named else tuple(positional)


# --------------------------------------------------------------------------------------- summary
def _summary(model: Any, path: Path, *, validated: bool, rtol: float, atol: float) -> dict[str, Any]:
    import onnx

    from onnxstitch import _meta
    from onnxstitch.converters._common import batch_sizes_for, value_dims
    from onnxstitch.files.describe import describe

    def tensors(values: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": v.name,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name,
                "shape": value_dims(v),
            }
            for v in values
        ]

    inits = {i.name for i in model.graph.initializer}
    params = describe(model)["parameters"]  # the same count `onnxstitch inspect` shows
    return {
        "path": str(path),
        "source": _meta.get_source(model),
        "inputs": tensors([v for v in model.graph.input if v.name not in inits]),
        "outputs": tensors(model.graph.output),
        "parameters": params,  # elements of floating-point initializers (weights, not shape constants)
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "layouts": _meta.get_layouts(model),
        "validated": validated,
        "validation": {"batch_sizes": list(batch_sizes_for(model)), "rtol": rtol, "atol": atol}
        if validated
        else None,
    }


def _report(model: Any, path: Path, *, validated: bool, rtol: float, atol: float, json_out: bool) -> None:
    info = _summary(model, path, validated=validated, rtol=rtol, atol=atol)
    if json_out:
        print_json(info)
        return

    def line(t: dict[str, Any]) -> str:
        shape = ", ".join("?" if d is None else str(d) for d in t["shape"])
        layout = info["layouts"].get(t["name"])
        return f"  {t['name']}: {t['dtype']}[{shape}]" + (f" {layout}" if layout else "")

    console.print(f"wrote {info['path']} (from {info['source']}, opset {info['opset'].get('ai.onnx')})")
    console.print("inputs:\n" + "\n".join(line(t) for t in info["inputs"]), markup=False)
    console.print("outputs:\n" + "\n".join(line(t) for t in info["outputs"]), markup=False)
    console.print(f"parameters: {info['parameters']:,}")
    if validated:
        sizes = ", ".join(map(str, info["validation"]["batch_sizes"]))
        console.print(f"parity: ✓ matches the native model at batch {sizes} (rtol={rtol:g}, atol={atol:g})")
    else:
        console.print("parity: not checked (--no-validate)")


def _save(model: Any, output: Path) -> Path:
    from onnxstitch.files import save

    return save(model, output)


# -------------------------------------------------------------------------------------- commands
def torch_command(
    source: Annotated[
        str,
        typer.Argument(
            help="package.module:factory (a callable returning an nn.Module, or the module) or a .pt2."
        ),
    ],
    output: Output,
    example_input: Annotated[
        list[str] | None,
        typer.Option(
            "--example-input",
            "-e",
            help="[name=]1x3x224x224[:float32], one per forward argument (repeatable; names = forward's).",
        ),
    ] = None,
    input_name: Annotated[
        list[str] | None, typer.Option(help="Graph input names, in order (repeatable).")
    ] = None,
    output_name: Annotated[
        list[str] | None, typer.Option(help="Graph output names, in order (repeatable).")
    ] = None,
    dynamic: Annotated[
        list[str] | None,
        typer.Option(help="input:axis=symbol, replacing the default dynamic batch dim 0 (repeatable)."),
    ] = None,
    static: Annotated[
        bool, typer.Option("--static", help="Make every dim static (no dynamic batch).")
    ] = False,
    opset: Opset = None,
    validate: Validate = True,
    trusted: Annotated[
        bool, typer.Option("--trusted", help="Allow loading a .pt2 file (it can run pickled code).")
    ] = False,
    layout: Layout = None,
    rtol: Rtol = 1e-4,
    atol: Atol = 1e-5,
    json_out: JsonOut = False,
) -> None:
    """Convert a PyTorch module (from your code) or a trusted torch.export .pt2 file to ONNX."""
    from onnxstitch.converters import from_torch

    # torch warns about every optional torchvision op it cannot register: noise on a command line
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    if static and dynamic:
        raise StitchError("--static and --dynamic exclude each other", hint="use one of them")
    dynamic_dims = {} if static else (parse_dynamic(dynamic) if dynamic else None)
    layouts = parse_layouts(layout)
    if source.endswith(".pt2"):
        module: Any = Path(source)
    else:
        module = _module_from_factory(source)
    examples = _example_tensors(example_input) if example_input else None
    if examples is None and not isinstance(module, Path):
        raise StitchError(
            f"torch model {source!r}: --example-input (-e) is needed to export a module",
            hint="give the shape of one real input per forward argument, e.g. -e 1x3x224x224",
        )
    with _working(json_out, source), examples_hint_names_option():
        model = from_torch(
            module,
            examples,
            input_names=input_name or None,
            output_names=output_name or None,
            dynamic_dims=dynamic_dims,
            opset=opset,
            validate=validate,
            trusted=trusted,
            layouts=layouts,
            rtol=rtol,
            atol=atol,
        )
        path = _save(model, output)
    _report(model, path, validated=validate, rtol=rtol, atol=atol, json_out=json_out)


@contextmanager
def examples_hint_names_option(option: str = "-e", *, prefix: str = "") -> Iterator[None]:
    """Name ``option`` (where the user gave the examples) in from_torch's hint for examples the
    module fails on; ``prefix`` goes before the message.
    """
    from onnxstitch.converters._torch import EXAMPLES_HINT

    try:
        yield
    except ConversionError as exc:
        if not (exc.hint or "").startswith(EXAMPLES_HINT):
            raise
        message = prefix + str(exc).split("\n  fix: ", 1)[0]
        hint = (exc.hint or "").replace(EXAMPLES_HINT, f"{EXAMPLES_HINT} ({option})", 1)
        raise ConversionError(message, hint=hint) from exc


def _module_from_factory(spec: str) -> Any:
    import torch

    obj = import_object(spec, what="torch model")
    if isinstance(obj, torch.nn.Module):
        return obj
    if not callable(obj):
        raise StitchError(f"{spec!r} is neither an nn.Module nor a callable", hint="name a factory function")
    try:
        module = obj()
    except Exception as exc:
        raise StitchError(f"calling the factory {spec!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(module, torch.nn.Module):
        raise StitchError(
            f"the factory {spec!r} returned {type(module).__name__}, not a torch.nn.Module",
            hint="the factory must take no arguments and return the module to convert",
        )
    return module


def _signature(items: list[str] | None) -> Any:
    if not items:
        return None
    parsed = [parse_tensor_spec(item, option="--input-signature") for item in items]
    if all(name is not None for name, _, _ in parsed):
        return {name: (dims, dtype) for name, dims, dtype in parsed}
    if any(name is not None for name, _, _ in parsed):
        raise StitchError("--input-signature: name every input or none of them", hint="e.g. x=Nx4:float32")
    return [(dims, dtype) for _, dims, dtype in parsed]


def _convert_keras(
    source: Path,
    output: Path,
    *,
    signature: list[str] | None,
    opset: int | None,
    validate: bool,
    trusted: bool,
    layout: list[str] | None,
    rtol: float,
    atol: float,
    json_out: bool,
) -> None:
    from onnxstitch.converters import from_keras

    import_tensorflow_quietly()
    with _working(json_out, source):
        model = from_keras(
            source,
            input_signature=_signature(signature),
            opset=opset,
            validate=validate,
            trusted=trusted,
            layouts=parse_layouts(layout),
            rtol=rtol,
            atol=atol,
        )
        path = _save(model, output)
    _report(model, path, validated=validate, rtol=rtol, atol=atol, json_out=json_out)


InputSignature = Annotated[
    list[str] | None,
    typer.Option(
        "--input-signature",
        "-s",
        help="[name=]Nx224x224x3[:float32] per input (N or ? = dynamic), when the model does not say.",
    ),
]


def keras_command(
    source: Annotated[
        Path, typer.Argument(exists=True, help="A .keras / .h5 file (or a SavedModel directory).")
    ],
    output: Output,
    input_signature: InputSignature = None,
    opset: Opset = None,
    validate: Validate = True,
    trusted: Annotated[
        bool, typer.Option("--trusted", help="Load with Keras safe_mode off (runs stored Lambda code).")
    ] = False,
    layout: Layout = None,
    rtol: Rtol = 1e-4,
    atol: Atol = 1e-5,
    json_out: JsonOut = False,
) -> None:
    """Convert a Keras model file to ONNX (tf2onnx), checked against Keras."""
    _convert_keras(
        source,
        output,
        signature=input_signature,
        opset=opset,
        validate=validate,
        trusted=trusted,
        layout=layout,
        rtol=rtol,
        atol=atol,
        json_out=json_out,
    )


def tensorflow_command(
    source: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, help="A TensorFlow SavedModel directory.")
    ],
    output: Output,
    input_signature: InputSignature = None,
    opset: Opset = None,
    validate: Validate = True,
    layout: Layout = None,
    rtol: Rtol = 1e-4,
    atol: Atol = 1e-5,
    json_out: JsonOut = False,
    trusted: Annotated[
        bool,
        typer.Option(
            "--trusted",
            help="Load a SavedModel holding file or Python-callback ops (ReadFile, PyFunc, ...): "
            "only one you trust.",
        ),
    ] = False,
) -> None:
    """Convert a TensorFlow SavedModel (its serving_default signature) to ONNX, checked against TF."""
    _convert_keras(
        source,
        output,
        signature=input_signature,
        opset=opset,
        validate=validate,
        trusted=trusted,
        layout=layout,
        rtol=rtol,
        atol=atol,
        json_out=json_out,
    )


def register(app: typer.Typer) -> None:
    """Add the ``convert`` group to the main app."""
    group = typer.Typer(help="Convert a PyTorch, Keras or TensorFlow model to ONNX.", no_args_is_help=True)
    group.command("torch")(torch_command)
    group.command("keras")(keras_command)
    group.command("tensorflow")(tensorflow_command)
    app.add_typer(group, name="convert")
