"""Checks at each seam (dtype, rank, static dims, layout), automatic adapters, symbolic-dim unification.

Everything here runs before anything is built. Rules (DESIGN.md, "Rules at a seam"):
    * dtypes must be equal, or the producer's widens losslessly into the consumer's (float16 → float32,
      int32 → int64, ...): then a Cast is inserted. Anything else is an error suggesting a cast adapter.
    * layouts (rank 3: NLC/NCL, rank 4: NHWC/NCHW, rank 5: NDHWC/NCDHW) come from the user's
      ``layouts={"key:tensor": layout}`` first, else from the part's metadata
      (``onnxstitch.layout.<tensor>``, recorded from evidence by the converters). Then:
        - both ends known: a Transpose where they differ (NHWC → NCHW: perm (0, 3, 1, 2)); the
          shapes must then agree;
        - one end known: the tensor is fed as it is when only that fits the shapes; when the
          transpose to the other layout fits too (C = H = W, C = L ...), the seam is ambiguous and
          refused: the error says both ways out (declare the unknown end, or an explicit adapter);
        - neither known: the shapes decide; equal shapes are a valid seam, different ones an error
          (suggesting the transpose when a permuted shape fits, else a reshape).
      A symbol past dim 0 is never bound to a static size at a seam whose axes no layouts line up
      when a transpose would fit without binding it: that is an error naming the symbol, the size
      and the permutation. Where it is the only fit, it is logged.
    * a merged input feeding several parts takes the dtype, shape and layout of the FIRST part input
      it lists; every other part input is checked against it like a seam (so a known, different
      layout gets a Transpose and a widening dtype a Cast in front of that part).
    * symbolic dims are unified (union-find over ``(part, symbol)``); a static dim binds a symbol to
      its value; a symbol bound to two values is an error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx.helper

from onnxstitch import _layouts, _meta
from onnxstitch.compose._spec import Plan, graph_inputs, parse_endpoint
from onnxstitch.errors import SpecError

log = logging.getLogger(__name__)

Dim = int | str | None
NHWC_TO_NCHW = _layouts.perm("NHWC", "NCHW")  # (0, 3, 1, 2)
NCHW_TO_NHWC = _layouts.perm("NCHW", "NHWC")  # (0, 2, 3, 1)
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
    declared: dict[tuple[str, str], str] = field(default_factory=dict)  # the user's layouts=

    def record_declared(self, merged: onnx.ModelProto, plan: Plan) -> None:
        """Record the declared layouts in the merged model (in place; ours): on the merged inputs and
        outputs they describe, and in the recorded wiring, so ``extract``/``replace`` keep them."""
        if not self.declared:
            return
        for name, ends in plan.merged_inputs.items():
            if ends and ends[0] in self.declared:
                _meta.set_layout(merged, name, self.declared[ends[0]])
        for name, end in plan.merged_outputs.items():
            if end in self.declared:
                _meta.set_layout(merged, name, self.declared[end])
        raw = _meta.get_props(merged).get(_meta.SPEC)
        if raw:
            spec = json.loads(raw)
            for (key, tensor), layout in self.declared.items():
                spec.setdefault("layouts", {}).setdefault(key, {})[tensor] = layout
            _meta.set_prop(merged, _meta.SPEC, json.dumps(spec))


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
        self,
        models: Mapping[str, onnx.ModelProto],
        layouts_from: Mapping[str, onnx.ModelProto],
        layouts: Mapping[str, str] | None = None,
    ) -> None:
        """``layouts``: the user's ``{"key:tensor": layout}``, over what the parts record.

        Raises:
            SpecError: a declared layout names no part input/output, or is no layout of its rank.
        """
        self.models = models
        self.layouts_from = layouts_from
        self.result = SeamResult()
        self.ins = {k: {vi.name: TensorType.of(vi) for vi in graph_inputs(m)} for k, m in models.items()}
        self.outs = {k: {vi.name: TensorType.of(vi) for vi in m.graph.output} for k, m in models.items()}
        self.declared = self._declared(layouts or {})
        self.result.declared = dict(self.declared)

    def _declared(self, layouts: Mapping[str, str]) -> dict[tuple[str, str], str]:
        problems: list[str] = []
        declared: dict[tuple[str, str], str] = {}
        if not isinstance(layouts, Mapping):
            raise SpecError(
                f'layouts must be a mapping {{"key:tensor": layout}}, got {type(layouts).__name__}'
            )
        for end, layout in layouts.items():
            try:
                key, tensor = parse_endpoint(end, "layouts= entry")
            except SpecError as exc:
                problems.append(str(exc))
                continue
            if key not in self.models:
                problems.append(
                    f"layouts={{{end!r}: ...}}: unknown part {key!r}; the parts are {list(self.models)}"
                )
                continue
            types = {**self.outs[key], **self.ins[key]}
            if tensor not in types:
                problems.append(
                    f"layouts={{{end!r}: ...}}: part {key!r} has no input or output {tensor!r}; "
                    f"its inputs and outputs are {sorted(types)}"
                )
                continue
            dims = types[tensor].dims
            problem = _layouts.check(
                layout, None if dims is None else len(dims), what=f"layouts={{{end!r}: ...}}"
            )
            if problem:
                problems.append(problem)
            else:
                declared[(key, tensor)] = layout
        if problems:
            raise SpecError(
                "invalid layouts=:\n  " + "\n  ".join(problems),
                hint='layouts={"key:tensor": layout} with a layout of the tensor\'s rank: '
                + ", ".join(_layouts.LAYOUTS),
            )
        return declared

    def layout(self, key: str, tensor: str) -> str | None:
        """The declared layout of a part's input/output, else the one the part records."""
        return self.declared.get((key, tensor)) or _meta.get_layouts(self.layouts_from[key]).get(tensor)

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
        self._pair(seam, p, self.layout(sk, st), (sk, "out", st), c, self.layout(dk, dt), (dk, "in", dt))

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
            ends = (f"{src[0]}:{src[2]}", f"{dst[0]}:{dst[2]}")
            pdims = self._layout_check(seam, ends, lp, lc, pdims, c.dims, adapter, problems)
        if not problems and pdims is not None and c.dims is not None:
            self._unify(seam, src, pdims, p.dims or (), adapter.perm, dst, c.dims, problems)
        if adapter.perm is not None or adapter.cast_to is not None:
            self.result.adapters[(dst[0], dst[2])] = adapter
        self._report(seam, problems)

    def _layout_check(
        self,
        seam: str,
        ends: tuple[str, str],
        lp: str | None,
        lc: str | None,
        pdims: tuple[Dim, ...],
        cdims: tuple[Dim, ...],
        adapter: Adapter,
        problems: list[str],
    ) -> tuple[Dim, ...] | None:
        """Decide the transpose; return the producer's dims as the consumer will see them (None: problem).

        ``ends`` names the producer and consumer as ``"key:tensor"`` (for the ``layouts=`` hints).
        """
        if len(pdims) != len(cdims):
            problems.append(f"{seam}: rank {len(pdims)} != {len(cdims)}{_reshape_hint(pdims, cdims)}")
            return None
        names = _layouts.for_rank(len(pdims))
        lp, lc = (lp if lp in names else None), (lc if lc in names else None)
        if lp and lc:
            perm = _layouts.perm(lp, lc)
            moved = _permute(pdims, perm)
            bad = _static_mismatch(moved, cdims)
            if bad and lp == lc:
                problems.append(f"{seam}: both ends are {lp}, and static dim(s) {bad} differ")
                return None
            if bad:
                problems.append(
                    f"{seam}: {lp} -> {lc} needs transpose{perm}, giving {list(moved)}, "
                    f"which still differs in dim(s) {bad}"
                )
                return None
            if perm != tuple(range(len(perm))):
                adapter.perm = perm
            if _bindings(moved, cdims):
                log.info("%s: %s (the layouts line the dims up)", seam, _bound(moved, cdims))
            return moved
        if not names:  # no layout at this rank: the shapes decide
            bad = _static_mismatch(pdims, cdims)
            if bad:
                problems.append(f"{seam}: static dim(s) {bad} differ{_reshape_hint(pdims, cdims)}")
                return None
            return pdims
        if lp or lc:
            return _one_layout_known(seam, ends, lp, lc, pdims, cdims, problems)
        return _no_layout_known(seam, ends, pdims, cdims, problems)

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
        lf = self.layout(fk, ft)
        for key, tensor in ends[1:]:
            other = self.ins[key][tensor]
            seam = f"merged input {name!r} (as {fk}:{ft}, {first}) -> {key}:{tensor} ({other})"
            lo = self.layout(key, tensor)
            self._pair(seam, first, lf, (fk, "in", ft), other, lo, (key, "in", tensor))

    def _report(self, seam: str, problems: list[str]) -> None:
        self.result.problems.extend(problems)


# -- layouts ----------------------------------------------------------------------------------------
_EXACT, _LOOSE, _MISMATCH = "exact", "loose", "mismatch"


def _fit(moved: tuple[Dim, ...], cdims: tuple[Dim, ...]) -> str:
    """How producer dims (already permuted) fit the consumer's: every static dim equal and no symbol
    bound to a size past dim 0 (exact), a symbol past dim 0 bound to a size (loose), or not at all."""
    if _static_mismatch(moved, cdims):
        return _MISMATCH
    return _LOOSE if _bindings(moved, cdims) else _EXACT


def _bindings(moved: tuple[Dim, ...], cdims: tuple[Dim, ...]) -> list[tuple[int, str, int]]:
    """``(axis, symbol, size)`` for each dim past 0 where a named symbol meets a static size.

    An unknown dim (no value, no name) takes any size: meeting one binds nothing.
    """
    out: list[tuple[int, str, int]] = []
    for i, (x, y) in enumerate(zip(moved, cdims, strict=True)):
        if i and isinstance(x, int) and isinstance(y, str):
            out.append((i, y, x))
        elif i and isinstance(x, str) and isinstance(y, int):
            out.append((i, x, y))
    return out


def _bound(moved: tuple[Dim, ...], cdims: tuple[Dim, ...]) -> str:
    text = ", ".join(f"{sym!r} to {size} (dim {i})" for i, sym, size in _bindings(moved, cdims))
    return f"it would bind {text}"


def _one_layout_known(
    seam: str,
    ends: tuple[str, str],
    lp: str | None,
    lc: str | None,
    pdims: tuple[Dim, ...],
    cdims: tuple[Dim, ...],
    problems: list[str],
) -> tuple[Dim, ...] | None:
    """One end's layout is known: fed as is when only that fits; refused when a transpose fits too."""
    known = lp or lc or ""
    flip = _layouts.perm(known, _layouts.other(known)) if lp else _layouts.perm(_layouts.other(known), known)
    as_is, flipped = _fit(pdims, cdims), _fit(_permute(pdims, flip), cdims)
    unknown_dims = cdims if lp else pdims
    says_nothing = not any(isinstance(d, int) for d in unknown_dims[1:])  # e.g. an adapter's [batch,?,?,?]
    if (as_is == _EXACT and flipped != _EXACT) or (
        as_is != _MISMATCH and (flipped == _MISMATCH or says_nothing)
    ):
        if as_is == _LOOSE:
            log.info("%s: %s", seam, _bound(pdims, cdims))
        return pdims
    if as_is == _MISMATCH and flipped == _MISMATCH:
        problems.append(
            f"{seam}: static dim(s) {_static_mismatch(pdims, cdims)} differ{_reshape_hint(pdims, cdims)}"
        )
        return None
    known_end, other_end = (ends[0], ends[1]) if lp else (ends[1], ends[0])
    flipped_layout = _layouts.other(known)
    if as_is == _MISMATCH:
        problems.append(
            f"{seam}: static dim(s) {_static_mismatch(pdims, cdims)} differ, but the shapes fit "
            f"transposed{flip}; {known_end} is {known}, {other_end} records no layout: if it is "
            f"{flipped_layout}, declare it (layouts={{{other_end!r}: {flipped_layout!r}}}) and the "
            f"Transpose is inserted, or insert ox.adapters.transpose({flip}) as a part"
        )
        return None
    loose = f" ({_bound(pdims, cdims)} as they are)" if as_is == _LOOSE else ""
    problems.append(
        f"{seam}: ambiguous layout: {known_end} is {known}, {other_end} records no layout, and the "
        f"shapes fit both as they are and transposed{flip}{loose}; say which: "
        f"layouts={{{other_end!r}: {known!r}}} feeds it as it is, "
        f"layouts={{{other_end!r}: {flipped_layout!r}}} inserts the Transpose, "
        f"or insert ox.adapters.transpose({flip}) as a part"
    )
    return None


def _no_layout_known(
    seam: str, ends: tuple[str, str], pdims: tuple[Dim, ...], cdims: tuple[Dim, ...], problems: list[str]
) -> tuple[Dim, ...] | None:
    """Neither layout is known: the shapes decide, but never by binding a symbol a transpose would keep."""
    as_is = _fit(pdims, cdims)
    if as_is == _EXACT:
        return pdims
    last, first = _layouts.for_rank(len(pdims))
    flips = [
        (f, _fit(_permute(pdims, f), cdims))
        for f in dict.fromkeys([_layouts.perm(last, first), _layouts.perm(first, last)])
    ]
    exact = [f for f, fit in flips if fit == _EXACT]
    if as_is == _LOOSE and not exact:
        log.info("%s: %s", seam, _bound(pdims, cdims))
        return pdims
    declare = f"layouts={{{ends[0]!r}: ..., {ends[1]!r}: ...}} ({' or '.join((last, first))})"
    if as_is == _LOOSE:
        problems.append(
            f"{seam}: {_bound(pdims, cdims)} as they are, while transpose{exact[0]} fits them without "
            f"binding; neither end records a layout: declare both ({declare}) or insert "
            f"ox.adapters.transpose({exact[0]}) as a part"
        )
        return None
    fitting = [f for f, fit in flips if fit != _MISMATCH]
    hint = (
        f" (no layout recorded at either end); insert ox.adapters.transpose({fitting[0]}) if this is a "
        f"layout change, or declare both ends ({declare})"
        if fitting
        else _reshape_hint(pdims, cdims)
    )
    problems.append(f"{seam}: static dim(s) {_static_mismatch(pdims, cdims)} differ{hint}")
    return None


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
            return f"; insert ox.adapters.flatten({'' if len(pdims) == 4 else f'rank={len(pdims)}'})"
        rank = "" if len(pdims) == 2 else f", rank={len(pdims)}"
        return f"; insert ox.adapters.reshape({(0, *cdims[1:])}{rank}) if the elements are in the right order"
    return ""
