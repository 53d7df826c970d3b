"""archive.unpack: real tar/zip files, hostile members refused before anything is written."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest
from _files_models import make_model

from onnxstitch import files
from onnxstitch.errors import ModelFileError, UnsafeModelError
from onnxstitch.files.archive import unpack


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def _listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.fixture
def bundle_files(tmp_path: Path) -> dict[str, bytes]:
    src = tmp_path / "src"
    src.mkdir()
    files.save(make_model(), src / "model.onnx", external_data=True)
    return {p.name: p.read_bytes() for p in src.iterdir()}


@pytest.mark.parametrize("mode", ["w", "w:gz"])
def test_tar_bundle_round_trip(tmp_path: Path, bundle_files: dict[str, bytes], mode: str) -> None:
    members = [(_info("bundle", tarfile.DIRTYPE), None)]
    members += [(_info(f"bundle/{name}"), data) for name, data in bundle_files.items()]
    archive = _tar(tmp_path / "b.tar", members, mode)
    written = unpack(archive, tmp_path / "out")
    assert sorted(p.name for p in written) == ["model.onnx", "model.onnx.data"]
    model = files.load(tmp_path / "out" / "bundle" / "model.onnx")
    assert model.SerializeToString() == make_model().SerializeToString()


def test_zip_bundle_round_trip(tmp_path: Path, bundle_files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(tmp_path / "b.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in bundle_files.items():
            zf.writestr(name, data)
    unpack(tmp_path / "b.zip", tmp_path / "out")
    assert _listing(tmp_path / "out") == ["model.onnx", "model.onnx.data"]
    assert files.load(tmp_path / "out" / "model.onnx").graph.node


def test_unpack_into_existing_empty_folder(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "b.tar", [(_info("a.txt"), b"x")])
    (tmp_path / "out").mkdir()
    unpack(archive, tmp_path / "out")
    assert (tmp_path / "out" / "a.txt").read_bytes() == b"x"


@pytest.mark.parametrize(
    ("member", "match"),
    [
        (_info("../evil.txt"), "climbs out"),
        (_info("ok/../../evil.txt"), "climbs out"),
        (_info("/etc/evil.txt"), "absolute path"),
        (_info("C:\\evil.txt"), "absolute path"),
        (_info("link", tarfile.SYMTYPE, "/etc/passwd"), "is a symlink"),
        (_info("hard", tarfile.LNKTYPE, "/etc/passwd"), "is a hardlink"),
        (_info("dev", tarfile.CHRTYPE), "device, fifo"),
        (_info("fifo", tarfile.FIFOTYPE), "device, fifo"),
    ],
)
def test_hostile_tar_members(tmp_path: Path, member: tarfile.TarInfo, match: str) -> None:
    data = b"evil" if member.type == tarfile.REGTYPE else None
    archive = _tar(tmp_path / "b.tar.gz", [(_info("fine.txt"), b"fine"), (member, data)])
    before = _listing(tmp_path)
    with pytest.raises(UnsafeModelError, match=match):
        unpack(archive, tmp_path / "out")
    assert _listing(tmp_path) == before  # nothing written, not even the harmless first member
    assert not (tmp_path.parent / "evil.txt").exists()


def test_zip_symlink_and_slip(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "l.zip", "w") as zf:
        zf.writestr(link, "/etc/passwd")
    with pytest.raises(UnsafeModelError, match="symlink"):
        unpack(tmp_path / "l.zip", tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "s.zip", "w") as zf:
        zf.writestr("../../slip.txt", "x")
    with pytest.raises(UnsafeModelError, match="climbs out"):
        unpack(tmp_path / "s.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bounds(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (4 << 20))  # 4 MiB of zeros: a few KiB compressed
    assert (tmp_path / "bomb.zip").stat().st_size < 64 << 10
    with pytest.raises(UnsafeModelError, match="more than max_bytes=1048576"):
        unpack(tmp_path / "bomb.zip", tmp_path / "out", max_bytes=1 << 20)
    many = _tar(tmp_path / "many.tar", [(_info(f"f{i}"), b"") for i in range(5)])
    with pytest.raises(UnsafeModelError, match="more than max_members=4"):
        unpack(many, tmp_path / "out", max_members=4)
    dup = _tar(tmp_path / "dup.tar", [(_info("a"), b"1"), (_info("./a"), b"2")])
    with pytest.raises(UnsafeModelError, match="appears twice"):
        unpack(dup, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_lying_zip_header_is_caught(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "lie.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("data.bin", b"A" * 100_000)
    blob = bytearray((tmp_path / "lie.zip").read_bytes())
    # shrink the declared size in the central directory to 10 bytes
    cd = blob.rfind(b"PK\x01\x02")
    blob[cd + 24 : cd + 28] = (10).to_bytes(4, "little")
    (tmp_path / "lie.zip").write_bytes(bytes(blob))
    with pytest.raises(ModelFileError):
        unpack(tmp_path / "lie.zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["lie.zip"]


def test_bad_inputs(tmp_path: Path) -> None:
    (tmp_path / "x.onnx").write_bytes(make_model().SerializeToString())
    with pytest.raises(ModelFileError, match=r"not a \.tar, \.tar\.gz or \.zip archive"):
        unpack(tmp_path / "x.onnx", tmp_path / "out")
    with pytest.raises(ModelFileError, match="does not exist"):
        unpack(tmp_path / "nope.zip", tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    archive = _tar(tmp_path / "b.tar", [(_info("keep.txt"), b"theirs")])
    with pytest.raises(ModelFileError, match="not an empty folder"):
        unpack(archive, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
