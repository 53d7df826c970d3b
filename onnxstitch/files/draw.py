"""Drawing the part-level structure (:mod:`onnxstitch.files.picture`): Mermaid text and SVG/PNG.

The picture is laid out left to right in layers (merged inputs, then each part after the parts it
reads from, adapters as small boxes of their own on their seam, merged outputs last), every edge
labelled with its tensor. Images are drawn with matplotlib (the ``picture`` extra), on a figure of
our own (no pyplot, no global backend or rcParams change), with fonts as paths: nothing is fetched
when the picture is drawn or opened.
"""

from __future__ import annotations

import os
import re
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

from onnxstitch.errors import InputError, MissingDependencyError

__all__ = ["FORMATS", "draw", "mermaid"]

FORMATS = (".svg", ".png")

_COLOURS = {
    "input": "#e8f1fb",
    "output": "#e8f1fb",
    "part": "#fff4d6",
    "automatic": "#e3f4e3",
    "user": "#f3e3f4",
}


def _boxes(graph: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """``{id: (kind, text)}`` of every box of the picture, in drawing order."""
    boxes: dict[str, tuple[str, str]] = {}
    for row in graph["inputs"]:
        boxes[row["id"]] = ("input", f"{row['name']}\n{_tensor(row)}")
    for part in graph["parts"]:
        opsets = ", ".join(f"{d} {v}" for d, v in part["opsets"].items())
        lines = [
            part["part"],
            f"{part['source'] or 'onnx'} · {part['nodes']} node{'' if part['nodes'] == 1 else 's'}",
            f"{part['parameters']:,} params" + (f" · {part['precision']}" if part["precision"] else ""),
        ]
        boxes[part["id"]] = ("part", "\n".join(lines + ([f"opset {opsets}"] if opsets else [])))
    for adapter in graph["adapters"]:
        ops = " → ".join(adapter["ops"]) or "adapter"
        boxes[adapter["id"]] = (adapter["kind"], f"{ops}\n({adapter['kind']} adapter)")
    for row in graph["outputs"]:
        boxes[row["id"]] = ("output", f"{row['name']}\n{_tensor(row)}")
    return boxes


def _tensor(info: dict[str, Any]) -> str:
    shape = (
        "?"
        if info["shape"] is None
        else "[" + ", ".join("?" if d is None else str(d) for d in info["shape"]) + "]"
    )
    return f"{info['dtype']}{shape}" + (f" {info['layout']}" if info.get("layout") else "")


def _layers(graph: dict[str, Any], ids: list[str]) -> dict[str, int]:
    """The column of each box: one past the deepest box that feeds it."""
    preds: dict[str, set[str]] = {i: set() for i in ids}
    for edge in graph["edges"]:
        if edge["from"] in preds and edge["to"] in preds:
            preds[edge["to"]].add(edge["from"])
    layer: dict[str, int] = {}
    for node in TopologicalSorter(preds).static_order():
        layer[node] = 1 + max((layer[p] for p in preds[node]), default=-1)
    last = max(layer.values(), default=0)
    for row in graph["outputs"]:  # merged outputs line up at the right edge
        layer[row["id"]] = max(last, 1)
    return layer


def _mermaid_id(box: str) -> str:
    return re.sub(r"\W", "_", box)


def _mermaid_text(text: str) -> str:
    return text.replace('"', "#quot;").replace("\n", "<br/>")


def mermaid(graph: dict[str, Any]) -> str:
    """The picture as a Mermaid ``flowchart`` (paste it into Markdown inside a ```mermaid block)."""
    shapes = {
        "input": ('[/"', '"/]'),
        "output": ('[\\"', '"\\]'),
        "part": ('["', '"]'),
        "automatic": ('{{"', '"}}'),
        "user": ('{{"', '"}}'),
    }
    lines = ["flowchart LR"]
    for box, (kind, text) in _boxes(graph).items():
        left, right = shapes[kind]
        lines.append(f"  {_mermaid_id(box)}{left}{_mermaid_text(text)}{right}")
    for edge in graph["edges"]:
        label = _mermaid_text(edge["label"])
        lines.append(f'  {_mermaid_id(edge["from"])} -- "{label}" --> {_mermaid_id(edge["to"])}')
    return "\n".join(lines) + "\n"


def _matplotlib() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingDependencyError(
            "matplotlib", extra="picture", purpose="drawing a model's parts"
        ) from exc
    return Figure


def draw(graph: dict[str, Any], path: str | os.PathLike[str], *, title: str | None = None) -> Path:
    """Draw the picture to ``path`` (``.svg`` or ``.png``, by its suffix).

    Raises:
        InputError: the suffix is neither ``.svg`` nor ``.png``.
        MissingDependencyError: matplotlib is not installed (``pip install 'onnxstitch[picture]'``).
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(
            f"cannot draw {target.name!r}: the picture is written as SVG or PNG",
            hint="name the file .svg or .png (or print Mermaid text with --mermaid)",
        )
    figure_cls = _matplotlib()
    boxes = _boxes(graph)
    layer = _layers(graph, list(boxes))
    columns: dict[int, list[str]] = {}
    for box in boxes:
        columns.setdefault(layer[box], []).append(box)
    height = max(len(c) for c in columns.values())
    preds: dict[str, list[str]] = {}
    for edge in graph["edges"]:
        preds.setdefault(edge["to"], []).append(edge["from"])
    where: dict[str, tuple[float, float]] = {}
    for col in sorted(columns):  # each column in the order of its feeders' heights: fewer crossings
        members = columns[col]
        heights = {b: [where[p][1] for p in preds.get(b, []) if p in where] for b in members}
        members.sort(key=lambda b: -sum(heights[b]) / len(heights[b]) if heights[b] else 0.0)
        for row, box in enumerate(members):
            where[box] = (col * 3.4, ((len(members) - 1) / 2 - row) * 1.9)
    fig = figure_cls(figsize=(2.9 * len(columns) + 0.6, 1.5 * height + 0.9))
    ax = fig.add_axes((0, 0, 1, 0.92 if title else 1))
    ax.set_axis_off()
    texts = {}
    for box, (kind, text) in boxes.items():
        x, y = where[box]
        small = kind in ("automatic", "user", "input", "output")
        texts[box] = ax.text(
            x,
            y,
            text,
            ha="center",
            va="center",
            fontsize=7 if small else 8,
            zorder=3,
            bbox={"boxstyle": "round,pad=0.5", "fc": _COLOURS[kind], "ec": "#555555"},
        )
    for edge in graph["edges"]:
        if edge["from"] not in where or edge["to"] not in where:
            continue
        (x0, y0), (x1, y1) = where[edge["from"]], where[edge["to"]]
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            zorder=4,
            arrowprops={
                "arrowstyle": "-|>",
                "mutation_scale": 14,
                "color": "#333333",
                "shrinkA": 0,
                "shrinkB": 0,
                "patchA": texts[edge["from"]].get_bbox_patch(),
                "patchB": texts[edge["to"]].get_bbox_patch(),
            },
        )
        ax.text(
            (x0 + x1) / 2,
            (y0 + y1) / 2 + 0.28,
            edge["label"],
            ha="center",
            va="bottom",
            fontsize=6,
            color="#1f3b73",
            zorder=4,
        )
    xs = [p[0] for p in where.values()]
    ys = [p[1] for p in where.values()]
    ax.set_xlim(min(xs) - 1.6, max(xs) + 1.6)
    ax.set_ylim(min(ys) - 1.0, max(ys) + 1.0)
    if title:
        fig.suptitle(title, fontsize=10)
    metadata = {"Date": None} if suffix == ".svg" else {}
    fig.savefig(target, format=suffix[1:], metadata=metadata, dpi=150)
    return target
