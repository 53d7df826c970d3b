"""ox.score(engine="ray"): a real local Ray (2 CPUs, started for these tests and shut down after)
gives the same outputs, in the same order, as the local engine and one Session.run on the data,
and listens on the loopback interface only.

Ray takes seconds to start: one test lets ox.score start (and stop) its own Ray, the others share
one module-scoped Ray, started as ox.score starts its own (``_start``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from scoredata import make_data, pa, pq, table_of, tensor, write_folder

import onnxstitch as ox
from onnxstitch.errors import DatasetError

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

Sockets = Callable[[], dict[int, set[tuple[str, int]]]]  # listening (address, port), by process id


def _same(out: Any, data: dict[str, np.ndarray[Any, Any]], expected: dict[str, Any]) -> None:
    assert out.column_names == ["id", "y", "pooled", "act", "k2"]
    np.testing.assert_array_equal(out["id"].to_numpy(), data["id"])
    for name in ("y", "pooled", "act", "k2"):
        np.testing.assert_array_equal(tensor(out[name]), expected[name])


def test_ray_engine_starts_and_stops_its_own_local_ray(model: onnx.ModelProto, tmp_path: Path) -> None:
    assert not ray.is_initialized()
    environ = dict(os.environ)
    data = make_data(200)
    onnx.save(model, tmp_path / "m.onnx")  # a path: the actors open the file
    pq.write_table(table_of(data), tmp_path / "d.parquet", row_group_size=50)
    result = ox.score(
        tmp_path / "m.onnx", tmp_path / "d.parquet", output=tmp_path / "out.parquet", engine="ray", num_cpus=2
    )
    assert not ray.is_initialized()  # shut down again
    assert dict(os.environ) == environ  # what ray.init set in this process is put back
    assert result.rows == 200 and result.output.is_file()
    # starting (and stopping) Ray is set-up; the rate counts the scoring only
    assert result.setup_seconds > 0 and result.score_seconds > 0
    assert result.setup_seconds + result.score_seconds == pytest.approx(result.seconds)
    _same(
        pq.read_table(tmp_path / "out.parquet"),
        data,
        ox.Session(model).run({k: data[k] for k in ("x", "img", "k")}),
    )
    assert {p.name for p in tmp_path.iterdir()} == {"m.onnx", "d.parquet", "out.parquet"}


def _listening(process: Any) -> set[tuple[str, int]]:
    """(address, port) of each TCP socket ``process`` listens on."""
    import psutil

    return {
        (c.laddr.ip, c.laddr.port)
        for c in process.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN
    }


@pytest.fixture(scope="module")
def local_ray() -> Iterator[Sockets]:
    """The local Ray ox.score starts (``_start``), shared; yields the listening TCP sockets it
    opened, by process: this process's new ones (its core worker) and its new child processes'."""
    import psutil

    from onnxstitch.runtime.scoring._ray import _start

    me = psutil.Process()
    own, children = _listening(me), {p.pid for p in me.children(recursive=True)}
    enable_ray_cluster = ray._private.ray_constants.ENABLE_RAY_CLUSTER
    assert _start(None, num_cpus=2)
    assert enable_ray_cluster == ray._private.ray_constants.ENABLE_RAY_CLUSTER  # put back

    def sockets() -> dict[int, set[tuple[str, int]]]:
        found = {me.pid: _listening(me) - own}
        for p in me.children(recursive=True):
            if p.pid not in children:
                with contextlib.suppress(psutil.NoSuchProcess):
                    found[p.pid] = _listening(p)
        return found

    yield sockets
    ray.shutdown()


def test_ray_two_actors_same_order_as_local_and_session(
    model: onnx.ModelProto, tmp_path: Path, local_ray: Sockets
) -> None:
    data = make_data(1200, seed=1)
    src = write_folder(table_of(data, "nested"), tmp_path / "src", files=4, row_group_size=100)
    local = ox.score(model, src, output=tmp_path / "local.parquet", batch_size=64)
    (tmp_path / "out.parquet").write_bytes(b"old")  # replaced once the new one is complete
    result = ox.score(model, src, output=tmp_path / "out.parquet", engine="ray", actors=2, batch_size=64)
    assert ray.is_initialized()  # a Ray it did not start is left running
    assert result.rows == local.rows == 1200 and result.columns == local.columns
    assert {p.name for p in tmp_path.iterdir()} == {"src", "local.parquet", "out.parquet"}
    from_ray = pq.read_table(tmp_path / "out.parquet")
    assert from_ray.equals(pq.read_table(tmp_path / "local.parquet"))
    _same(from_ray, data, ox.Session(model).run({k: data[k] for k in ("x", "img", "k")}))


def test_ray_row_failure_names_its_id(
    lookup_model: onnx.ModelProto, tmp_path: Path, local_ray: Sockets
) -> None:
    idx = np.arange(80) % 5
    idx[61] = 7
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(80)], "idx": idx}), tmp_path / "d.parquet")
    with pytest.raises(DatasetError) as info:
        ox.score(
            lookup_model, tmp_path / "d.parquet", output=tmp_path / "out.parquet", engine="ray", batch_size=16
        )
    assert info.value.row is not None and info.value.row.startswith("key='k61'")
    assert {p.name for p in tmp_path.iterdir()} == {"d.parquet"}


def test_local_ray_listens_on_loopback_only(local_ray: Sockets) -> None:
    # GCS, raylet (node and object manager), autoscaler monitor, runtime env agent, the driver's
    # and every worker's gRPC server; an actor is alive so its worker counts too
    @ray.remote(num_cpus=0)
    class Alive:
        def pid(self) -> int:
            return os.getpid()

    actor = Alive.remote()
    pid = ray.get(actor.pid.remote())
    sockets = local_ray()
    assert sockets.get(pid)  # the actor's worker listens (on loopback)
    assert len([p for p, s in sockets.items() if s]) >= 4  # driver, GCS, raylet, worker at least
    public = {
        (p, ip, port)
        for p, found in sockets.items()
        for ip, port in found
        if not ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback
    }
    assert not public, f"Ray processes listening beyond loopback (pid, address, port): {public}"
    ray.kill(actor)
