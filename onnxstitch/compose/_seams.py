"""Checks at each seam (dtype, rank, static dims, layout), automatic adapters, symbolic-dim unification.

Everything here runs before anything is built. Rules (DESIGN.md, "Rules at a seam"):
    * dtypes must be equal, or the producer's widens losslessly into the consumer's (float16 → float32,
      int32 → int64, ...): then a Cast is inserted. Anything else is an error suggesting a cast adapter.
    * rank-4 ends whose layouts are both known (metadata ``onnxstitch.layout.<tensor>``) and differ get
      a Transpose (NHWC → NCHW: perm (0, 3, 1, 2); NCHW → NHWC: (0, 2, 3, 1)); the shapes must then agree.
      When a layout is unknown the shapes are compared as they are: equal shapes are a valid seam,
      different ones an error (suggesting the transpose when the permuted shape would fit).
    * a merged input feeding several parts takes the dtype, shape and layout of the FIRST part input
      it lists; every other part input is checked against it like a seam (so a known, different
      layout gets a Transpose and a widening dtype a Cast in front of that part).
    * symbolic dims are unified (union-find over ``(part, symbol)``); a static dim binds a symbol to
      its value; a symbol bound to two values is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.helper

from onnxstitch import _meta
from onnxstitch.compose._spec import Plan, graph_inputs

log = logging.getLogger(__name__)

Dim = int | str | None
NHWC_TO_NCHW = (0, 3, 1, 2)
NCHW_TO_NHWC = (0, 2, 3, 1)
_T = onnx.TensorProto
_WIDENS: dict[int, set[int]] = {
    _T.FLOAT16: {_T.FLOAT, _T.DOUBLE},
    _T.BFLOAT16: {_T.FLOAT, _T.DOUBLE},
    _T.FLOAT: {_T.DOUBLE},
    _T.INT8: {_T.INT16, _T.INT32, _T.INT64},
    _T.INT16: {_T.INT32, _T.INT64},
    _T.INT32: {_T.INT64},
    _T.UINT8: {_T.UINT16, _T.UINT32, _T.UINT64, _T.INT16, _T.INT32, _T.INT64},
    _T.UINT16: {_T.UINT32, _T.UINT64, _T.INT32, _T.INT64},
    _T.UINT32: {_T.UINT64, _T.INT64},
}


def dtype_name(elem: int) -> str:
    """``"float32"`` for ``TensorProto.FLOAT`` (numpy's names where numpy has the type)."""
    try:
        return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem)).name)
    except (KeyError, TypeError, ValueError):
        return str(onnx.TensorProto.DataType.Name(elem)).lower()


@dataclass(frozen=True)
class TensorType:
    """The dtype and shape of a graph input/output (``dims is None``: rank unknown)."""

    elem: int
    dims: tuple[Dim, ...] | None
    other: bytes = b""  # the serialized type of a non-tensor value (sequence, map, optional)

    @classmethod
    def of(cls, vi: onnx.ValueInfoProto) -> TensorType:
        if vi.type.WhichOneof("value") != "tensor_type":
            return cls(0, None, vi.type.SerializeToString(deterministic=True))
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            return cls(tt.elem_type, None)
        dims: list[Dim] = []
        for d in tt.shape.dim:
            kind = d.WhichOneof("value")
            dims.append(d.dim_value if kind == "dim_value" else d.dim_param if kind == "dim_param" else None)
        return cls(tt.elem_type, tuple(dims))

    def __str__(self) -> str:
        if self.other:
            return "non-tensor"
        dtype = dtype_name(self.elem) if self.elem else "?"
        if self.dims is None:
            return f"{dtype}[?]"
        return f"{dtype}[{','.join('?' if d is None else str(d) for d in self.dims)}]"


@dataclass
class Adapter:
    """An automatic adapter in front of one part input."""

    perm: tuple[int, ...] | None = None
    cast_to: int | None = None

    def describe(self) -> str:
        steps = []
        if self.perm is not None:
            steps.append(f"Transpose{self.perm}")
        if self.cast_to is not None:
            steps.append(f"Cast({dtype_name(self.cast_to)})")
        return " + ".join(steps)


@dataclass
class SeamResult:
    """What the checks found: problems, adapters to insert, and the unified dims."""

    problems: list[str] = field(default_factory=list)
    adapters: dict[tuple[str, str], Adapter] = field(default_factory=dict)
    dims: DimUnifier = field(default_factory=lambda: DimUnifier())


class DimUnifier:
    """Union-find over symbolic dims ``(part, symbol)`` and anonymous dims; a class may bind a value."""

    def __init__(self) -> None:
        self.parent: dict[tuple[str, ...], tuple[str, ...]] = {}
        self.value: dict[tuple[str, ...], int] = {}
        self.names: dict[tuple[str, ...], str] = {}

    def find(self, node: tuple[str, ...]) -> tuple[str, ...]:
        self.parent.setdefault(node, node)
        root = node
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[node] != root:
            self.parent[node], node = root, self.parent[node]
        return root

    def bind(self, node: tuple[str, ...], value: int) -> int | None:
        """Bind a class to a value; return the conflicting value if it was bound to another."""
        root = self.find(node)
        old = self.value.get(root)
        if old is not None and old != value:
            return old
        self.value[root] = value
        return None

    def union(self, a: tuple[str, ...], b: tuple[str, ...]) -> tuple[int, int] | None:
        """Join two classes; return the two values if both were bound to different ones."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return None
        va, vb = self.value.get(ra), self.value.get(rb)
        if va is not None and vb is not None and va != vb:
            return va, vb
        self.parent[rb] = ra
        if va is None and vb is not None:
            self.value[ra] = vb
        return None

    def resolve(self, node: tuple[str, ...]) -> Dim:
        """The final dim of a node: a value, a class name, or ``None`` (unknown)."""
        root = self.find(node)
        if root in self.value:
            return self.value[root]
        return self.names.get(root)

    def name_classes(self, preferred: Sequence[tuple[tuple[str, ...], str]]) -> None:
        """Give every class containing a symbol one unique name, ``preferred`` ones first."""
        used: set[str] = set()
        for node, name in preferred:
            root = self.find(node)
            if root not in self.names and root not in self.value and name not in used:
                self.names[root] = name
                used.add(name)
        for node in list(self.parent):
            root = self.find(node)
            if root in self.names or root in self.value or node[0] != "sym":
                continue
            name = node[2] if node[2] not in used else f"{node[1]}.{node[2]}"
            while name in used:
                name += "_"
            self.names[root] = name
            used.add(name)


def dim_node(key: str, where: str, tensor: str, index: int, dim: Dim) -> tuple[str, ...] | None:
    """The union-find node of one interface dim (``None`` for a static dim)."""
    if isinstance(dim, int):
        return None
    if isinstance(dim, str) and dim:
        return ("sym", key, dim)
    return ("anon", key, where, tensor, str(index))


def _layout(model: onnx.ModelProto, tensor: str) -> str | None:
    return _meta.get_layouts(model).get(tensor)


def _permute(dims: tuple[Dim, ...], perm: tuple[int, ...]) -> tuple[Dim, ...]:
    return tuple(dims[p] for p in perm)


def _static_mismatch(a: tuple[Dim, ...], b: tuple[Dim, ...]) -> list[int]:
    return [
        i
        for i, (x, y) in enumerate(zip(a, b, strict=True))
        if isinstance(x, int) and isinstance(y, int) and x != y
    ]


class SeamChecker:
    """Checks every seam of a plan; collects problems, adapters and dim classes."""

    def __init__(
        self, models: Mapping[str, onnx.ModelProto], layouts_from: Mapping[str, onnx.ModelProto]
    ) -> None:
        self.models = models
        self.layouts_from = layouts_from
        self.result = SeamResult()
        self.ins = {k: {vi.name: TensorType.of(vi) for vi in graph_inputs(m)} for k, m in models.items()}
        self.outs = {k: {vi.name: TensorType.of(vi) for vi in m.graph.output} for k, m in models.items()}

    def check(self, plan: Plan) -> SeamResult:
        for link in plan.links:
            self._link(link.src_part, link.src_tensor, link.dst_part, link.dst_tensor)
        for name, ends in plan.merged_inputs.items():
            self._shared_input(name, ends)
        return self.result

    def _describe(self, src: tuple[str, str, TensorType], dst: tuple[str, str, TensorType]) -> str:
        return f"{src[0]}:{src[1]} ({src[2]}) -> {dst[0]}:{dst[1]} ({dst[2]})"

    def _link(self, sk: str, st: str, dk: str, dt: str) -> None:
        p, c = self.outs[sk][st], self.ins[dk][dt]
        seam = self._describe((sk, st, p), (dk, dt, c))
        lp, lc = _layout(self.layouts_from[sk], st), _layout(self.layouts_from[dk], dt)
        self._pair(seam, p, lp, (sk, "out", st), c, lc, (dk, "in", dt))

    def _pair(
        self,
        seam: str,
        p: TensorType,
        lp: str | None,
        src: tuple[str, str, str],
        c: TensorType,
        lc: str | None,
        dst: tuple[str, str, str],
    ) -> None:
        """Check one producer -> consumer pair; record the adapter it needs and unify its dims."""
        problems: list[str] = []
        adapter = Adapter()
        if p.other or c.other:
            if p.other != c.other:
                problems.append(f"{seam}: the value types differ")
            self._report(seam, problems)
            return
        if p.elem and c.elem and p.elem != c.elem:
            if c.elem in _WIDENS.get(p.elem, set()):
                adapter.cast_to = c.elem
            else:
                problems.append(
                    f"{seam}: dtype {dtype_name(p.elem)} does not widen to {dtype_name(c.elem)}; "
                    f"insert ox.adapters.cast({dtype_name(c.elem)!r}, from_dtype={dtype_name(p.elem)!r}"
                    f"{'' if p.dims is None or len(p.dims) == 2 else f', rank={len(p.dims)}'})"
                    " if the conversion is intended"
                )
        pdims = p.dims
        if pdims is not None and c.dims is not None:
            pdims = self._layout_check(seam, lp, lc, pdims, c.dims, adapter, problems)
        if not problems and pdims is not None and c.dims is not None:
            self._unify(seam, src, pdims, p.dims or (), adapter.perm, dst, c.dims, problems)
        if adapter.perm is not None or adapter.cast_to is not None:
            self.result.adapters[(dst[0], dst[2])] = adapter
        self._report(seam, problems)

    def _layout_check(
        self,
        seam: str,
        lp: str | None,
        lc: str | None,
        pdims: tuple[Dim, ...],
        cdims: tuple[Dim, ...],
        adapter: Adapter,
        problems: list[str],
    ) -> tuple[Dim, ...] | None:
        """Decide the transpose; return the producer's dims as the consumer will see them (None: problem)."""
        if len(pdims) != len(cdims):
            problems.append(f"{seam}: rank {len(pdims)} != {len(cdims)}{_reshape_hint(pdims, cdims)}")
            return None
        if len(pdims) == 4 and lp and lc and lp != lc:
            perm = NHWC_TO_NCHW if lp == "NHWC" else NCHW_TO_NHWC
            moved = _permute(pdims, perm)
            bad = _static_mismatch(moved, cdims)
            if bad:
                problems.append(
                    f"{seam}: {lp} -> {lc} needs transpose{perm}, giving {list(moved)}, "
                    f"which still differs in dim(s) {bad}"
                )
                return None
            adapter.perm = perm
            return moved
        bad = _static_mismatch(pdims, cdims)
        if bad:
            problems.append(f"{seam}: static dim(s) {bad} differ{self._transpose_hint(pdims, cdims, lp, lc)}")
            return None
        return pdims

    @staticmethod
    def _transpose_hint(
        pdims: tuple[Dim, ...], cdims: tuple[Dim, ...], lp: str | None, lc: str | None
    ) -> str:
        if len(pdims) == 4:
            for perm in (NHWC_TO_NCHW, NCHW_TO_NHWC):
                if not _static_mismatch(_permute(pdims, perm), cdims):
                    known = f"layouts {lp or 'unknown'} -> {lc or 'unknown'}"
                    return f" ({known}); insert ox.adapters.transpose({perm}) if this is a layout change"
        return _reshape_hint(pdims, cdims)

    def _unify(
        self,
        seam: str,
        src: tuple[str, str, str],
        pdims: tuple[Dim, ...],
        raw_pdims: tuple[Dim, ...],
        perm: tuple[int, ...] | None,
        dst: tuple[str, str, str],
        cdims: tuple[Dim, ...],
        problems: list[str],
    ) -> None:
        dims = self.result.dims
        order = perm if perm is not None else tuple(range(len(pdims)))
        for i, (pd, cd) in enumerate(zip(pdims, cdims, strict=True)):
            pn = dim_node(src[0], src[1], src[2], order[i], raw_pdims[order[i]] if raw_pdims else pd)
            cn = dim_node(dst[0], dst[1], dst[2], i, cd)
            clash: tuple[int, int] | None = None
            if pn is not None and cn is not None:
                clash = dims.union(pn, cn)
            elif pn is not None and isinstance(cd, int):
                old = dims.bind(pn, cd)
                clash = None if old is None else (old, cd)
            elif cn is not None and isinstance(pd, int):
                old = dims.bind(cn, pd)
                clash = None if old is None else (old, pd)
            if clash:
                problems.append(f"{seam}: dim {i} would have to be both {clash[0]} and {clash[1]}")

    def _shared_input(self, name: str, ends: list[tuple[str, str]]) -> None:
        """The merged input takes the type and layout of its first part input; the others must fit it."""
        if len(ends) < 2:
            return
        fk, ft = ends[0]
        first = self.ins[fk][ft]
        lf = _layout(self.layouts_from[fk], ft)
        for key, tensor in ends[1:]:
            other = self.ins[key][tensor]
            seam = f"merged input {name!r} (as {fk}:{ft}, {first}) -> {key}:{tensor} ({other})"
            lo = _layout(self.layouts_from[key], tensor)
            self._pair(seam, first, lf, (fk, "in", ft), other, lo, (key, "in", tensor))

    def _report(self, seam: str, problems: list[str]) -> None:
        self.result.problems.extend(problems)


def _reshape_hint(pdims: tuple[Dim, ...], cdims: tuple[Dim, ...]) -> str:
    """Suggest a reshape/flatten when the element counts past dim 0 are static and equal."""

    def count(d: tuple[Dim, ...]) -> int | None:
        total = 1
        for x in d[1:]:
            if not isinstance(x, int):
                return None
            total *= x
        return total

    if pdims and cdims and count(pdims) is not None and count(pdims) == count(cdims):
        if len(cdims) == 2:
            return "; insert ox.adapters.flatten()"
        return f"; insert ox.adapters.reshape({tuple([-1, *cdims[1:]])})"
    return ""
