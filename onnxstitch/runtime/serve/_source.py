"""What ``onnxstitch serve`` serves: a ``model.onnx`` file or a Triton model repository.

A repository is the folder :func:`~onnxstitch.runtime.deploy.deploy_triton` writes
(``DIR/NAME/config.pbtxt`` + ``DIR/NAME/<version>/model.onnx``); the model folder ``DIR/NAME``
itself is accepted too. The config gives the model's name, ``max_batch_size``, file name and
``version_policy``; the versions that policy selects are served, as Triton serves them: ``latest {
num_versions: N }`` (the default, N=1) the N newest numeric version folders, ``all {}`` every one,
``specific { versions: [...] }`` exactly those.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from onnxstitch.errors import ServeError

__all__ = [
    "NAME_PATTERN",
    "ServedModel",
    "check_model_name",
    "model_config_json",
    "parse_model_config",
    "resolve_target",
    "select_versions",
]

logger = logging.getLogger(__name__)

#: model names allowed in URLs and on disk: letters, digits, ``_``, ``-``, ``.``; starts alphanumeric.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_CONFIG = "config.pbtxt"
_DEFAULT_FILE = "model.onnx"


@dataclass(frozen=True)
class ServedModel:
    """The one model a server serves.

    Attributes:
        name: the model name clients use in ``/v2/models/<name>``.
        path: the ``.onnx`` file.
        version: the version string reported in metadata (the repository's version folder, or "1").
        max_batch_size: the repository config's ``max_batch_size`` (0: no batching), or ``None``
            for a bare model file.
        max_batch_time: seconds the repository's dynamic batcher lets a request wait for others
            (``max_queue_delay_microseconds``), or ``None`` for a bare file or a config with no
            ``dynamic_batching`` block.
        versions: every served ``(version, file)``, oldest first, the repository config's
            ``version_policy`` selects; ``path`` and ``version`` are the newest of them (where an
            unversioned request goes). Empty: only ``version`` at ``path``.
    """

    name: str
    path: Path
    version: str
    max_batch_size: int | None
    max_batch_time: float | None = None
    versions: tuple[tuple[str, Path], ...] = ()

    def served_versions(self) -> tuple[tuple[str, Path], ...]:
        """Every served ``(version, file)``, oldest first (at least ``(version, path)``)."""
        return self.versions or ((self.version, self.path),)


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a safe model name.

    Raises:
        ServeError: the name has characters outside ``[A-Za-z0-9_.-]``, does not start with a
            letter or digit, or is longer than 64 characters.
    """
    if not NAME_PATTERN.fullmatch(name):
        raise ServeError(
            f"model name {name!r} is not allowed",
            hint="use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit",
        )
    return name


def parse_model_config(text: str) -> dict[str, object]:
    """Read ``name``, ``max_batch_size``, ``default_model_filename``, the dynamic batcher's
    ``max_queue_delay_microseconds`` (``None`` without a ``dynamic_batching`` block) and the
    ``version_policy`` (``("latest", [N])``, ``("all", [])`` or ``("specific", [v, ...])``; Triton's
    default ``("latest", [1])`` without one) from a ``config.pbtxt``.

    Uses Triton's own ``ModelConfig`` schema (shipped with ``tritonclient``) when it is installed;
    otherwise a minimal reader of those three top-level fields.

    Raises:
        ServeError: the text does not parse as a ``ModelConfig``.
    """
    model_config_pb2 = _model_config_module()
    if model_config_pb2 is None:
        return _parse_minimal(text)
    from google.protobuf import text_format

    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ServeError(
            f"{_CONFIG} is not a valid Triton ModelConfig: {exc}",
            hint="write the repository with `onnxstitch deploy triton`",
        ) from exc
    return {
        "name": config.name,
        "max_batch_size": int(config.max_batch_size),
        "default_model_filename": config.default_model_filename,
        "max_queue_delay_microseconds": (
            int(config.dynamic_batching.max_queue_delay_microseconds)
            if config.HasField("dynamic_batching")
            else None
        ),
        "version_policy": _policy_from_proto(config),
    }


def _policy_from_proto(config: Any) -> tuple[str, list[int]]:
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice") if config.HasField("version_policy") else None
    if which == "all":
        return "all", []
    if which == "specific":
        return "specific", [int(v) for v in policy.specific.versions]
    if which == "latest":
        return "latest", [int(policy.latest.num_versions)]
    return "latest", [1]


def _model_config_module() -> Any:
    """``tritonclient/grpc/model_config_pb2.py`` loaded on its own, or ``None`` without tritonclient.

    Importing ``tritonclient.grpc`` would also register Triton's ``inference.*`` service messages,
    which collide with MLServer's copy of the same protocol in protobuf's descriptor pool
    ("duplicate symbol 'inference.ServerLiveRequest'"); the config schema alone does not.
    """
    global _MODEL_CONFIG
    if _MODEL_CONFIG is not False:
        return _MODEL_CONFIG
    _MODEL_CONFIG = None
    try:
        found = importlib.util.find_spec("tritonclient")
    except (ImportError, ValueError):
        found = None
    if found is not None and found.submodule_search_locations:
        path = Path(next(iter(found.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
        spec = importlib.util.spec_from_file_location("_onnxstitch_triton_model_config_pb2", path)
        if path.is_file() and spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except (ImportError, TypeError) as exc:  # protobuf too old/new for the generated code
                logger.debug("Triton's ModelConfig schema unavailable (%s); using the minimal reader", exc)
            else:
                _MODEL_CONFIG = module
    return _MODEL_CONFIG


_MODEL_CONFIG: Any = False

_FIELD = re.compile(r'^\s*(name|max_batch_size|default_model_filename)\s*:\s*("(?:[^"\\]|\\.)*"|-?\d+)\s*$')


def _parse_minimal(text: str) -> dict[str, object]:
    """The three top-level fields we need, read line by line (nested blocks are skipped)."""
    found: dict[str, object] = {"name": "", "max_batch_size": 0, "default_model_filename": ""}
    found["max_queue_delay_microseconds"] = _queue_delay(text)
    found["version_policy"] = _version_policy(text)
    depth = 0
    for line in text.splitlines():
        code = line.split("#", 1)[0]
        if depth == 0:
            match = _FIELD.match(code)
            if match:
                key, raw = match.groups()
                found[key] = int(raw) if key == "max_batch_size" else raw.strip('"')
        depth += code.count("{") + code.count("[") - code.count("}") - code.count("]")
        if depth < 0:
            raise ServeError(
                f"{_CONFIG} has unbalanced brackets", hint="write it with `onnxstitch deploy triton`"
            )
    if not isinstance(found["max_batch_size"], int) or int(found["max_batch_size"]) < 0:
        raise ServeError(f"{_CONFIG}: max_batch_size must be a non-negative integer")
    return found


_BATCHER = re.compile(r"^\s*dynamic_batching\s*\{([^{}]*)", re.MULTILINE)
_DELAY = re.compile(r"\bmax_queue_delay_microseconds\s*:\s*(\d+)")


def _queue_delay(text: str) -> int | None:
    """The top-level ``dynamic_batching`` block's queue delay (0 when unset), ``None`` without one."""
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    match = _BATCHER.search(code)
    if match is None:
        return None
    delay = _DELAY.search(match.group(1))
    return int(delay.group(1)) if delay else 0


_POLICY = re.compile(
    r"^\s*version_policy\s*:?\s*\{\s*(latest|all|specific)\s*:?\s*\{([^{}]*)\}\s*\}", re.MULTILINE
)
_NUMBER = re.compile(r"-?\d+")


def _version_policy(text: str) -> tuple[str, list[int]]:
    """The top-level ``version_policy`` (Triton's default ``latest: 1`` without one)."""
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    match = _POLICY.search(code)
    if match is None:
        if re.search(r"^\s*version_policy\b", code, re.MULTILINE):
            raise ServeError(
                f"{_CONFIG}: cannot read its version_policy",
                hint="write one of `latest: { num_versions: 2 }`, `all: {}` or "
                "`specific: { versions: [1, 2] }`",
            )
        return "latest", [1]
    kind, body = match.groups()
    if kind == "all":
        return "all", []
    if kind == "latest":
        count = re.search(r"\bnum_versions\s*:\s*(-?\d+)", body)
        return "latest", [int(count.group(1)) if count else 0]
    listed = re.findall(r"\bversions\s*:\s*(\[[^\]]*\]|-?\d+)", body)
    return "specific", [int(n) for item in listed for n in _NUMBER.findall(item)]


def select_versions(model: str, policy: tuple[str, list[int]], available: list[int]) -> list[int]:
    """The versions Triton serves under ``policy`` among ``available`` ones, oldest first.

    Args:
        model: the model's name, for errors.
        policy: ``("latest", [N])``, ``("all", [])`` or ``("specific", [v, ...])`` as
            :func:`parse_model_config` reads it.
        available: the numeric version folders that hold the model file.

    Raises:
        ServeError: ``latest`` asks for fewer than one version, ``specific`` lists none, or a
            version it lists has no folder with the model file.
    """
    kind, numbers = policy
    have = sorted(set(available))
    if kind == "all":
        return have
    if kind == "latest":
        count = numbers[0] if numbers else 1
        if count < 1:
            raise ServeError(
                f"model {model!r}: version_policy latest needs num_versions of 1 or more, got {count}",
                hint="write `version_policy: { latest: { num_versions: 1 } }` or leave it out",
            )
        return have[-count:]
    wanted = sorted(set(numbers))
    if not wanted:
        raise ServeError(
            f"model {model!r}: version_policy specific lists no version",
            hint="list the versions to serve, e.g. `specific: { versions: [1, 2] }`",
        )
    missing = [v for v in wanted if v not in have]
    if missing:
        listed = ("versions " if len(missing) > 1 else "version ") + ", ".join(map(str, missing))
        raise ServeError(
            f"model {model!r}: version_policy lists {listed} but the repository has no "
            f"such version folder with the model file (it has: {', '.join(map(str, have)) or 'none'})",
            hint=f"write {model}/{missing[0]}/ (e.g. with `onnxstitch deploy triton --version "
            f"{missing[0]}`) or drop it from version_policy in {_CONFIG}",
        )
    return wanted


def _contained(path: Path, root: Path, *, what: str) -> Path:
    """``path`` resolved, refusing a file whose real location is outside ``root``."""
    real = path.resolve()
    if not real.is_relative_to(root.resolve()):
        raise ServeError(
            f"{what} {path.name!r} resolves outside the repository",
            hint="copy the model into the repository instead of linking to it",
        )
    return real


def _pick_model_dir(repository: Path, name: str | None) -> Path:
    if (repository / _CONFIG).is_file():
        return repository
    candidates = sorted(p for p in repository.iterdir() if p.is_dir() and (p / _CONFIG).is_file())
    if name is not None:
        chosen = [p for p in candidates if p.name == name]
        if not chosen:
            names = ", ".join(p.name for p in candidates) or "none"
            raise ServeError(
                f"no model {name!r} in repository {repository.name!r}; the models are: {names}",
                hint="pass one of those names with --name",
            )
        candidates = chosen
    if len(candidates) != 1:
        names = ", ".join(p.name for p in candidates) or "none"
        raise ServeError(
            f"the repository {repository.name!r} must hold exactly one model with a {_CONFIG}; "
            f"found: {names}",
            hint="pass --name to choose one, or the model folder itself",
        )
    return candidates[0]


def _resolve_repository(repository: Path, name: str | None) -> ServedModel:
    model_dir = _pick_model_dir(repository, name)
    config = parse_model_config((model_dir / _CONFIG).read_text(encoding="utf-8"))
    config_name = str(config["name"] or model_dir.name)
    if config_name != model_dir.name:
        raise ServeError(
            f"{_CONFIG} names the model {config_name!r} but its folder is {model_dir.name!r}",
            hint="Triton requires them to agree; rename one of them",
        )
    filename = str(config["default_model_filename"] or _DEFAULT_FILE)
    folders = {
        int(p.name): p
        for p in sorted(model_dir.iterdir())
        if p.is_dir() and p.name.isdigit() and (p / filename).is_file()
    }
    available = list(folders)
    policy = cast(tuple[str, list[int]], config["version_policy"])
    if not available and policy[0] != "specific":
        raise ServeError(
            f"model {model_dir.name!r} has no version folder with {filename!r}",
            hint=f"expected {model_dir.name}/1/{filename}",
        )
    chosen = select_versions(model_dir.name, policy, available)
    versions = tuple(
        (str(v), _contained(folders[v] / filename, model_dir, what="model file")) for v in chosen
    )
    delay = config["max_queue_delay_microseconds"]
    return ServedModel(
        name=check_model_name(name or config_name),
        path=versions[-1][1],
        version=versions[-1][0],
        max_batch_size=int(str(config["max_batch_size"])),
        max_batch_time=None if delay is None else int(str(delay)) / 1e6,
        versions=versions,
    )


def resolve_target(target: str | os.PathLike[str], *, name: str | None = None) -> ServedModel:
    """Find the model to serve in ``target``: an ``.onnx`` file or a Triton repository folder.

    Args:
        target: the model file, a repository folder, or one model's folder in a repository.
        name: the model name to serve under (default: the file's stem, or the repository's model;
            in a repository with several models, the one to serve).

    Returns:
        The model's name, file, version and the repository's ``max_batch_size``.

    Raises:
        ServeError: the target does not exist, holds no (or several) models, its config is
            invalid, or the name is not allowed.
    """
    path = Path(target)
    if path.is_dir():
        return _resolve_repository(path, name)
    if not path.is_file():
        raise ServeError(
            f"{path.name!r} is neither a model file nor a repository folder",
            hint="pass a .onnx file or a folder written by `onnxstitch deploy triton`",
        )
    default = re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem).lstrip("_.-") or "model"
    return ServedModel(
        name=check_model_name(name or default), path=path.resolve(), version="1", max_batch_size=None
    )


def model_config_json(
    served: ServedModel, model: Any, *, max_batch_size: int, max_batch_time: float, device: str
) -> dict[str, Any] | None:
    """Triton's JSON form of the model's ``ModelConfig`` (what ``GET /v2/models/NAME/config`` answers).

    A repository's ``config.pbtxt`` as it is; for a bare file, the config
    :func:`~onnxstitch.runtime.deploy.triton.triton_config` would write for it with the batching and
    device served. ``None`` without Triton's schema (``tritonclient`` not installed) or when the
    model has no Triton config (a signature Triton cannot serve).
    """
    schema = _model_config_module()
    if schema is None:
        return None
    if served.max_batch_size is not None:  # from a repository: its config file
        text = (served.path.parent.parent / _CONFIG).read_text(encoding="utf-8")
    else:
        from onnxstitch.errors import DeployError
        from onnxstitch.runtime.deploy.triton import triton_config

        gpu = device.lower().startswith(("cuda", "tensorrt"))
        try:
            text, _ = triton_config(
                model,
                name=served.name,
                max_batch_size=max_batch_size,
                device="gpu" if gpu else "cpu",
                accelerator="tensorrt" if device.lower().startswith("tensorrt") else None,
                max_queue_delay_us=max(1, round(max_batch_time * 1e6)),
            )
        except DeployError as exc:
            logger.info("no Triton model config for %r: %s", served.name, exc)
            return None
    from google.protobuf import json_format, text_format

    config = schema.ModelConfig()
    text_format.Parse(text, config)
    if served.max_batch_size is not None and config.name != served.name:
        config.name = served.name
    result: dict[str, Any] = json_format.MessageToDict(config, preserving_proto_field_name=True)
    return result
