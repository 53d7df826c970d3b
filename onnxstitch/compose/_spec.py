"""The wiring of a merge: links, merged inputs and outputs, checked and resolved into a plan.

Naming rules (documented in ``merge``):
    * a part input that no link feeds and no ``inputs=`` entry names becomes a merged input under its
      own name; a part output that no link consumes becomes a merged output under its own name
      (unless ``outputs=`` is given, in which case exactly those are the outputs);
    * when such a default name is used by several parts (or by an explicit name), each of them is
      renamed ``"<key>.<name>"`` — pass ``inputs=`` / ``outputs=`` to pick the names yourself;
    * explicit names must be unique: a clash is a :class:`SpecError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx

from onnxstitch import _meta
from onnxstitch.errors import CycleError, SpecError

LINK_FORM = '"key:tensor->key:tensor", e.g. "backbone:features->head:x"'
_KEY_FORBIDDEN = re.compile(r"[:/]|->")


@dataclass(frozen=True)
class Link:
    """One seam: the output ``src_tensor`` of part ``src_part`` feeds input ``dst_tensor`` of ``dst_part``."""

    src_part: str
    src_tensor: str
    dst_part: str
    dst_tensor: str

    @classmethod
    def parse(cls, text: str) -> Link:
        """Parse ``"key:tensor->key:tensor"`` (whitespace around the pieces is ignored).

        Raises:
            SpecError: the text is not of that form.
        """
        if not isinstance(text, str):
            raise SpecError(f"a link must be a string or a Link, got {type(text).__name__}", hint=LINK_FORM)
        sides = text.split("->")
        if len(sides) != 2:
            raise SpecError(f"malformed link {text!r}: expected {LINK_FORM}")
        src = _parse_endpoint(sides[0])
        dst = _parse_endpoint(sides[1])
        if src is None or dst is None:
            raise SpecError(f"malformed link {text!r}: expected {LINK_FORM}")
        return cls(src[0], src[1], dst[0], dst[1])

    def __str__(self) -> str:
        return f"{self.src_part}:{self.src_tensor}->{self.dst_part}:{self.dst_tensor}"


def _parse_endpoint(text: str) -> tuple[str, str] | None:
    key, sep, tensor = text.partition(":")
    key, tensor = key.strip(), tensor.strip()
    if not sep or not key or not tensor:
        return None
    return key, tensor


def parse_endpoint(text: str, what: str) -> tuple[str, str]:
    """Parse ``"key:tensor"``.

    Raises:
        SpecError: the text is not of that form.
    """
    parsed = _parse_endpoint(text) if isinstance(text, str) else None
    if parsed is None:
        raise SpecError(f'malformed {what} {text!r}: expected "key:tensor", e.g. "backbone:image"')
    return parsed


@dataclass
class Plan:
    """A checked wiring.

    Attributes:
        order: part keys in a topological order (producers first, ties in the given order).
        links: the parsed links.
        feeds: ``(dst_key, input) -> merged input name`` for part inputs fed from outside.
        merged_inputs: merged input name -> the part inputs it feeds, in order.
        merged_outputs: merged output name -> ``(key, output)``.
    """

    order: list[str]
    links: list[Link]
    feeds: dict[tuple[str, str], str] = field(default_factory=dict)
    merged_inputs: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    merged_outputs: dict[str, tuple[str, str]] = field(default_factory=dict)


def read_spec(model: onnx.ModelProto) -> dict[str, Any]:
    """The wiring recorded in a merged model (``extract`` and ``replace`` read it back).

    Raises:
        SpecError: the model carries no recorded wiring (not built by ``merge``).
    """
    raw = _meta.get_props(model).get(_meta.SPEC)
    if not raw:
        raise SpecError("this model was not built by onnxstitch.merge (no recorded parts/wiring)")
    spec: dict[str, Any] = json.loads(raw)
    return spec


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs of a model: graph inputs that are not initializers."""
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _valid(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names) or "(none)"


class _Resolver:
    """Collects every problem of a spec; ``plan()`` raises once with all of them."""

    def __init__(self, ios: Mapping[str, tuple[list[str], list[str]]]) -> None:
        self.ios = ios  # key -> (input names, output names)
        self.problems: list[str] = []

    def check_endpoint(self, key: str, tensor: str, side: str, context: str) -> bool:
        if key not in self.ios:
            self.problems.append(f"{context}: unknown part {key!r}; the parts are {_valid(list(self.ios))}")
            return False
        names = self.ios[key][0 if side == "input" else 1]
        if tensor not in names:
            self.problems.append(
                f"{context}: part {key!r} has no {side} {tensor!r}; its {side}s are {_valid(names)}"
            )
            return False
        return True

    def parse_links(self, links: Sequence[str | Link]) -> list[Link]:
        parsed: list[Link] = []
        for raw in links:
            try:
                link = raw if isinstance(raw, Link) else Link.parse(raw)
            except SpecError as exc:
                self.problems.append(str(exc))
                continue
            ok_src = self.check_endpoint(link.src_part, link.src_tensor, "output", f"link {str(link)!r}")
            ok_dst = self.check_endpoint(link.dst_part, link.dst_tensor, "input", f"link {str(link)!r}")
            if ok_src and ok_dst:
                parsed.append(link)
        return parsed


def resolve(
    ios: Mapping[str, tuple[list[str], list[str]]],
    links: Sequence[str | Link],
    inputs: Mapping[str, str | Sequence[str]] | None,
    outputs: Mapping[str, str] | None,
) -> Plan:
    """Check the wiring and return the plan.

    Args:
        ios: for each part key (in the user's order), its input and output names.
        links: link strings or :class:`Link` objects.
        inputs: merged input name -> one or several ``"key:input"``.
        outputs: merged output name -> ``"key:output"``; ``None`` means every unlinked output.

    Raises:
        SpecError: any problem (all of them, in one message).
        CycleError: the links form a cycle (the message also lists any other problem).
    """
    res = _Resolver(ios)
    if isinstance(links, str):
        links = [links]
    parsed = res.parse_links(links)
    fed: dict[tuple[str, str], str] = {}
    for link in parsed:
        _feed(res, fed, (link.dst_part, link.dst_tensor), f"link {str(link)!r}")
    explicit_in = _explicit_inputs(res, fed, inputs)
    explicit_out = _explicit_outputs(res, outputs)
    plan = Plan(order=[], links=parsed)
    _defaults(ios, parsed, fed, explicit_in, explicit_out, outputs is None, plan)
    _check_names(res, plan, explicit_in, explicit_out)
    cycle = find_cycle(list(ios), parsed)
    if cycle:
        res.problems.append(f"the links form a cycle: {' -> '.join(cycle)}")
    if res.problems:
        message = "invalid merge specification:\n  " + "\n  ".join(res.problems)
        if cycle:
            raise CycleError(message, cycle=cycle, hint="remove one link of the cycle")
        raise SpecError(message)
    plan.order = topo_order(list(ios), parsed)
    return plan


def _feed(res: _Resolver, fed: dict[tuple[str, str], str], dst: tuple[str, str], source: str) -> None:
    if dst in fed:
        res.problems.append(f"input {dst[0]}:{dst[1]} is fed twice: by {fed[dst]} and by {source}")
    else:
        fed[dst] = source


def _explicit_inputs(
    res: _Resolver, fed: dict[tuple[str, str], str], inputs: Mapping[str, str | Sequence[str]] | None
) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for name, targets in (inputs or {}).items():
        if not isinstance(name, str) or not name:
            res.problems.append(f"merged input name {name!r} must be a non-empty string")
            continue
        items = [targets] if isinstance(targets, str) else list(targets)
        if not items:
            res.problems.append(f"merged input {name!r} feeds no part input")
        ends: list[tuple[str, str]] = []
        for item in items:
            try:
                key, tensor = parse_endpoint(item, f"target of merged input {name!r}")
            except SpecError as exc:
                res.problems.append(str(exc))
                continue
            if res.check_endpoint(key, tensor, "input", f"merged input {name!r}"):
                _feed(res, fed, (key, tensor), f"merged input {name!r}")
                ends.append((key, tensor))
        out[name] = ends
    return out


def _explicit_outputs(res: _Resolver, outputs: Mapping[str, str] | None) -> dict[str, tuple[str, str]]:
    out: dict[str, tuple[str, str]] = {}
    for name, source in (outputs or {}).items():
        if not isinstance(name, str) or not name:
            res.problems.append(f"merged output name {name!r} must be a non-empty string")
            continue
        try:
            key, tensor = parse_endpoint(source, f"source of merged output {name!r}")
        except SpecError as exc:
            res.problems.append(str(exc))
            continue
        if res.check_endpoint(key, tensor, "output", f"merged output {name!r}"):
            out[name] = (key, tensor)
    return out


def _defaults(
    ios: Mapping[str, tuple[list[str], list[str]]],
    links: list[Link],
    fed: dict[tuple[str, str], str],
    explicit_in: dict[str, list[tuple[str, str]]],
    explicit_out: dict[str, tuple[str, str]],
    default_outputs: bool,
    plan: Plan,
) -> None:
    """Fill the plan's merged inputs/outputs: explicit ones, then the defaults with clean names."""
    consumed = {(link.src_part, link.src_tensor) for link in links}
    free_in = [(k, n) for k, (ins, _) in ios.items() for n in ins if (k, n) not in fed]
    free_out = (
        [(k, n) for k, (_, outs) in ios.items() for n in outs if (k, n) not in consumed]
        if default_outputs
        else []
    )
    taken = set(explicit_in) | set(explicit_out)
    counts: dict[str, int] = {}
    for _, n in free_in + free_out:
        counts[n] = counts.get(n, 0) + 1

    def clean(key: str, name: str) -> str:
        return name if counts[name] == 1 and name not in taken else f"{key}.{name}"

    plan.merged_inputs = dict(explicit_in)
    for key, name in free_in:
        plan.merged_inputs[clean(key, name)] = [(key, name)]
    plan.merged_outputs = dict(explicit_out)
    for key, name in free_out:
        plan.merged_outputs[clean(key, name)] = (key, name)
    plan.feeds = {end: name for name, ends in plan.merged_inputs.items() for end in ends}


def _check_names(
    res: _Resolver,
    plan: Plan,
    explicit_in: dict[str, list[tuple[str, str]]],
    explicit_out: dict[str, tuple[str, str]],
) -> None:
    both = set(explicit_in) & set(explicit_out)
    for name in sorted(both):
        res.problems.append(f"{name!r} is named both as a merged input and as a merged output")
    names = [*plan.merged_inputs, *plan.merged_outputs]
    dupes = sorted({n for n in names if names.count(n) > 1} - both)
    for name in dupes:
        res.problems.append(f"merged name {name!r} is used twice; pick distinct names in inputs=/outputs=")
    if not plan.merged_outputs and not res.problems:
        res.problems.append("the merged model would have no output; name one with outputs=")


def find_cycle(keys: list[str], links: Sequence[Link]) -> list[str] | None:
    """Return a cycle of parts as ``[a, b, a]``, or ``None`` when the links form a DAG."""
    succ: dict[str, list[str]] = {k: [] for k in keys}
    for link in links:
        if link.dst_part not in succ[link.src_part]:
            succ[link.src_part].append(link.dst_part)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in succ[node]:
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for key in keys:
        if key not in state:
            found = visit(key)
            if found:
                return found
    return None


def topo_order(keys: list[str], links: Sequence[Link]) -> list[str]:
    """Kahn's algorithm, ties broken by the given order of ``keys``."""
    indeg = {k: 0 for k in keys}
    edges = {(link.src_part, link.dst_part) for link in links}
    for _, dst in edges:
        indeg[dst] += 1
    order: list[str] = []
    ready = [k for k in keys if indeg[k] == 0]
    while ready:
        key = ready.pop(0)
        order.append(key)
        for src, dst in sorted(edges, key=lambda e: keys.index(e[1])):
            if src == key:
                indeg[dst] -= 1
                if indeg[dst] == 0:
                    ready.append(dst)
        ready.sort(key=keys.index)
    return order


def check_keys(keys: Sequence[object]) -> list[str]:
    """Problems with the part keys themselves (type, forbidden characters)."""
    problems: list[str] = []
    for key in keys:
        if not isinstance(key, str) or not key.strip():
            problems.append(f"part key {key!r} must be a non-empty string")
        elif _KEY_FORBIDDEN.search(key) or key != key.strip():
            problems.append(f"part key {key!r} must not contain ':', '/', '->' or surrounding spaces")
    return problems
