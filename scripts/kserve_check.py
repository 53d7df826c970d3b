#!/usr/bin/env python3
"""Check a manifest written by ``onnxstitch deploy kserve`` with the KServe Python SDK's own classes.

Run with a Python that has ``kserve`` installed (``make deploy-env`` puts it in ``.venv-deploy``)::

    .venv-deploy/bin/python scripts/kserve_check.py isvc.yaml

The YAML is deserialized into ``kserve.V1beta1InferenceService`` (client-side validation on: required
fields and enums are checked), and serialized back: every field we wrote must survive the round trip, so
every field is one the SDK knows. Prints a JSON summary; exit 0 when the manifest is accepted.
"""

from __future__ import annotations

import json
import sys

import kserve
import kubernetes.client
import yaml
from kserve.api_client import ApiClient


def _kept(ours: object, theirs: object) -> bool:
    """True when every field of ``ours`` survives in ``theirs`` (the SDK may add empty defaults)."""
    if isinstance(ours, dict):
        return isinstance(theirs, dict) and all(k in theirs and _kept(v, theirs[k]) for k, v in ours.items())
    return ours == theirs


def main(path: str) -> int:
    data = yaml.safe_load(open(path))  # noqa: SIM115 - a short script
    client = ApiClient()
    k8s = kubernetes.client.ApiClient()
    own = client._ApiClient__deserialize  # type: ignore[attr-defined]

    def deserialize(value: object, klass: object) -> object:
        # KServe's models refer to Kubernetes' own (V1ObjectMeta, V1ResourceRequirements, ...):
        # those are deserialized by the Kubernetes client, everything else by KServe's
        if (
            isinstance(klass, str)
            and hasattr(kubernetes.client.models, klass)
            and not hasattr(kserve.models, klass)
        ):
            return k8s._ApiClient__deserialize(value, klass)  # type: ignore[attr-defined]
        return own(value, klass)

    client._ApiClient__deserialize = deserialize  # type: ignore[attr-defined]
    isvc = client._ApiClient__deserialize(data, "V1beta1InferenceService")  # type: ignore[attr-defined]
    if not isinstance(isvc, kserve.V1beta1InferenceService):
        print(json.dumps({"ok": False, "error": f"got {type(isvc).__name__}"}))
        return 1
    back = client.sanitize_for_serialization(isvc)
    model = isvc.spec.predictor.model
    summary = {
        "ok": _kept(data, back),
        "kind": type(isvc).__name__,
        "model_format": model.model_format.name,
        "protocol_version": model.protocol_version,
        "runtime": model.runtime,
        "storage_uri": model.storage_uri,
        "min_replicas": isvc.spec.predictor.min_replicas,
        "max_replicas": isvc.spec.predictor.max_replicas,
        "every_field_kept": _kept(data, back),
    }
    print(json.dumps(summary))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
