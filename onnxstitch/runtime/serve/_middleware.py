"""ASGI middleware in front of the server's REST app.

It enforces the body-size limit (413), inflates gzip bodies within that limit, translates the
binary tensor extension (``Inference-Header-Content-Length``, what ``tritonclient`` sends by
default) to and from plain JSON, checks the request's structure, and gives every error response
the same ``{"error": "..."}`` shape with no filesystem path in it.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import orjson  # a dependency of MLServer; several times faster than json here

from onnxstitch.errors import InputError
from onnxstitch.runtime.serve._protocol import decode_binary, encode_binary

__all__ = ["ProtocolMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_INFER = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/infer$")
_CONFIG = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/config$")
_HEADER_LENGTH = b"inference-header-content-length"


class _TooLarge(Exception):
    pass


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _label(item: Any, index: int) -> str:
    name = item.get("name") if isinstance(item, dict) else None
    return repr(name) if isinstance(name, str) else f"#{index}"


def _check_structure(request: Any) -> None:
    """The request is a JSON object with a list of well-formed ``inputs`` (every problem listed)."""
    if not isinstance(request, dict):
        raise InputError("the request body must be a JSON object with an 'inputs' list")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InputError("the request must have a non-empty 'inputs' list")
    problems = []
    for index, item in enumerate(inputs):
        where = f"input {_label(item, index)}"
        if not isinstance(item, dict):
            problems.append(f"{where} must be an object")
            continue
        for key, kind in (("name", str), ("datatype", str), ("shape", list)):
            if not isinstance(item.get(key), kind):
                problems.append(f"{where}: {key!r} is missing or not a {kind.__name__}")
        params = item.get("parameters")
        if params is not None and not isinstance(params, dict):
            problems.append(f"{where}: 'parameters' must be an object")
        elif "data" not in item and not (params or {}).get("binary_data_size"):
            problems.append(f"{where}: no 'data'")
    outputs = request.get("outputs", [])
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        problems.append("'outputs' must be a list of objects with a 'name'")
    if problems:
        raise InputError(
            f"{len(problems)} problem(s) with the request:\n" + "\n".join(f"  - {p}" for p in problems)
        )


def _inline_binary(request: dict[str, Any], blob: bytes) -> None:
    """Move binary input data (in input order) into each input's ``data``."""
    offset = 0
    for index, item in enumerate(request["inputs"]):
        params = item.get("parameters") or {}
        size = params.pop("binary_data_size", None)
        if size is None:
            continue
        if type(size) is not int or size < 0 or offset + size > len(blob):
            raise InputError(f"input {_label(item, index)}: binary_data_size {size!r} does not fit the body")
        item["data"] = decode_binary(
            item["name"], item["datatype"], item["shape"], blob[offset : offset + size]
        )
        offset += size
    if offset != len(blob):
        raise InputError(f"the body has {len(blob) - offset} bytes of binary data that no input claims")


def _binary_outputs(request: dict[str, Any]) -> set[str] | bool:
    """Outputs the client wants as binary data: ``True`` for all, else the set of names."""
    if (request.get("parameters") or {}).get("binary_data_output") is True:
        return True
    return {
        o["name"]
        for o in request.get("outputs", [])
        if (o.get("parameters") or {}).get("binary_data") is True
    }


def parse_infer_body(body: bytes, header_length: int | None) -> tuple[bytes, set[str] | bool]:
    """The JSON body to pass on and the outputs to return as binary.

    Raises:
        InputError: the body is not a well-formed inference request.
    """
    if header_length is not None and not 0 <= header_length <= len(body):
        raise InputError("Inference-Header-Content-Length is larger than the body")
    head, blob = (body, b"") if header_length is None else (body[:header_length], body[header_length:])
    try:
        request = orjson.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"the request body is not valid JSON ({exc.__class__.__name__})") from None
    _check_structure(request)
    if header_length is not None or any(
        "binary_data_size" in (item.get("parameters") or {}) for item in request["inputs"]
    ):
        _inline_binary(request, blob)
    return _dumps(request), _binary_outputs(request)


def _encode_outputs(body: bytes, wanted: set[str] | bool) -> tuple[bytes, int | None]:
    """Move the wanted outputs' data out of the JSON response into binary (header length or None)."""
    response = orjson.loads(body)
    blobs = []
    for output in response.get("outputs", []):
        if not (wanted is True or (isinstance(wanted, set) and output.get("name") in wanted)):
            continue
        raw = encode_binary(str(output.get("datatype")), output.get("data"))
        if raw is None:
            continue
        del output["data"]
        output.setdefault("parameters", {})["binary_data_size"] = len(raw)
        blobs.append(raw)
    if not blobs:
        return body, None
    head = _dumps(response)
    return head + b"".join(blobs), len(head)


def _error_message(status: int, body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", "replace")[:500] or f"HTTP {status}"
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        return str(parsed["error"])
    detail = parsed.get("detail") if isinstance(parsed, dict) else None
    if isinstance(detail, list):  # FastAPI/pydantic validation errors: location + message, no input echo
        parts = [
            ".".join(str(p) for p in d.get("loc", []) if p != "body") + ": " + str(d.get("msg", ""))
            for d in detail
            if isinstance(d, dict)
        ]
        return "malformed inference request: " + "; ".join(parts)
    return str(detail) if detail is not None else f"HTTP {status}"


class ProtocolMiddleware:
    """See the module docstring.

    Args:
        app: the REST application.
        max_body_bytes: the largest request body accepted (after gzip inflation); larger gets 413.
        hide: strings (folders) replaced by ``<hidden>`` in error bodies.
        model_name: the served model, whose ``config`` is answered here.
        config: Triton's JSON form of its ``ModelConfig`` (``None``: the route answers 404).
        versions: the served versions; the config of another one answers 404 (empty: any).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        hide: Sequence[str] = (),
        model_name: str = "",
        config: dict[str, Any] | None = None,
        versions: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.versions = list(versions)
        self.max_body_bytes = max_body_bytes
        self.hide = [h for h in hide if h]
        self.model_name = model_name
        self.config = config

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        config_route = _CONFIG.match(scope["path"]) if scope["method"] == "GET" else None
        if config_route is not None:
            await self._send_config(send, config_route.group(1), config_route.group(2))
            return
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        try:
            body = await self._read_body(receive, headers)
        except _TooLarge:
            await self._send_error(
                send, 413, f"the request body is larger than the limit of {self.max_body_bytes} bytes"
            )
            return
        except InputError as exc:
            await self._send_error(send, 400, str(exc))
            return
        binary: set[str] | bool = set()
        if scope["path"] == "/v2/repository/index" and not body.strip():
            body = b"{}"  # tritonclient sends no body; MLServer wants a JSON object
        if scope["method"] == "POST" and _INFER.match(scope["path"]):
            try:
                raw_length = headers.get(_HEADER_LENGTH)
                header_length = int(raw_length) if raw_length is not None else None
                body, binary = parse_infer_body(body, header_length)
            except ValueError:
                await self._send_error(send, 400, "Inference-Header-Content-Length is not an integer")
                return
            except InputError as exc:
                await self._send_error(send, 400, str(exc))
                return
        drop = {b"content-length", b"content-encoding", _HEADER_LENGTH, b"content-type"}
        new_headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() not in drop]
        new_headers += [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
        inner_scope = dict(scope, headers=new_headers)
        await self._forward(inner_scope, body, send, binary)

    async def _read_body(self, receive: Receive, headers: dict[bytes, bytes]) -> bytes:
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            raise _TooLarge
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        encoding = headers.get(b"content-encoding", b"identity").lower()
        if encoding in (b"gzip", b"deflate"):
            inflater = zlib.decompressobj(wbits=31 if encoding == b"gzip" else 15)
            try:
                body = inflater.decompress(body, self.max_body_bytes + 1)
            except zlib.error:
                raise InputError(f"the body is not valid {encoding.decode()} data") from None
            if len(body) > self.max_body_bytes or inflater.unconsumed_tail:
                raise _TooLarge
        elif encoding != b"identity":
            raise InputError(f"unsupported Content-Encoding {encoding.decode(errors='replace')!r}")
        return body

    async def _forward(self, scope: Scope, body: bytes, send: Send, binary: set[str] | bool) -> None:
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        start: Message = {}
        parts: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                parts.append(message.get("body", b""))

        await self.app(scope, receive, capture)
        status = int(start.get("status", 500))
        out = b"".join(parts)
        if status >= 400:
            # FastAPI answers a body it cannot validate with 422; to clients that is a bad request
            await self._send_error(send, 400 if status == 422 else status, _error_message(status, out))
            return
        headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length",)]
        if status == 200 and binary:
            out, head_length = _encode_outputs(out, binary)
            if head_length is not None:
                headers = [(k, v) for k, v in headers if k.lower() != b"content-type"]
                headers += [
                    (_HEADER_LENGTH, str(head_length).encode()),
                    (b"content-type", b"application/octet-stream"),
                ]
        headers.append((b"content-length", str(len(out)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    async def _send_config(self, send: Send, name: str, version: str | None = None) -> None:
        """Triton's ``GET /v2/models/NAME[/versions/V]/config``: the model's config as JSON."""
        if name != self.model_name:
            await self._send_error(send, 404, f"Model {name} not found")
        elif version and self.versions and version not in self.versions:
            await self._send_error(send, 404, f"Model {name} with version {version} not found")
        elif self.config is None:
            message = f"no Triton model config for model {name!r}: tritonclient's schema is not "
            await self._send_error(send, 404, message + "installed or Triton cannot serve its signature")
        else:
            body = _dumps(self.config)
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": body})

    async def _send_error(self, send: Send, status: int, message: str) -> None:
        for secret in self.hide:
            message = message.replace(secret, "<hidden>")
        body = _dumps({"error": message})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
