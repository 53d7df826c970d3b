"""Every code block of README.md, docs/tutorial.md, docs/precision.md, docs/scale.md and docs/howto/*.md
is executed here.

Each document runs as a reader would run it: top to bottom, in one fresh folder, in one Python
process (``python`` blocks share their variables, like one interactive session; ``bash`` blocks run
with ``bash -euo pipefail`` in the same folder). An HTML comment right above a block changes how it
runs::

    <!-- doctest: run -->                  the default: run it
    <!-- doctest: file NAME -->            write the block's text to NAME (a YAML spec, a module)
    <!-- doctest: background ... -->       start it (a server), wait until /v2/health/ready answers on
                                           the --port it names; stopped (SIGTERM) when the document ends
    <!-- doctest: make-dry-run ... -->     each `make TARGET` line: `make -n TARGET` in the repository
                                           (the real `make demo` command is run by tests/demo; `make
                                           test` is this suite)
    <!-- doctest: gpu -->                  run only where onnxruntime offers CUDA (the GPU check)

Modules written with ``doctest: file`` are importable (the folder is on ``sys.path``, as in an
interactive session started there). Ports 8000/8001 in a document are replaced by free ports, so
a run never meets another server.
This file is also the runner: ``python tests/test_readme.py DOC`` (from the folder to run in).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parent.parent
DOCS = [
    REPO / "README.md",
    REPO / "docs" / "tutorial.md",
    REPO / "docs" / "precision.md",
    REPO / "docs" / "scale.md",
    *sorted((REPO / "docs" / "howto").glob("*.md")),
]
MARKERS = ("run", "file", "background", "make-dry-run", "gpu")
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*doctest:\s*([\w-]+)\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its language, text, doctest marker (and argument) and first line."""

    lang: str
    code: str
    marker: str
    arg: str
    line: int


def parse_blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, with the doctest marker right above each."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start = i
        i += 1
        body = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = _MARKER.match(prev.strip())
        name, arg = (marker.group(1), marker.group(2)) if marker else ("run", "")
        blocks.append(Block(fence.group(1), "\n".join(body) + "\n", name, arg, start + 1))
        i += 1
    return blocks


# --------------------------------------------------------------------------------------- runner
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"background block exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"nothing ready on port {port} after {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _has_cuda() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _make_dry_run(code: str) -> None:
    for line in code.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] == ["make"]:
            subprocess.run(["make", "-n", *words[1:]], cwd=REPO, check=True)


def run_document(doc: Path) -> None:
    """Run every block of ``doc`` in the current folder (see the module docstring)."""
    ports = {"8000": str(_free_port()), "8001": str(_free_port())}
    sys.path.insert(0, str(Path.cwd()))  # like an interactive session started in this folder
    namespace: dict[str, object] = {"__name__": "__main__"}
    background: list[subprocess.Popen[bytes]] = []
    logs: list[IO[bytes]] = []
    try:
        for block in parse_blocks(doc.read_text(encoding="utf-8")):
            code = re.sub(r"\b(8000|8001)\b", lambda m: ports[m.group(1)], block.code)
            where = f"{doc.name}:{block.line}"
            print(f"--- {where} [{block.lang} {block.marker}]", flush=True)
            started = time.perf_counter()
            if block.marker == "file":
                Path(block.arg).write_text(code, encoding="utf-8")
            elif block.marker == "make-dry-run":
                _make_dry_run(code)
            elif block.marker == "background":
                # the server logs to a file of its own: on our stdout its lines could split the
                # block headers and status lines that the parent test reads
                log = Path(f"background-{len(background)}.log").open("wb")  # noqa: SIM115
                logs.append(log)
                background.append(
                    subprocess.Popen(
                        ["bash", "-c", "exec " + code.strip()],
                        start_new_session=True,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
                _wait_ready(int(re.search(r"--port (\d+)", code).group(1)), background[-1])  # type: ignore[union-attr]
            elif block.marker == "gpu" and not _has_cuda():
                print("    skipped: no CUDA here", flush=True)
                continue
            elif block.lang == "python":
                exec(compile(code, where, "exec"), namespace)
            elif block.lang == "bash":
                subprocess.run(["bash", "-euo", "pipefail", "-c", code], check=True)
            else:
                raise ValueError(f"{where}: cannot run a {block.lang!r} block (mark it: doctest: file NAME)")
            print(f"    ok in {time.perf_counter() - started:.1f} s", flush=True)
    finally:
        for proc in background:
            _stop(proc)
        for log in logs:  # what the servers said, for a failing run's report
            log.close()
            sys.stderr.write(Path(log.name).read_text(encoding="utf-8", errors="replace")[-4000:])


if __name__ == "__main__":
    run_document(Path(sys.argv[1]))
    sys.exit(0)


# ---------------------------------------------------------------------------------------- tests
import pytest  # noqa: E402  (the runner above needs no pytest)


def _doc_id(doc: Path) -> str:
    return str(doc.relative_to(REPO))


def test_every_block_is_runnable_as_marked() -> None:
    for doc in DOCS:
        blocks = parse_blocks(doc.read_text(encoding="utf-8"))
        assert blocks, f"{_doc_id(doc)} has no code block"
        for b in blocks:
            where = f"{_doc_id(doc)}:{b.line}"
            assert b.marker in MARKERS, f"{where}: unknown doctest marker {b.marker!r}"
            if b.marker == "file":
                assert b.arg, f"{where}: 'doctest: file' needs a file name"
            else:
                assert b.lang in ("python", "bash"), f"{where}: a {b.lang!r} block needs 'doctest: file NAME'"


def test_links_resolve() -> None:
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    for doc in DOCS:
        for target in link.findall(doc.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            assert (doc.parent / target).exists(), f"{_doc_id(doc)} links to a missing {target}"


def test_make_targets_run_the_documented_commands() -> None:
    demo = subprocess.run(["make", "-n", "demo"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    test = subprocess.run(["make", "-n", "test"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "-m onnxstitch demo --out demo-out" in demo
    assert "-m pytest" in test
    if not (REPO / ".install.stamp").exists():  # a fresh checkout: the CPU torch pin comes first
        assert demo.index("torch==2.13.0") < demo.index("-e '.[dev]'") < demo.index("onnxstitch demo")


_RUNS: dict[Path, subprocess.CompletedProcess[str]] = {}
_HEADER = re.compile(r"^--- (\S+) \[\w* ([\w-]+)\]$")
_STATUS = re.compile(r"    (ok) in [\d.]+ s$|    (skipped): no CUDA here$")
GPU_DOCS = [d for d in DOCS if any(b.marker == "gpu" for b in parse_blocks(d.read_text(encoding="utf-8")))]


def _document_run(doc: Path, folder: Path) -> subprocess.CompletedProcess[str]:
    """Run ``doc`` once per session (the GPU test reads the same run)."""
    if doc not in _RUNS:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        _RUNS[doc] = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), str(doc)],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
    return _RUNS[doc]


def block_outcomes(stdout: str) -> dict[str, tuple[str, str]]:
    """``{doc:line: (marker, "ok" | "skipped")}`` from the runner's output (a block's own output
    lies between its header line and its status line)."""
    outcomes: dict[str, tuple[str, str]] = {}
    current: tuple[str, str] | None = None
    for line in stdout.splitlines():
        if header := _HEADER.match(line):
            current = (header.group(1), header.group(2))
        elif current and (status := _STATUS.search(line)):  # a block's output may lack its last newline
            outcomes[current[0]] = (current[1], status.group(1) or status.group(2))
            current = None
    return outcomes


def outcome_problems(doc: Path, stdout: str, *, cuda: bool) -> list[str]:
    """What is wrong with a run of ``doc``: a block that did not run, or a gpu block that ran
    (or was skipped) against what this machine offers. Skipped gpu blocks never count as run."""
    outcomes = block_outcomes(stdout)
    problems = []
    for block in parse_blocks(doc.read_text(encoding="utf-8")):
        where = f"{doc.name}:{block.line}"
        marker, outcome = outcomes.get(where, (block.marker, "missing"))
        wanted = "skipped" if block.marker == "gpu" and not cuda else "ok"
        if outcome != wanted:
            problems.append(f"{where} ({marker}): {outcome}, expected {wanted} (CUDA here: {cuda})")
    return problems


@pytest.mark.slow
@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_document_runs(doc: Path, tmp_path: Path) -> None:
    proc = _document_run(doc, tmp_path)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    # gpu blocks skipped for want of CUDA are reported by test_gpu_blocks_run as skips
    assert outcome_problems(doc, proc.stdout, cuda=_has_cuda()) == []


def test_a_skipped_gpu_block_does_not_count_as_run() -> None:
    doc = next(iter(GPU_DOCS))
    blocks = parse_blocks(doc.read_text(encoding="utf-8"))
    skipped = "".join(
        f"--- {doc.name}:{b.line} [{b.lang} {b.marker}]\nprinted output\n"
        + ("    skipped: no CUDA here\n" if b.marker == "gpu" else "no newline at the end    ok in 0.1 s\n")
        for b in blocks
    )
    assert outcome_problems(doc, skipped, cuda=False) == []
    problems = outcome_problems(doc, skipped, cuda=True)
    assert len(problems) == sum(b.marker == "gpu" for b in blocks) > 0
    truncated = skipped.rsplit("---", 1)[0]  # the last block never reported
    assert any("missing" in p for p in outcome_problems(doc, truncated, cuda=False))


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.parametrize("doc", GPU_DOCS, ids=_doc_id)
def test_gpu_blocks_run(doc: Path, tmp_path: Path) -> None:
    gpu = [b for b in parse_blocks(doc.read_text(encoding="utf-8")) if b.marker == "gpu"]
    if not _has_cuda():
        pytest.skip(f"{len(gpu)} gpu block(s) of {_doc_id(doc)} not run: onnxruntime offers no CUDA here")
    proc = _document_run(doc, tmp_path)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    outcomes = block_outcomes(proc.stdout)
    assert [outcomes.get(f"{doc.name}:{b.line}") for b in gpu] == [("gpu", "ok")] * len(gpu)
