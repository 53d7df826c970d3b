"""Finding the model to serve: model files, Triton repositories, names, config parsing."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from onnxstitch.errors import ServeError
from onnxstitch.runtime.deploy import deploy_triton
from onnxstitch.runtime.serve import resolve_target
from onnxstitch.runtime.serve._source import _parse_minimal, check_model_name, parse_model_config

from ._models import ADD, model


@pytest.fixture(scope="module")
def add_model() -> onnx.ModelProto:
    return model(ADD)


def test_model_file(tmp_path: Path, add_model: onnx.ModelProto) -> None:
    path = tmp_path / "my model.onnx"
    onnx.save(add_model, path)
    served = resolve_target(path)
    assert (served.name, served.version, served.max_batch_size) == ("my_model", "1", None)
    assert served.path == path.resolve()
    assert resolve_target(path, name="other").name == "other"


def test_repository_and_model_folder(tmp_path: Path, add_model: onnx.ModelProto) -> None:
    repo = tmp_path / "repo"
    deploy_triton(add_model, repo, name="adder", max_batch_size=16)
    deploy_triton(add_model, repo, name="adder", version=3, max_batch_size=16)
    for target in (repo, repo / "adder"):
        served = resolve_target(target)
        assert (served.name, served.version, served.max_batch_size) == ("adder", "3", 16)
        assert served.path == (repo / "adder" / "3" / "model.onnx").resolve()


def test_repository_with_two_models_needs_a_name(tmp_path: Path, add_model: onnx.ModelProto) -> None:
    repo = tmp_path / "repo"
    deploy_triton(add_model, repo, name="a")
    deploy_triton(add_model, repo, name="b")
    with pytest.raises(ServeError, match=r"exactly one model.*a, b"):
        resolve_target(repo)
    assert resolve_target(repo, name="b").name == "b"


def test_unknown_name_lists_the_repository_models(tmp_path: Path, add_model: onnx.ModelProto) -> None:
    repo = tmp_path / "models"
    deploy_triton(add_model, repo, name="hybrid")
    with pytest.raises(ServeError, match=r"^no model 'nope' in repository 'models'; the models are: hybrid"):
        resolve_target(repo, name="nope")


def test_config_name_must_match_folder(tmp_path: Path, add_model: onnx.ModelProto) -> None:
    repo = tmp_path / "repo"
    deploy_triton(add_model, repo, name="adder")
    (repo / "renamed").mkdir()
    (repo / "adder").rename(repo / "renamed" / "x")
    with pytest.raises(ServeError, match="names the model 'adder' but its folder is 'x'"):
        resolve_target(repo / "renamed" / "x")


def test_model_file_linked_from_outside_is_refused(tmp_path: Path, add_model: onnx.ModelProto) -> None:
    outside = tmp_path / "outside.onnx"
    onnx.save(add_model, outside)
    repo = tmp_path / "repo"
    deploy_triton(add_model, repo, name="adder")
    target = repo / "adder" / "1" / "model.onnx"
    target.unlink()
    target.symlink_to(outside)
    with pytest.raises(ServeError, match="resolves outside the repository") as info:
        resolve_target(repo)
    assert str(tmp_path) not in str(info.value)


def test_missing_target_and_empty_repository(tmp_path: Path) -> None:
    with pytest.raises(ServeError, match="neither a model file nor a repository"):
        resolve_target(tmp_path / "nope.onnx")
    with pytest.raises(ServeError, match="found: none"):
        resolve_target(tmp_path)


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "-x", "x" * 65, "a b", "é"])
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(ServeError, match="is not allowed"):
        check_model_name(name)


@pytest.mark.parametrize("name", ["adder", "resnet-50", "m_1.v2", "A"])
def test_safe_names_pass(name: str) -> None:
    assert check_model_name(name) == name


CONFIG = """
name: "adder"  # the model
backend: "onnxruntime"
max_batch_size: 16
input [
  {
    name: "x"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
instance_group [ { kind: KIND_CPU, count: 1 } ]
dynamic_batching { max_queue_delay_microseconds: 100 }
"""


def test_config_parsers_agree() -> None:
    full = parse_model_config(CONFIG)
    assert full == {
        "name": "adder",
        "max_batch_size": 16,
        "default_model_filename": "",
        "max_queue_delay_microseconds": 100,
        "version_policy": ("latest", [1]),
    }
    assert _parse_minimal(CONFIG) == full
    for text, delay in (("dynamic_batching {\n}\n", 0), ("# dynamic_batching { }\n", None)):
        assert parse_model_config(text)["max_queue_delay_microseconds"] == delay
        assert _parse_minimal(text)["max_queue_delay_microseconds"] == delay


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ServeError, match="not a valid Triton ModelConfig"):
        parse_model_config('name: "a"\nmax_batch_size: "lots"\n')
    with pytest.raises(ServeError, match="unbalanced"):
        _parse_minimal("input [ } }\n")


@pytest.mark.parametrize(
    ("policy", "want"),
    [
        ("", ("latest", [1])),
        ("version_policy: { latest: { num_versions: 2 } }", ("latest", [2])),
        ("version_policy: { all: {} }", ("all", [])),
        ("version_policy { all { } }", ("all", [])),
        (
            "version_policy: { specific: { versions: [ 1, 3 ] } }\n# version 1: the model",
            ("specific", [1, 3]),
        ),
        ("version_policy {\n  specific {\n    versions: 2\n    versions: 4\n  }\n}", ("specific", [2, 4])),
    ],
)
def test_config_parsers_agree_on_the_version_policy(policy: str, want: tuple[str, list[int]]) -> None:
    text = f'name: "adder"\n{policy}\nmax_batch_size: 4\n'
    assert parse_model_config(text)["version_policy"] == want
    assert _parse_minimal(text)["version_policy"] == want


def _set_policy(model_dir: Path, policy: str) -> None:
    config = model_dir / "config.pbtxt"
    text = config.read_text(encoding="utf-8")
    kept = [line for line in text.splitlines() if not line.startswith(("version_policy", "# version"))]
    config.write_text("\n".join([kept[0], policy, *kept[1:]]) + "\n", encoding="utf-8")


@pytest.fixture
def three_versions(tmp_path: Path, add_model: onnx.ModelProto) -> Path:
    repo = tmp_path / "repo"
    for version in (1, 2, 5):
        deploy_triton(add_model, repo, name="adder", version=version)
    return repo


@pytest.mark.parametrize(
    ("policy", "want"),
    [
        ("", ["5"]),
        ("version_policy: { latest: { num_versions: 2 } }", ["2", "5"]),
        ("version_policy: { latest: { num_versions: 9 } }", ["1", "2", "5"]),
        ("version_policy: { all: {} }", ["1", "2", "5"]),
        ("version_policy: { specific: { versions: [ 2, 1 ] } }", ["1", "2"]),
    ],
)
def test_the_version_policy_picks_the_served_versions(
    three_versions: Path, policy: str, want: list[str]
) -> None:
    _set_policy(three_versions / "adder", policy)
    served = resolve_target(three_versions)
    assert [version for version, _ in served.served_versions()] == want
    assert [path for _, path in served.served_versions()] == [
        (three_versions / "adder" / v / "model.onnx").resolve() for v in want
    ]
    assert (served.version, served.path) == served.served_versions()[-1]  # unversioned: the newest


def test_a_listed_version_without_its_folder_is_refused(three_versions: Path) -> None:
    _set_policy(three_versions / "adder", "version_policy: { specific: { versions: [ 1, 3, 4 ] } }")
    with pytest.raises(ServeError, match=r"model 'adder': version_policy lists versions 3, 4 but") as info:
        resolve_target(three_versions)
    assert "it has: 1, 2, 5" in str(info.value) and "adder/3/" in str(info.value.hint)


def test_a_version_policy_serving_nothing_is_refused(three_versions: Path) -> None:
    _set_policy(three_versions / "adder", "version_policy: { latest: { num_versions: 0 } }")
    with pytest.raises(ServeError, match="num_versions of 1 or more, got 0"):
        resolve_target(three_versions)
    _set_policy(three_versions / "adder", "version_policy: { specific: { } }")
    with pytest.raises(ServeError, match="lists no version"):
        resolve_target(three_versions)


def test_a_bare_model_file_serves_one_version(tmp_path: Path, add_model: onnx.ModelProto) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(add_model, path)
    assert resolve_target(path).served_versions() == (("1", path.resolve()),)
