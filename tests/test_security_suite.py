"""Table-driven suite of hostile and broken model files (issue 7).

Every case builds real files in a fresh folder, then asserts: the typed error and its message;
that no file was written, changed or removed anywhere in the folder (snapshot of names, sizes and
contents); that no code ran (marker files that any executed payload would create); that nothing
from outside the model's folder was read into a tensor or an error message (a secret file next to
the model folder, sized like the weight it would replace).  The same bad files go through
``onnxstitch inspect`` too: exit 1, the same message, no traceback.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from onnxstitch import files
from onnxstitch.cli import _StitchGroup
from onnxstitch.cli import inspect as inspect_cli
from onnxstitch.errors import (
    IntegrityError,
    ModelFileError,
    ModelTooLargeError,
    StitchError,
    UnsafeModelError,
    VersionError,
)
from onnxstitch.files.archive import unpack

SECRET = b"TOP-SECRET-" + bytes(range(256)) * 3 + b"-" * 245  # 1024 bytes, the size of `w`
assert len(SECRET) == 1024


class _Payload:
    """Unpickling this runs code that creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def _model(*, opset: int = 18, ir_version: int = 10) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 16])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version)


@dataclass
class Env:
    """The folders of one case: ``model/`` (where the file is), ``outside/secret.bin``, the marker."""

    root: Path

    @property
    def folder(self) -> Path:
        return self.root / "model"

    @property
    def secret(self) -> Path:
        return self.root / "outside" / "secret.bin"

    @property
    def marker(self) -> Path:
        return self.root / "MARKER"

    def write(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path

    def external(
        self, location: str, *, data: str | None = "w.bin", offset: str = "0", length: str = "1024"
    ) -> Path:
        m = _model()
        w = m.graph.initializer[0]
        if data:
            (self.folder / data).write_bytes(w.raw_data)
        w.ClearField("raw_data")
        w.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", offset), ("length", length)):
            e = w.external_data.add()
            e.key, e.value = key, value
        return self.write("m.onnx", m.SerializeToString())


@dataclass
class Case:
    id: str
    build: Callable[[Env], Path]
    error: type[StitchError]
    match: str
    verify: bool = False
    action: str = "load"  # "load" or "unpack"


def _pickle(env: Env, protocol: int) -> Path:
    return env.write("model.onnx", pickle.dumps(_Payload(env.marker), protocol=protocol))


def _pt2(env: Env) -> Path:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(_Payload(env.marker)))
        zf.writestr("archive/version", "3")
    return env.write("model.onnx", buf.getvalue())


def _targz(env: Env) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("model.onnx")
        data = _model().SerializeToString()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return env.write("model.onnx", gzip.compress(buf.getvalue()))


def _truncated(env: Env) -> Path:
    data = _model().SerializeToString()
    return env.write("m.onnx", data[: len(data) * 2 // 3])


def _symlink_file(env: Env) -> Path:
    path = env.external("w.bin", data=None)
    (env.folder / "w.bin").symlink_to(env.secret)
    return path


def _symlink_parent(env: Env) -> Path:
    path = env.external("sub/secret.bin", data=None)
    (env.folder / "sub").symlink_to(env.secret.parent, target_is_directory=True)
    return path


def _hardlink(env: Env) -> Path:
    path = env.external("w.bin", data=None)
    os.link(env.secret, env.folder / "w.bin")
    return path


def _fifo(env: Env) -> Path:
    path = env.external("w.bin", data=None)
    os.mkfifo(env.folder / "w.bin")
    return path


def _saved(env: Env, *, manifest: bool = True, external: bool = False) -> Path:
    return files.save(_model(), env.folder / "m.onnx", manifest=manifest, external_data=external)


def _flip(path: Path, offset: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x01
    path.write_bytes(bytes(blob))


def _manifest_model(env: Env) -> Path:
    path = _saved(env)
    _flip(path, -10)
    return path


def _manifest_data(env: Env) -> Path:
    path = _saved(env, external=True)
    _flip(env.folder / "m.onnx.data", 500)
    return path


def _huge(env: Env) -> Path:
    path = env.write("big.onnx", _model().SerializeToString())
    with open(path, "r+b") as fh:
        fh.truncate(2**31 + 10)  # sparse
    return path


def _bad_utf8(env: Env) -> Path:
    return env.write("m.onnx", _model().SerializeToString().replace(b"MatMul", b"Mat\xffMu", 1))


def _invalid_graph(env: Env) -> Path:
    m = _model()
    m.graph.node[0].input[1] = "nowhere"
    return env.write("m.onnx", m.SerializeToString())


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> Callable[[Env], Path]:
    def build(env: Env) -> Path:
        path = env.folder / "bundle.tar"
        with tarfile.open(path, "w") as tar:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            data = b"overwrite" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
        return path

    return build


def _zip_bomb(env: Env) -> Path:
    path = env.folder / "bundle.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (2 << 20))
    return path


CASES = [
    Case("empty", lambda e: e.write("m.onnx", b""), ModelFileError, r"m\.onnx is empty \(0 bytes\)"),
    Case("pt2-zip-with-pickle", _pt2, ModelFileError, r"is a zip archive \(a \.keras, \.pt2"),
    Case("pickle-protocol-4", lambda e: _pickle(e, 4), ModelFileError, r"a Python pickle \(protocol 4\)"),
    Case("pickle-protocol-2", lambda e: _pickle(e, 2), ModelFileError, r"a Python pickle \(protocol 2\)"),
    Case("text", lambda e: e.write("m.onnx", b"just some notes\n"), ModelFileError, "is a text file"),
    Case("json", lambda e: e.write("m.onnx", b'{"weights": [1, 2]}'), ModelFileError, "JSON"),
    Case(
        "yaml-python-tag",
        lambda e: e.write("m.onnx", f"m: !!python/object/apply:os.system ['touch {e.marker}']\n".encode()),
        ModelFileError,
        "YAML",
    ),
    Case(
        "html", lambda e: e.write("m.onnx", b"<html><body>Sign in</body></html>"), ModelFileError, "HTML page"
    ),
    Case(
        "python-source",
        lambda e: e.write("m.onnx", f"import os\nopen({str(e.marker)!r}, 'w')\n".encode()),
        ModelFileError,
        "Python source code",
    ),
    Case("truncated-protobuf", _truncated, ModelFileError, "truncated or corrupt"),
    Case(
        "hdf5", lambda e: e.write("m.onnx", b"\x89HDF\r\n\x1a\n" + b"\0" * 100), ModelFileError, "HDF5 file"
    ),
    Case("tar-gz", _targz, ModelFileError, "gzip-compressed"),
    Case(
        "git-lfs",
        lambda e: e.write("m.onnx", b"version https://git-lfs.github.com/spec/v1\n"),
        ModelFileError,
        "LFS",
    ),
    Case(
        "no-graph",
        lambda e: e.write("m.onnx", onnx.ModelProto(ir_version=10).SerializeToString()),
        ModelFileError,
        "has no graph",
    ),
    Case("invalid-graph", _invalid_graph, ModelFileError, "not a valid ONNX model"),
    Case("bad-utf8", _bad_utf8, ModelFileError, "not valid UTF-8"),
    Case("past-2gb", _huge, ModelTooLargeError, "past protobuf's 2 GB limit"),
    Case(
        "ext-dotdot", lambda e: e.external("../outside/secret.bin", data=None), UnsafeModelError, "climbs out"
    ),
    Case("ext-absolute", lambda e: e.external(str(e.secret), data=None), UnsafeModelError, "absolute path"),
    Case("ext-symlink-file", _symlink_file, UnsafeModelError, "data file is a symlink"),
    Case("ext-symlink-parent", _symlink_parent, UnsafeModelError, "parent folder 'sub' is a symlink"),
    Case("ext-hardlink", _hardlink, UnsafeModelError, "is a hardlink"),
    Case("ext-fifo", _fifo, UnsafeModelError, "not a regular file"),
    Case("ext-bogus-offset", lambda e: e.external("w.bin", offset="0x10"), ModelFileError, "is not a number"),
    Case(
        "ext-negative-offset", lambda e: e.external("w.bin", offset="-64"), ModelFileError, "negative offset"
    ),
    Case(
        "ext-negative-length", lambda e: e.external("w.bin", length="-1"), ModelFileError, "negative length"
    ),
    Case(
        "ext-length-past-eof",
        lambda e: e.external("w.bin", length="999999"),
        ModelFileError,
        "past the file's end",
    ),
    Case("ext-missing-file", lambda e: e.external("w.bin", data=None), ModelFileError, "does not exist"),
    Case(
        "opset-99",
        lambda e: e.write("m.onnx", _model(opset=99).SerializeToString()),
        VersionError,
        "opset 99",
    ),
    Case(
        "ir-99",
        lambda e: e.write("m.onnx", _model(ir_version=99).SerializeToString()),
        VersionError,
        "IR version 99",
    ),
    Case("manifest-model-changed", _manifest_model, IntegrityError, r"m\.onnx changed since", verify=True),
    Case(
        "manifest-data-changed", _manifest_data, IntegrityError, r"m\.onnx\.data changed since", verify=True
    ),
    Case("manifest-missing", lambda e: _saved(e, manifest=False), IntegrityError, "no manifest", verify=True),
    Case(
        "bundle-dotdot", _tar_member("../outside/secret.bin"), UnsafeModelError, "climbs out", action="unpack"
    ),
    Case("bundle-absolute", _tar_member(str(Path("/tmp/x"))), UnsafeModelError, "absolute", action="unpack"),
    Case(
        "bundle-symlink",
        _tar_member("s", tarfile.SYMTYPE, "/etc"),
        UnsafeModelError,
        "symlink",
        action="unpack",
    ),
    Case(
        "bundle-hardlink",
        _tar_member("h", tarfile.LNKTYPE, "x"),
        UnsafeModelError,
        "hardlink",
        action="unpack",
    ),
    Case("bundle-device", _tar_member("d", tarfile.BLKTYPE), UnsafeModelError, "device", action="unpack"),
    Case("bundle-zip-bomb", _zip_bomb, UnsafeModelError, "max_bytes", action="unpack"),
]


def _snapshot(root: Path) -> dict[str, tuple[str, str]]:
    """Every entry under ``root``: kind and content digest (files), link target (links)."""
    seen: dict[str, tuple[str, str]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            seen[rel] = ("link", str(path.readlink()))
        elif path.is_dir():
            seen[rel] = ("dir", "")
        elif path.is_file():
            size = path.stat().st_size
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if size < 1 << 24 else f"size:{size}"
            seen[rel] = ("file", digest)
        else:
            seen[rel] = ("special", "")
    return seen


@pytest.fixture
def env(tmp_path: Path) -> Env:
    e = Env(tmp_path)
    e.folder.mkdir()
    e.secret.parent.mkdir()
    e.secret.write_bytes(SECRET)
    return e


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    application = typer.Typer(cls=_StitchGroup)

    @application.callback()
    def _root() -> None:
        """inspect only."""

    inspect_cli.register(application)
    return application


def test_the_suite_is_big_enough() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, env: Env, app: typer.Typer) -> None:
    target = case.build(env)
    before = _snapshot(env.root)
    with pytest.raises(case.error, match=case.match) as info:
        if case.action == "unpack":
            unpack(target, env.root / "unpacked", max_bytes=1 << 20)
        else:
            files.load(target, verify=case.verify)
    message = str(info.value)
    assert _snapshot(env.root) == before, "a file was written, changed or removed"
    assert not env.marker.exists(), "a payload ran"
    assert "TOP-SECRET" not in message
    if case.action == "load":
        args = ["inspect", str(target), "--json", *(["--verify"] if case.verify else [])]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1
        assert "Traceback" not in result.output and "TOP-SECRET" not in result.output
        assert message.splitlines()[0][:40] in " ".join(result.output.split())
        assert _snapshot(env.root) == before and not env.marker.exists()


def test_control_the_same_builders_load_when_benign(env: Env) -> None:
    """The harness can see success: a clean external-data model loads, with its own bytes."""
    target = env.external("w.bin")
    model = files.load(target)
    assert model.graph.initializer[0].raw_data == _model().graph.initializer[0].raw_data
    assert SECRET not in model.SerializeToString()


# cases whose check needs the whole model in Python (onnx.checker runs in load only): onnxruntime
# refuses the file itself and Session says so
_SESSION_MESSAGE = {"invalid-graph": "onnxruntime cannot load the model"}


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.action == "load" and not c.verify], ids=lambda c: c.id
)
def test_session_refuses_what_load_refuses(case: Case, env: Env) -> None:
    """``ox.Session(path)`` hands a path to onnxruntime after cheap checks only (issue 13, item 7): a
    bad file still gets the same typed error before onnxruntime reads anything outside the folder."""
    from onnxstitch.runtime import Session

    target = case.build(env)
    before = _snapshot(env.root)
    with pytest.raises(case.error, match=_SESSION_MESSAGE.get(case.id, case.match)) as info:
        Session(target, device="cpu")
    assert _snapshot(env.root) == before and not env.marker.exists()
    assert "TOP-SECRET" not in str(info.value)
