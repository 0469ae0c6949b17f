"""Hostile inputs II, distributed runs (issue 25): what a Ray cluster sends back to the driver, an address where
no cluster answers, and ART's first import where it never ran (torchrun's ranks, Ray workers on a new node).

The contract, as in tests/test_hostile_data.py: exit code 2, one line saying what was refused, no traceback, no
hang, nothing written outside --out, and nothing a hostile payload asks for done (its marker file absent).

A hostile cluster is played by a stand-in for robustcnn's task function (`on_ray._chain_task`), defined inside
a function so that Ray ships it by value: what a cluster run by someone else could run instead of robustcnn's
code. torchrun with a fresh HOME is tested by tests/test_distributed_train.py, whose every torchrun gets one.
Measured on 2 shared cores: the file takes 15-20 s. ART tests under a second, connection tests ~3 s (one waits
out a 1 s timeout), Ray tests the rest: a cluster start, the workers' first import of torch, then 0.1-3 s a sweep
(a hostile item is the task's last, so refusing it kills no worker that the next test would have to replace).
"""

from __future__ import annotations

import ast
import json
import os
import runpy
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.util import find_spec
from pathlib import Path

import pytest
from conftest import deadline
from user_models import write_nets

from robustcnn import art_setup
from robustcnn.cli import run_main
from robustcnn.sweep import __main__ as sweep_cli
from robustcnn.sweep import on_ray

PACKAGE = Path(__file__).resolve().parents[1] / "robustcnn"
FGSM_SUITE = '[[attack]]\nname = "fgsm"\ntype = "fgsm"\nnorm = "inf"\neps = [0.1]\n'
N = 8  # test images: the chain is one FGSM cell
HANG_SECONDS = 60  # a refusal takes about a second; only a connection attempt that waits on gets near this


# --- item 15: ART's first import -------------------------------------------------------------------------------
def _imports_art(statement: ast.stmt) -> bool:
    for node in ast.walk(statement):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "art":
            return True
        if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "art" for alias in node.names):
            return True
        dynamic = isinstance(node, ast.Call) and ast.unparse(node.func) == "importlib.import_module"
        if dynamic and any(text in ast.unparse(node.args[0]) for text in ("ART", "'art.")):  # e.g. ART_PGD_MODULE
            return True
    return False


def _art_imports(tree: ast.Module) -> Iterator[tuple[ast.stmt, list[ast.stmt]]]:
    """(a statement importing ART, the statements before it in its block) for each one in the module."""
    for block in (node.body for node in ast.walk(tree) if isinstance(getattr(node, "body", None), list)):
        for i, statement in enumerate(block):
            if not hasattr(statement, "body") and _imports_art(statement):
                yield statement, block[:i]


def test_every_art_import_in_robustcnn_comes_after_import_art():
    """ART's config file must be in place before ART is imported, wherever robustcnn imports it first."""
    found, unguarded = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "art_setup.py":
            continue
        for node, before in _art_imports(ast.parse(path.read_text(encoding="utf-8"))):
            found += 1
            if not any(ast.unparse(s) == "import_art()" for s in before):
                unguarded.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert found >= 10, "the scan must see robustcnn's ART imports"
    assert unguarded == [], "ART imported without import_art() first: " + ", ".join(unguarded)


@pytest.fixture
def fresh_home(tmp_path, monkeypatch) -> Path:
    """A home folder where ART never ran, as on a new cluster node or in a fresh container."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def _another_process_writes_the_config_meanwhile(monkeypatch) -> None:
    """Replays the race deterministically: when this process finds no config file, the other rank creates it
    at that moment (in place, as ART does), before this process looks again."""
    real = os.path.exists

    def exists(path) -> bool:
        found = real(path)
        if not found and str(path).endswith(os.path.join(".art", "config.json")):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf8") as f:
                f.write(json.dumps({"ART_DATA_PATH": os.path.join(os.path.dirname(path), "data")}, indent=4))
        return found

    monkeypatch.setattr(os.path, "exists", exists)


ART_CONFIG_PY = Path(find_spec("art").submodule_search_locations[0]) / "config.py"  # found, not imported


def test_arts_config_module_crashes_on_the_race_and_not_after_write_art_config(fresh_home, monkeypatch):
    _another_process_writes_the_config_meanwhile(monkeypatch)
    with pytest.raises(NameError, match="_config"):  # ART 1.20.1 alone: what one torchrun rank died of
        runpy.run_path(str(ART_CONFIG_PY))
    (fresh_home / ".art" / "config.json").unlink()
    art_setup.write_art_config()  # what import_art() does before `import art`
    config = runpy.run_path(str(ART_CONFIG_PY))
    assert config["ART_DATA_PATH"] == str(fresh_home / ".art" / "data")


def test_art_config_written_at_once_by_many_is_always_whole_and_a_users_own_is_kept(fresh_home):
    threads = [threading.Thread(target=art_setup.write_art_config) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    folder = fresh_home / ".art"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]  # no temp file left behind
    assert json.loads((folder / "config.json").read_text()) == {"ART_DATA_PATH": str(folder / "data")}
    (folder / "config.json").write_text('{"ART_DATA_PATH": "/data/art"}')
    art_setup.write_art_config()
    assert json.loads((folder / "config.json").read_text()) == {"ART_DATA_PATH": "/data/art"}


# --- running the sweep as `python -m robustcnn.sweep` does ----------------------------------------------------------
@pytest.fixture(scope="module")
def sweep_args(tmp_path_factory) -> list[str]:
    """A user's untrained model file, one FGSM cell on 8 images: the smallest sweep that starts one Ray task."""
    root = tmp_path_factory.mktemp("hostile-distributed")
    suite = root / "suite.toml"
    suite.write_text(FGSM_SUITE)
    nets = write_nets(root / "user")
    return [f"{nets}:smallcnn", "--dataset", "mnist5k", "--suite", str(suite), "--n", str(N), "--probe", "0"]


def files_outside(root: Path, out: Path) -> set[Path]:
    return {p for p in root.rglob("*") if out not in p.parents and p != out}


def sweep_refused(args: list[str], root: Path, capsys) -> str:
    """Runs the sweep into root/out; asserts the contract; returns the one error line."""
    out = root / "out"
    before = files_outside(root, out)
    with deadline(HANG_SECONDS):
        code = run_main(sweep_cli.main, [*args, "--out", str(out), "--no-report"], name="robustcnn.sweep")
    err = capsys.readouterr().err
    errors = [line for line in err.strip().splitlines() if line.startswith("robustcnn.sweep:")]
    assert code == 2 and len(errors) == 1 and err.strip().endswith(errors[0]), err
    assert "Traceback" not in err, err
    assert files_outside(root, out) == before  # nothing written outside --out
    return errors[0]


# --- item 4: an address where no cluster answers -----------------------------------------------------------------
@pytest.fixture
def no_cluster_yet(monkeypatch):
    """As in a fresh process: not connected, whatever an earlier test of this process did."""
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")


@contextmanager
def listener(answer: bytes | None) -> Iterator[int]:
    """A local port that accepts connections and then says `answer` (None: nothing, ever)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def serve():
        with server:
            while True:
                try:
                    connection, _ = server.accept()
                except OSError:
                    return
                with connection:
                    connection.recv(1024)  # what the client says first, then the answer
                    connection.sendall(answer)

    if answer is not None:
        threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        ("refused", "Connection refused"),  # the issue's `--ray 127.0.0.1:1`: before, no answer after 150 s
        ("silent", "no answer within 1 s; ROBUSTCNN_RAY_CONNECT_TIMEOUT sets the wait"),
        ("http", "something answers, but not a Ray cluster's gRPC server"),
    ],
)
def test_an_address_without_a_ray_cluster_is_one_line_within_the_timeout(
    sweep_args, no_cluster_yet, tmp_path, capsys, monkeypatch, where, reason
):
    monkeypatch.setenv("ROBUSTCNN_RAY_CONNECT_TIMEOUT", "1")  # the name users set
    answers = {"refused": None, "silent": None, "http": b"HTTP/1.1 400 Bad Request\r\n\r\n"}
    with listener(answers[where]) as port:
        address = "127.0.0.1:1" if where == "refused" else f"127.0.0.1:{port}"
        line = sweep_refused([*sweep_args, "--ray", address], tmp_path, capsys)
    assert line == (
        f"robustcnn.sweep: error: --ray {address}: no Ray cluster there ({reason}); start one with `ray start --head`, "
        "give its ADDRESS (host:port), or use --ray local"
    )
    assert not (tmp_path / "out").exists()


def test_ray_client_addresses_are_refused_before_connecting(sweep_args, no_cluster_yet, tmp_path, capsys):
    line = sweep_refused([*sweep_args, "--ray", "ray://127.0.0.1:10001"], tmp_path, capsys)
    assert "Ray Client (ray://) cannot run the sweep's streaming tasks, and it unpickles whatever" in line
    assert not (tmp_path / "out").exists()


# --- item 3: what the cluster sends back --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local cluster whose workers have a home folder where ART never ran (a new node)."""
    import ray

    home = tmp_path_factory.mktemp("worker-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.setenv("RAY_AUTH_MODE", "disabled")  # Ray 2.60 writes ~/.ray/auth_token otherwise
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        yield home
        ray.shutdown()


def pickled_object_task(marker: str):
    """Yields a Python object whose unpickling creates `marker`: what `ray.get` on the driver would run."""

    class Payload:
        def __reduce__(self):
            return (open, (marker, "w"))

    def task(*args):
        yield Payload()

    return task


def raises_after_its_last_item_task(marker: str):
    """robustcnn's own task, then an exception whose unpickling creates `marker`: Ray's driver unpickles an error
    nobody read, to report it, when its ref goes."""

    def task(*args):
        from robustcnn.sweep import on_ray

        class Payload(Exception):
            def __reduce__(self):
                return (open, (marker, "w"))

        for data in list(on_ray._chain_task(*args)):  # noqa: UP028 - Ray calls send(), which yield from passes on
            yield data
        raise Payload("unpickled on the driver")

    return task


def old_format_task(key: str):
    """What robustcnn's task used to yield, a pickled (attack, kind, key, Cell), here with a key that is a path."""

    def task(payload, names, *args):
        import numpy as np

        from robustcnn.sweep.store import Cell

        yield names[0], "attack", key, Cell([{"eps": 0.1, "n": 8, "seconds": 0.0}], np.ones((1, 8), bool), {})

    return task


def tampered_task(change: str):
    """robustcnn's own task with an item changed as a cluster run by someone else could change it. The changed
    item is the task's last, so the task has ended when the driver refuses it: no worker is killed (a new one
    costs the next test ~5 s of imports)."""

    def task(*args):
        from robustcnn.sweep import on_ray

        for data in list(on_ray._chain_task(*args)):  # the real chain: one FGSM cell, then where it ran
            header, arrays = on_ray._unpack(data)
            if header["item"] == "cell" and change not in ("node", "backoffs", "halved"):  # those change the last
                if change.startswith("key="):
                    header["key"] = change.removeprefix("key=")
                elif change == "flags":
                    arrays["flags"] = arrays["flags"][:, :-1]
                elif change == "eps":
                    header["rows"][0]["eps"] = 0.5
                elif change == "twice":
                    yield data
                yield on_ray._pack(header, arrays)
                return
            if header["item"] == "task" and change == "node":
                header["node"] = "\x1b]0;owned\x07"  # a terminal escape, for whoever prints the manifest
            elif header["item"] == "task" and change != "halved":
                header["batch_backoffs"] = [{"from": 128, "to": 64, "where": "fgsm", "rm -rf": 1}]
            elif header["item"] == "task":  # what a task that ran out of GPU memory says (from 128 to 64)
                header["batch_backoffs"] = [{"from": 128, "to": 64, "where": "fgsm eps=0.1"}]
            yield on_ray._pack(header, arrays)

    return task


def test_a_pickled_object_from_a_task_is_never_unpickled(sweep_args, ray_cluster, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "unpickled"
    monkeypatch.setattr(on_ray, "_chain_task", pickled_object_task(str(marker)))
    line = sweep_refused([*sweep_args, "--ray"], tmp_path, capsys)
    assert "sent a Python object, not plain bytes (Ray metadata b'PYTHON'; not unpickled)" in line
    assert not marker.exists()


def test_an_exception_after_the_last_item_is_read_unpickled(sweep_args, ray_cluster, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "unpickled"
    monkeypatch.setattr(on_ray, "_chain_task", raises_after_its_last_item_task(str(marker)))
    line = sweep_refused([*sweep_args, "--ray"], tmp_path, capsys)
    assert "sent 1 item(s) after its last one" in line
    assert not marker.exists()


def test_a_cell_key_that_is_a_path_writes_nothing_outside_out(sweep_args, ray_cluster, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(on_ray, "_chain_task", old_format_task("../../escaped"))  # before: wrote root/escaped.npz
    line = sweep_refused([*sweep_args, "--ray"], tmp_path, capsys)
    assert "sent a Python object, not plain bytes" in line
    assert len(list((tmp_path / "out" / "cells").glob("*.npz"))) == 1  # the clean cell, computed here


@pytest.mark.parametrize(
    ("change", "said"),
    [
        ("key=../../escaped", "sent a cell its plan does not ask for (key '../../escaped')"),
        ("key=" + "0" * 24, "sent a cell its plan does not ask for (key '000000000000000000000000')"),
        ("twice", "sent again a cell its plan does not ask for"),
        ("flags", f"sent a cell that is not what its plan says: flags of shape (1, {N - 1})"),
        ("eps", "sent a cell that is not what its plan says: a row has eps 0.5, the plan has 0.1"),
        ("node", "said where it ran in values that are not plain node, GPU and device names"),
        ("backoffs", "said how its batches were halved in values robustcnn does not read"),
    ],
)
def test_only_the_planned_cells_as_plain_numbers_are_taken_from_a_task(
    sweep_args, ray_cluster, tmp_path, capsys, monkeypatch, change, said
):
    monkeypatch.setattr(on_ray, "_chain_task", tampered_task(change))
    line = sweep_refused([*sweep_args, "--ray"], tmp_path, capsys)
    assert line.startswith("robustcnn.sweep: error: --ray auto: the task running fgsm on ") and said in line, line
    assert "is the cluster running robustcnn" in line
    cells = {p.stem for p in (tmp_path / "out" / "cells").glob("*.npz")}
    assert len(cells) <= 2 and all(len(key) == 24 for key in cells)  # the clean cell, and a good one taken first
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["status"] == "failed" and manifest.get("ray_tasks", []) == []


def test_a_tasks_halved_batches_reach_the_drivers_manifest(sweep_args, ray_cluster, tmp_path, monkeypatch):
    """A task that ran out of GPU memory halves its own batches; the driver records that in its manifest."""
    monkeypatch.setattr(on_ray, "_chain_task", tampered_task("halved"))
    code = run_main(sweep_cli.main, [*sweep_args, "--out", str(tmp_path / "out"), "--no-report", "--ray"])
    assert code == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (backoff,) = manifest["models"][0]["batch_backoffs"]
    node = manifest["ray_tasks"][0]["node"]
    assert backoff == {"from": 128, "to": 64, "where": f"fgsm eps=0.1 (Ray task on node {node})"}


def test_the_real_task_passes_and_its_workers_imported_art_in_a_fresh_home(sweep_args, ray_cluster, tmp_path):
    import ray

    code = run_main(sweep_cli.main, [*sweep_args, "--out", str(tmp_path / "out"), "--no-report", "--ray"])
    assert code == 0
    tasks = json.loads((tmp_path / "out" / "manifest.json").read_text())["ray_tasks"]
    assert [(t["attacks"], t["device"], t["gpu_ids"]) for t in tasks] == [(["fgsm"], "cpu", [])]
    assert json.loads((ray_cluster / ".art" / "config.json").read_text())["ART_DATA_PATH"].startswith(str(ray_cluster))
    host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    on_ray._check_answers("auto", host, int(port), 5)  # a Ray GCS passes the check before ray.init
