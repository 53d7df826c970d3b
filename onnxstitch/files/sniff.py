"""Say what a file *looks like* from its first bytes, before any parser touches it.

A model file that is not ONNX is usually something recognisable: a zip archive (``.keras``,
``.pt2``, a PyTorch ``.pt``), a pickle, an HDF5 ``.h5`` Keras file, a Git LFS pointer, an HTML
error page saved by a download tool, JSON, YAML or Python.  Naming it in the error saves the user
a debugging session; refusing it *before* parsing means a pickle is never unpickled and a zip is
never opened.
"""

from __future__ import annotations

__all__ = ["HEAD_BYTES", "ONNX_FIRST_BYTES", "describe_bytes", "describe_text", "looks_like_text"]

#: how many leading bytes the sniffers look at
HEAD_BYTES = 4096

# The tag bytes a serialized ModelProto can start with: fields 1-9 and 14 (metadata_props), 20,
# 25 with their wire types (onnx writes ir_version, tag 0x08, first).
ONNX_FIRST_BYTES = frozenset({0x08, 0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x4A, 0x72, 0xA2, 0xCA})

_CONVERT_KERAS = "convert a Keras model with onnxstitch.from_keras / `onnxstitch convert keras`"
_CONVERT_TORCH = "convert a PyTorch model with onnxstitch.from_torch / `onnxstitch convert torch`"

# (magic, offset, description) for formats recognised by a signature
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (
        b"PK\x03\x04",
        0,
        f"a zip archive (a .keras, .pt2, .pt or .zip file?), not an ONNX model; to use it, {_CONVERT_KERAS} "
        f"or {_CONVERT_TORCH}, or unpack a model bundle with onnxstitch.files.archive.unpack",
    ),
    (b"PK\x05\x06", 0, "an empty zip archive, not an ONNX model"),
    (
        b"\x89HDF\r\n\x1a\n",
        0,
        f"an HDF5 file (a Keras .h5 model?), not an ONNX model; {_CONVERT_KERAS}",
    ),
    (
        b"\x1f\x8b",
        0,
        "gzip-compressed (a .tar.gz bundle?), not an ONNX model; "
        "unpack it with onnxstitch.files.archive.unpack",
    ),
    (b"ustar", 257, "a tar archive, not an ONNX model; unpack it with onnxstitch.files.archive.unpack"),
    (b"\x93NUMPY", 0, "a NumPy .npy array, not an ONNX model"),
    (b"TFL3", 4, "a TensorFlow Lite flatbuffer, not an ONNX model; convert the TF model with from_keras"),
    (
        b"version https://git-lfs",
        0,
        "a Git LFS pointer, not the model itself; fetch the real file with `git lfs pull`",
    ),
)


def looks_like_text(head: bytes) -> bool:
    """Whether ``head`` decodes as UTF-8 text made of printable characters and whitespace."""
    if not head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # a multi-byte character cut at the end of the window is still text
        if exc.start < len(head) - 4:
            return False
        text = head[: exc.start].decode("utf-8")
    if not text:
        return False
    printable = sum(1 for ch in text if ch.isprintable() or ch in "\n\r\t\f")
    return printable / len(text) > 0.97


def describe_text(head: bytes) -> str:
    """Name the kind of text file ``head`` starts (JSON, HTML, YAML, Python, ONNX text...)."""
    text = head.decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    lower = text[:200].lower()
    if lower.startswith(("<!doctype html", "<html", "<head", "<body")) or "<html" in lower:
        return "an HTML page (a failed download or a login page?), not an ONNX model"
    if lower.startswith("<?xml"):
        return "an XML file, not an ONNX model"
    if lower.startswith("<") and ("ir_version" in lower or "opset_import" in lower):
        return (
            "an ONNX model in text form, not a binary ONNX model; "
            "parse it with onnx.parser.parse_model and save it with onnxstitch.save"
        )
    if text.startswith(("{", "[")):
        return "a JSON text file, not an ONNX model"
    first = text.splitlines()[0] if text else ""
    python_starts = ("import ", "from ", "def ", "class ", "#!", "# -*-", '"""', "'''")
    if first.startswith(python_starts):
        return "Python source code, not an ONNX model"
    if first.startswith("---") or ((": " in first or first.endswith(":")) and not first.startswith("<")):
        return "a YAML text file, not an ONNX model"
    return "a text file, not an ONNX model"


def describe_bytes(head: bytes) -> str | None:
    """Describe a file from its first bytes if it is recognisably *not* ONNX, else ``None``.

    Args:
        head: the first :data:`HEAD_BYTES` bytes of the file (may be shorter).

    Returns:
        A phrase such as ``"a zip archive (...), not an ONNX model; ..."``, or ``None`` when the
        bytes may be a serialized ONNX model.
    """
    if not head:
        return "empty (0 bytes), not an ONNX model; the download or export that wrote it failed"
    for magic, offset, description in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return description
    if len(head) >= 2 and head[0] == 0x80 and 1 <= head[1] <= 5:
        return (
            f"a Python pickle (protocol {head[1]}), not an ONNX model; it was not unpickled "
            "(unpickling runs code); export the model to ONNX where it was trained"
        )
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return "a safetensors weights file, not an ONNX model"
    if head[0] not in ONNX_FIRST_BYTES and looks_like_text(head):
        return describe_text(head)
    return None
