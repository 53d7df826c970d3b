"""``onnxstitch deploy triton|kserve``: write deployment artefacts for inference servers."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from onnxstitch.cli._common import console, print_json


class _Device(StrEnum):
    cpu = "cpu"
    gpu = "gpu"


class _Accelerator(StrEnum):
    cuda = "cuda"
    tensorrt = "tensorrt"


class _VariantsAs(StrEnum):
    versions = "versions"
    models = "models"


def _variants(values: list[str] | None) -> list[str]:
    seen: set[str] = set()
    for value in values or []:
        key, sep, path = value.partition("=")
        if not sep or not key or not path:
            raise typer.BadParameter(f"{value!r} is not NAME=MODEL.onnx (e.g. int8=m.int8.onnx)")
        if key in seen:
            raise typer.BadParameter(f"variant {key!r} is given twice")
        if not Path(path).is_file():
            raise typer.BadParameter(f"variant {key!r}: {path!r} is not a file")
        seen.add(key)
    return values or []


def _version(value: str) -> str:
    if value != "next" and not (value.isdigit() and int(value) >= 1):
        raise typer.BadParameter(f"{value!r} is neither a positive integer nor 'next'")
    return value


def triton(
    model: Annotated[Path, typer.Argument(help="the .onnx model to deploy", exists=True, dir_okay=False)],
    repository: Annotated[Path, typer.Option("--repository", "-r", help="the model repository root")],
    name: Annotated[str, typer.Option(help="the model name: [A-Za-z0-9_.-]")],
    version: Annotated[
        str,
        typer.Option(
            help="the version folder: a positive integer, or 'next' (one past the newest; prints the "
            "diff against it)",
            callback=_version,
        ),
    ] = "1",
    max_batch_size: Annotated[
        int | None, typer.Option(min=0, help="largest batch Triton forms (default 64 if batchable, 0 off)")
    ] = None,
    instances: Annotated[int, typer.Option(min=1, help="model instances per device")] = 1,
    device: Annotated[_Device, typer.Option(help="where Triton runs the model")] = _Device.cpu,
    accelerator: Annotated[
        _Accelerator | None, typer.Option(help="GPU execution accelerator (needs --device gpu)")
    ] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=MODEL.onnx: a variant with the same inputs and outputs (e.g. int8=m.int8.onnx); "
            "repeat for more",
            callback=_variants,
        ),
    ] = None,
    variants_as: Annotated[
        _VariantsAs,
        typer.Option(
            help="versions: the variants are the next versions of NAME (the config serves them all); "
            "models: each is a model NAME_VARIANT of its own"
        ),
    ] = _VariantsAs.versions,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the files and config, write nothing")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="replace an existing version")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
) -> None:
    """Write MODEL (and its variants) as a Triton Inference Server model repository entry."""
    from onnxstitch.runtime.deploy.triton import deploy_triton

    variants = {key: Path(path) for key, _, path in (v.partition("=") for v in variant or [])}

    result = deploy_triton(
        model,
        repository,
        name=name,
        version="next" if version == "next" else int(version),
        max_batch_size=max_batch_size,
        instances=instances,
        device=device.value,
        accelerator=accelerator.value if accelerator else None,
        variants=variants or None,
        variants_as=variants_as.value,
        dry_run=dry_run,
        force=force,
    )
    changes = None
    if result.previous is not None:
        from onnxstitch.files.diff import diff

        changes = diff(result.previous, model)
    if json_output:
        print_json(
            {
                "repository": str(result.repository),
                "name": result.name,
                "version": result.version,
                "max_batch_size": result.max_batch_size,
                "files": [str(p) for p in result.files],
                "dry_run": result.dry_run,
                "config": result.config_text,
                "previous": str(result.previous) if result.previous else None,
                "diff": changes.to_dict() if changes else None,
                "variants": {
                    key: {"name": v.name, "version": v.version, "files": [str(p) for p in v.files]}
                    for key, v in result.variants.items()
                },
            }
        )
        return
    verb = "would write" if dry_run else "wrote"
    console.print(f"[bold]{verb}[/] Triton model {result.name!r} version {result.version}:")
    for path in result.files:
        console.print(f"  {path}")
    for key, written in result.variants.items():
        console.print(
            f"[bold]{verb}[/] variant {key!r} as Triton model {written.name!r} version {written.version}:"
        )
        for path in written.files:
            console.print(f"  {path}")
    if result.batching_off:
        console.print(f"dynamic batching off: {result.batching_off}", markup=False)
    console.print(f"\n[bold]config.pbtxt[/]\n{result.config_text}", markup=True)
    if changes is not None and result.previous is not None:
        console.print(f"[bold]changes against version {result.previous.parent.name}[/]")
        for line in changes.lines():
            console.print(f"  {line}", markup=False)


def kserve(
    storage_uri: Annotated[
        str, typer.Argument(help="where the Triton repository lives, e.g. s3://bucket/models")
    ],
    name: Annotated[str, typer.Option(help="the InferenceService name (DNS-1035)")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="YAML file (default: stdout)")] = None,
    namespace: Annotated[str, typer.Option(help="the Kubernetes namespace")] = "default",
    runtime: Annotated[
        str, typer.Option(help="ServingRuntime ('' lets KServe choose)")
    ] = "kserve-tritonserver",
    min_replicas: Annotated[int, typer.Option(min=0)] = 1,
    max_replicas: Annotated[int, typer.Option(min=1)] = 1,
    cpu: Annotated[str, typer.Option(help="CPU per replica")] = "1",
    memory: Annotated[str, typer.Option(help="memory per replica")] = "2Gi",
    gpus: Annotated[int, typer.Option(min=0, help="NVIDIA GPUs per replica")] = 0,
    force: Annotated[bool, typer.Option("--force", help="overwrite OUTPUT")] = False,
) -> None:
    """Write a KServe InferenceService manifest serving a Triton repository (v2 protocol)."""
    from onnxstitch.runtime.deploy.kserve import deploy_kserve

    text = deploy_kserve(
        storage_uri,
        output,
        name=name,
        namespace=namespace,
        runtime=runtime or None,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        force=force,
    )
    if output is None:
        typer.echo(text, nl=False)
    else:
        console.print(f"wrote {output}")


def register(app: typer.Typer) -> None:
    """Add the ``deploy`` group to the main app."""
    group = typer.Typer(
        help="Write deployment artefacts (Triton repository, KServe manifest).", no_args_is_help=True
    )
    group.command("triton")(triton)
    group.command("kserve")(kserve)
    app.add_typer(group, name="deploy")
