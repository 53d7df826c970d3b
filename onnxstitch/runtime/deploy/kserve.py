"""Write a KServe ``InferenceService`` manifest that serves a Triton model repository at scale.

The manifest points KServe at the repository written by :func:`~onnxstitch.deploy_triton` (uploaded
to object storage or a PVC): ``modelFormat: onnx``, ``protocolVersion: v2`` and, by default, the
``kserve-tritonserver`` runtime, so the clients written against ``onnxstitch serve`` keep working
unchanged against the cluster.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from onnxstitch.errors import DeployError

__all__ = ["deploy_kserve", "kserve_manifest"]

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "http://", "hdfs://", "webhdfs://", "oci://")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def _check(
    *, name: str, storage_uri: str, min_replicas: int, max_replicas: int, cpu: str, memory: str, gpus: int
) -> list[str]:
    problems = []
    if not _DNS1035.match(name):
        problems.append(
            f"name {name!r} is not a valid Kubernetes resource name (lower-case letters, digits and '-', "
            "starting with a letter, at most 63 characters)"
        )
    if not storage_uri.startswith(_STORAGE_SCHEMES):
        problems.append(
            f"storage URI {storage_uri!r} has no scheme KServe's storage initializer reads "
            f"({', '.join(_STORAGE_SCHEMES)})"
        )
    if min_replicas < 0 or max_replicas < 1 or min_replicas > max_replicas:
        problems.append(
            f"replicas must satisfy 0 <= min ({min_replicas}) <= max ({max_replicas}) and max >= 1"
        )
    for label, value in (("cpu", cpu), ("memory", memory)):
        if not _QUANTITY.match(value):
            problems.append(f"{label} {value!r} is not a Kubernetes quantity (e.g. '2', '500m', '4Gi')")
    if gpus < 0:
        problems.append(f"gpus must be >= 0, got {gpus}")
    return problems


def kserve_manifest(
    storage_uri: str,
    *,
    name: str,
    namespace: str = "default",
    runtime: str | None = "kserve-tritonserver",
    min_replicas: int = 1,
    max_replicas: int = 1,
    cpu: str = "1",
    memory: str = "2Gi",
    gpus: int = 0,
) -> dict[str, Any]:
    """Build the ``InferenceService`` manifest as a dict (see :func:`deploy_kserve`).

    Raises:
        DeployError: listing every invalid option.
    """
    problems = _check(
        name=name,
        storage_uri=storage_uri,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu=cpu,
        memory=memory,
        gpus=gpus,
    )
    if problems:
        raise DeployError("cannot write the KServe manifest:\n  " + "\n  ".join(problems))
    limits: dict[str, str] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    model: dict[str, Any] = {
        "modelFormat": {"name": "onnx"},
        "protocolVersion": "v2",
        "storageUri": storage_uri,
        "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": limits},
    }
    if runtime:
        model["runtime"] = runtime
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"predictor": {"minReplicas": min_replicas, "maxReplicas": max_replicas, "model": model}},
    }


def deploy_kserve(
    storage_uri: str,
    output: str | os.PathLike[str] | None = None,
    *,
    name: str,
    namespace: str = "default",
    runtime: str | None = "kserve-tritonserver",
    min_replicas: int = 1,
    max_replicas: int = 1,
    cpu: str = "1",
    memory: str = "2Gi",
    gpus: int = 0,
    force: bool = False,
) -> str:
    """Write (or return) a KServe ``InferenceService`` manifest for a Triton model repository.

    Args:
        storage_uri: where the repository written by ``deploy_triton`` lives, e.g.
            ``s3://bucket/models`` or ``pvc://models-pvc/repository``.
        output: the YAML file to write; ``None`` only returns the text.
        name: the InferenceService name (a DNS-1035 label).
        namespace: the Kubernetes namespace.
        runtime: the ServingRuntime; ``kserve-tritonserver`` serves ONNX with the v2 protocol.
            ``None`` lets KServe pick a runtime for ``modelFormat: onnx``.
        min_replicas: the fewest replicas (0 allows scale to zero with Knative).
        max_replicas: the most replicas the autoscaler may start.
        cpu: CPU request and limit per replica (a Kubernetes quantity).
        memory: memory request and limit per replica.
        gpus: NVIDIA GPUs per replica.
        force: overwrite an existing ``output`` file.

    Returns:
        The manifest as YAML text.

    Raises:
        DeployError: an invalid option, or ``output`` exists and ``force`` is not set.
    """
    manifest = kserve_manifest(
        storage_uri,
        name=name,
        namespace=namespace,
        runtime=runtime,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu=cpu,
        memory=memory,
        gpus=gpus,
    )
    text: str = yaml.safe_dump(manifest, sort_keys=False)
    if output is not None:
        path = Path(output)
        if path.exists() and not force:
            raise DeployError(f"{path} already exists", hint="choose another file, or pass --force")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return text
