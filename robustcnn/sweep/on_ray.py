"""Sweeps on Ray (`--ray`): each chain of cells (chains.py) is a Ray task; the driver writes each cell as it returns.

How models and data reach the workers: through Ray's object store, never files. The driver loads every
model as a sweep without Ray does (on its CPU), then puts each module with its n test images (and the
patch's training images) in the object store once; a task rebuilds the ART wrapper on its own device.
Workers need robustcnn installed with the same library versions (checked: the cells' keys include
them), but no shared filesystem, dataset files or checkpoints. Only the driver writes into --out.

A task is a generator: cells stream back one by one and are on disk before the next arrives, so a worker
that dies loses only its cell in flight. The driver then runs the chain again, handing over the cells it
already has (they are not recomputed), up to MAX_ATTEMPTS times.

What the driver takes back, and how. Every item a task yields is `bytes` (`_pack`: safetensors arrays and a
JSON header: a cell's key, rows and flags; where the task ran; or its error as text), which Ray stores as they
are. The driver reads each item's raw bytes and Ray's type tag for them (`_next_item`): bytes are decoded as
plain arrays and numbers, an error Ray recorded is told apart by its type number, and anything else, such as
a pickled object where bytes belong, is refused unread: `ray.get` would unpickle it. A cell is accepted only
if its key is one the driver's own plan has for that chain and not yet received (`_plans`, computed here,
never taken from the task), with the rows, flags and arrays the plan expects; only then is it written, under
--out/cells/KEY.npz. What a task sends after its last item is read the same way (`_drain`): Ray unpickles an
error nobody read, to report it, when its ref goes. Ray still unpickles where robustcnn does not reach (Ray
Client, refused here; an error left past DRAIN_SECONDS), and the driver's machine is a node of the cluster:
README's "What --ray trusts" says what that means.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays  # returns bytes; writes no file

from robustcnn.cell_file import NUMBERS, BadCell, Cell, Expected
from robustcnn.console import say
from robustcnn.devices import resolve_device
from robustcnn.errors import RunFailed, UsageError, last_line
from robustcnn.fileio import library_versions
from robustcnn.results import RowKind
from robustcnn.sweep.chains import Chain, ChainRunner, Done
from robustcnn.sweep.config import SweepConfig
from robustcnn.sweep.store import MemoryStore
from robustcnn.sweep.subjects import Judging, Subject, attack_target, for_attacks
from robustcnn.sweep.suite import AttackSpec, Suite

RAY_EXTRA = "pip install 'robustcnn[ray]'"
MAX_ATTEMPTS = 3  # runs of one chain; only a lost worker or node counts, an error in robustcnn's code stops the sweep
TASK_INFO = "task"  # the last item a task yields: where it ran
CONNECT_TIMEOUT_S = 30.0  # for --ray ADDRESS to answer at all; Ray alone retries a silent address for many minutes
CONNECT_TIMEOUT_ENV = "ROBUSTCNN_RAY_CONNECT_TIMEOUT"  # seconds, overrides CONNECT_TIMEOUT_S (a slow link)
MAX_ITEM_BYTES = 64 << 20  # one streamed item: a cell's flags, 100 rows of 100k examples, take 10 MB
MAX_MESSAGE = 500  # characters of a task's error message shown
MAX_BACKOFFS = 64  # batch halvings a task may report (from 2^20 images to 1 takes 20: each halving lasts)
DRAIN_SECONDS = 10.0  # wait for the rest of a stream that has said its last (a task ends right after its last item)
MAX_EXTRA = 16  # items read after a task's last one before giving up on the rest
# The HTTP/2 client preface and an empty SETTINGS frame: a Ray GCS (gRPC) answers with its SETTINGS frame at once.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
SETTINGS_FRAME = 4
PLAIN = re.compile(r"[\w.:-]{0,128}", re.ASCII)  # node ids, GPU ids and device names a task reports


def require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError(f"--ray needs Ray, which is not installed here: {RAY_EXTRA}") from None


@dataclass
class Payload:
    """What a task needs of a model besides its chain: put in the object store once per model."""

    subject: Subject  # without its ART wrapper (rebuilt on the task's device)
    handed: dict[tuple[str, str], Any]  # (model id, attack name) -> its kind's `ray_payload` (the patch's images)
    judged: Judging  # what the driver's model checks found, and the passes that judge a prediction


# --- connecting ---------------------------------------------------------------------------------
@contextlib.contextmanager
def ray_session(config: SweepConfig) -> Iterator[None]:
    """Connected to the cluster --ray names (`local`: one started here) for the block; disconnects when it
    connected. Already connected (a notebook, a test): that cluster is used as it is."""
    import ray

    if ray.is_initialized():
        yield
        return
    if config.ray == "local":
        ray.init(include_dashboard=False, configure_logging=False)
    else:
        _connect(config.ray)
    try:
        yield
    finally:
        ray.shutdown()


def _connect(address: str) -> None:
    """ray.init(address), once something that speaks HTTP/2, as a Ray GCS does, answers there within the connect
    timeout (`ray.init` alone retries an address where nothing answers for many minutes)."""
    import ray

    timeout = connect_timeout()
    where = _host_port(address)
    if where is not None:
        _check_answers(address, *where, timeout)
    try:
        ray.init(address=address, configure_logging=False)
    except ConnectionError as error:
        raise _no_cluster(address, last_line(error)) from None


def connect_timeout() -> float:
    text = os.environ.get(CONNECT_TIMEOUT_ENV)
    if text is None:
        return CONNECT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise UsageError(f"{CONNECT_TIMEOUT_ENV}={text!r} is not allowed: give seconds, a number above 0")
    return seconds


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of --ray ADDRESS, or of the cluster `auto` finds; None when auto finds none (ray.init says so)."""
    client = address if address != "auto" else os.environ.get("RAY_ADDRESS", "")
    if client.startswith("ray://"):
        given = address if address == client else f"auto (RAY_ADDRESS={client})"
        raise UsageError(
            f"--ray {given}: Ray Client (ray://) cannot run the sweep's streaming tasks, and it unpickles whatever "
            "its server sends; run the sweep on a node of the cluster with --ray HOST:PORT (the address `ray start "
            "--head` prints) or --ray auto"
        )
    if address == "auto":
        with contextlib.suppress(Exception):  # Ray's own lookup (RAY_ADDRESS, the cluster `ray start` left): internal
            from ray._private.services import canonicalize_bootstrap_address

            address = canonicalize_bootstrap_address("auto") or "auto"
        if address == "auto":
            return None
    host, colon, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")  # [::1]:6379
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(
            f"--ray {address!r} is not allowed: give the cluster's address as HOST:PORT (e.g. 10.0.0.5:6379, what "
            "`ray start --head` prints), auto or local"
        )
    return host, int(port)


def _check_answers(address: str, host: str, port: int, timeout: float) -> None:
    """Refuses an address where nothing answers, or something that is not an HTTP/2 (gRPC) server such as a Ray
    GCS, within `timeout` seconds. With RAY_USE_TLS the server expects TLS first: only the connection is checked."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as connection:
            if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
                return
            connection.sendall(HTTP2_PREFACE)
            frame = b""
            while len(frame) < 9 and (more := connection.recv(9 - len(frame))):  # header: length, type, flags, stream
                frame += more
    except TimeoutError:
        raise _no_cluster(address, f"no answer within {timeout:g} s; {CONNECT_TIMEOUT_ENV} sets the wait") from None
    except OSError as error:
        raise _no_cluster(address, error.strerror or type(error).__name__) from None
    if len(frame) < 4 or frame[3] != SETTINGS_FRAME:
        raise _no_cluster(address, "something answers, but not a Ray cluster's gRPC server")


def _no_cluster(address: str, reason: str) -> UsageError:
    return UsageError(
        f"--ray {address}: no Ray cluster there ({reason}); start one with `ray start --head`, give its ADDRESS "
        "(host:port), or use --ray local"
    )


# --- the driver's side ----------------------------------------------------------------------------
def run_on_ray(sweep, chains: list[Chain]) -> None:
    """Runs the chains that are not finished yet as Ray tasks; every cell is saved and recorded in `sweep`."""
    todo = [chain for chain in chains if not sweep.finished(chain)]  # resume: finished chains start no task
    if not todo:
        return
    tasks = None
    try:
        tasks = _Tasks(sweep, todo)
        tasks.drive()
    except KeyboardInterrupt:
        if tasks is not None:
            tasks.cancel()
        raise


class _BadItem(Exception):
    """Something a task sent that robustcnn does not take; the message says what (it was not used)."""


@dataclass(frozen=True)
class _Lost:
    """Ray recorded the task's worker or node as lost (its name for what happened, e.g. WORKER_DIED)."""

    reason: str


@dataclass(frozen=True)
class _Planned:
    spec: AttackSpec
    row_kind: RowKind  # what its rows are: attack, probe, certified or smoothed
    expected: Expected


class _Tasks:
    """The driver's side: submits chains, saves cells as they stream back, resubmits chains of lost workers."""

    def __init__(self, sweep, chains: list[Chain]):
        import ray

        _check_ray_internals()
        self.sweep, self.config = sweep, sweep.config
        subjects = {chain.subject.id: chain.subject for chain in chains}
        self.payloads = {name: ray.put(self._payload(subject)) for name, subject in subjects.items()}
        self.remote = ray.remote(_chain_task).options(
            num_cpus=self.config.cpus_per_task,
            num_gpus=self.config.gpus_per_task,
            max_retries=0,
            num_returns="streaming",
        )
        self.plans = _plans(sweep, chains)  # chain index -> cell key -> what the cell is
        self.pending: dict[int, set[str]] = {}  # chain index -> keys of its cells the running task still owes
        self.attempts: dict[int, int] = {}
        self.active: dict[Any, Chain] = {}  # the task's generator -> its chain
        if sweep.manifest.ray_tasks is None:
            sweep.manifest.ray_tasks = []
        self.where: list[dict[str, Any]] = sweep.manifest.ray_tasks
        for chain in chains:
            self._submit(chain)

    def _payload(self, subject: Subject) -> Payload:
        handed = {}
        for spec in self.sweep.suite.attacks:
            data = spec.kind.ray_payload(self.sweep, subject, spec)
            if data is not None:
                handed[subject.id, spec.name] = data
        judged = Judging(subject.target.findings, subject.target.draws)
        return Payload(dataclasses.replace(subject, target=None, checks=[]), handed, judged)

    def _submit(self, chain: Chain) -> None:
        self.attempts[chain.index] = self.attempts.get(chain.index, 0) + 1
        mine = set(chain.names)
        known = {d.key: d.cell for d in self.sweep.done[chain.subject.id] if d.spec is None or d.spec.name in mine}
        self.pending[chain.index] = set(self.plans[chain.index]) - set(known)
        subject = chain.subject
        generator = self.remote.remote(
            self.payloads[subject.id], chain.names, known, self.config, self.sweep.suite,
            self.sweep.grids[subject.id], self.sweep.versions,
        )  # fmt: skip
        self.active[generator] = chain

    def drive(self) -> None:
        import ray

        while self.active:
            ready, _ = ray.wait(list(self.active), num_returns=1)
            generator = ready[0]
            chain = self.active[generator]
            try:
                item = _next_item(generator)
                if isinstance(item, _Lost):
                    del self.active[generator]
                    self._retry(chain, item.reason)
                elif self._receive(chain, item):
                    del self.active[generator]
                    if extra := _drain(generator, time.monotonic() + DRAIN_SECONDS):
                        raise _BadItem(f"sent {extra} item(s) after its last one")
            except _BadItem as error:
                self.cancel()
                raise UsageError(
                    f"--ray {self.config.ray}: the task running {self._what(chain)} {error}; robustcnn takes from a "
                    "task only the cells it planned, as plain numbers, and used none of this: is the cluster running "
                    f"robustcnn {self.sweep.versions.get('robustcnn')}?"
                ) from None
            except (UsageError, RunFailed):
                self.cancel()
                raise

    def _receive(self, chain: Chain, data: bytes) -> bool:
        """Takes one item of the chain's task; True when it was the last (where the task ran)."""
        header, arrays = _unpack(data)
        item = header.get("item")
        if item == "cell":
            self._accept(chain, header, arrays)
            return False
        if item == TASK_INFO:
            if self.pending[chain.index]:
                raise _BadItem(f"ended without {len(self.pending[chain.index])} of the cells it had to compute")
            info = _task_info(header)
            backoffs = _task_backoffs(header, info["node"])  # checked before anything of the item is kept
            self.where.append({"model": chain.subject.id, "attacks": list(chain.names), **info})
            self.sweep.inputs[chain.subject.id][0].batches.backoffs.extend(backoffs)  # into the driver's manifest
            return True
        if item == "error":
            raise _task_error(header)
        raise _BadItem(f"sent an item of unknown kind {_shown(item)}")

    def _accept(self, chain: Chain, header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        key = header.get("key")
        if not isinstance(key, str) or key not in self.pending[chain.index]:
            twice = isinstance(key, str) and key in self.plans[chain.index]
            raise _BadItem(f"sent {'again ' if twice else ''}a cell its plan does not ask for (key {_shown(key)})")
        planned = self.plans[chain.index][key]
        cell = _cell(header, arrays, planned[0].expected)
        self.pending[chain.index].discard(key)
        for entry in planned:  # two attacks with the same settings share a cell
            self.sweep.accept(chain.subject, Done(entry.spec, entry.row_kind, key, cell))

    def _retry(self, chain: Chain, reason: str) -> None:
        if self.attempts[chain.index] >= MAX_ATTEMPTS:
            self.cancel()
            raise RunFailed(
                f"the Ray task running {self._what(chain)} was lost {MAX_ATTEMPTS} times ({reason}); finished cells "
                f"are kept in {self.sweep.out}/cells: re-run the same command to resume"
            )
        say(f"a Ray worker was lost ({reason}); running {self._what(chain)} again from its last finished cell")
        self._submit(chain)

    @staticmethod
    def _what(chain: Chain) -> str:
        return f"{', '.join(chain.names)} on {chain.subject.id}"

    def cancel(self) -> None:
        import ray

        for generator in self.active:
            ray.cancel(generator, force=True)
        until = time.monotonic() + DRAIN_SECONDS
        for generator in self.active:
            _drain(generator, until)
        self.active.clear()


class _PlanStore:
    """Has every cell, as a placeholder: a chain run against it lists the cells the chain makes, computing none
    (a cell's key comes from the plan, never from results)."""

    def __init__(self):
        self.expected: dict[str, Expected] = {}

    def load(self, key: str, expected: Expected) -> Cell:
        self.expected[key] = expected
        rows = [{expected.name: value} for value in expected.grid]
        flags = np.ones((len(expected.grid), expected.n), dtype=bool)
        return Cell(rows, flags, {name: np.zeros(shape, np.float32) for name, shape in expected.extra.items()})

    def save(self, key: str, cell: Cell) -> None:
        raise AssertionError("a plan computes no cell")


def _plans(sweep, chains: list[Chain]) -> dict[int, dict[str, list[_Planned]]]:
    """Per chain, the cells its task computes, by key: what the driver accepts from it, and nothing else."""
    store = _PlanStore()
    runner = ChainRunner(sweep.config, sweep.suite, sweep.grids, store, sweep.versions)
    runner.inputs = dict(sweep.inputs)  # each model's images and clean flags, as the sweep's start left them
    plans: dict[int, dict[str, list[_Planned]]] = {}
    for chain in chains:
        runner.run_chain(chain)
        plan = plans[chain.index] = {}
        for done in runner.done.get(chain.subject.id, []):
            if done.spec is not None and done.spec.name in chain.names:
                plan.setdefault(done.key, []).append(_Planned(done.spec, done.row_kind, store.expected[done.key]))
    return plans


# --- items: plain bytes both ways ------------------------------------------------------------------
def _pack(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    """One item a task yields: safetensors arrays, the JSON header among them as bytes (no pickle needed to read)."""
    tensors = {name: np.ascontiguousarray(array) for name, array in (arrays or {}).items()}
    tensors["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    return save_arrays(tensors)


def _pack_cell(key: str, cell: Cell) -> bytes:
    arrays = {"flags": np.atleast_2d(cell.flags).astype(bool), **{f"extra.{k}": v for k, v in cell.extra.items()}}
    return _pack({"item": "cell", "key": key, "rows": cell.values}, arrays)


def _unpack(data: bytes) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    try:
        arrays = load_arrays(data)  # checks every array's type and size against the bytes given
    except (SafetensorError, ValueError, KeyError) as error:  # KeyError: a dtype numpy lacks (BF16)
        raise _BadItem(f"sent bytes that are not a robustcnn item ({type(error).__name__})") from None
    text = arrays.pop("header", None)
    if text is None or text.dtype != np.uint8 or text.ndim != 1:
        raise _BadItem("sent an item without its header")
    try:
        header = json.loads(text.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise _BadItem("sent an item whose header is not JSON") from None
    if not isinstance(header, dict):
        raise _BadItem("sent an item whose header is not a JSON object")
    return header, arrays


def _cell(header: dict[str, Any], arrays: dict[str, np.ndarray], expected: Expected) -> Cell:
    """The cell a task sent, with only the numbers and arrays a cell has, checked against what the plan expects."""
    rows, flags = header.get("rows"), arrays.pop("flags", None)
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise _BadItem("sent a cell whose rows are not a list of objects")
    if flags is None or flags.dtype != np.bool_:
        raise _BadItem(f"sent a cell whose flags are {None if flags is None else flags.dtype}, not bool")
    if any(not name.startswith("extra.") for name in arrays):
        raise _BadItem(f"sent a cell with arrays {sorted(arrays)} a cell does not have")
    values = [{k: row[k] for k in NUMBERS if k in row} for row in rows]
    extra = {name.removeprefix("extra."): array.copy() for name, array in arrays.items()}  # writable, not views
    cell = Cell(values, flags.view(np.uint8) != 0, extra)  # a bool byte other than 0 or 1 read as True, as numpy does
    try:
        expected.check(cell)
    except BadCell as error:
        raise _BadItem(f"sent a cell that is not what its plan says: {error}") from None
    return cell


def _task_info(header: dict[str, Any]) -> dict[str, Any]:
    node, device, gpu_ids = header.get("node"), header.get("device"), header.get("gpu_ids")
    plain = [node, device, *(gpu_ids if isinstance(gpu_ids, list) and len(gpu_ids) <= 64 else [None])]
    if not all(isinstance(value, str) and PLAIN.fullmatch(value) for value in plain):
        raise _BadItem("said where it ran in values that are not plain node, GPU and device names")
    return {"node": node, "gpu_ids": gpu_ids, "device": device}


def _task_backoffs(header: dict[str, Any], node: str) -> list[dict[str, Any]]:
    """The task's halvings on running out of GPU memory ({"from", "to", "where"}: whole numbers, a short where),
    for the driver's manifest; anything else is a bad item."""
    found = header.get("batch_backoffs", [])
    items = found if isinstance(found, list) and len(found) <= MAX_BACKOFFS else None
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1 << 20  # noqa: E731
    if items is None or not all(
        isinstance(b, dict) and set(b) == {"from", "to", "where"} and whole(b["from"]) and whole(b["to"])
        and isinstance(b["where"], str) and len(b["where"]) <= MAX_MESSAGE
        for b in items
    ):  # fmt: skip
        raise _BadItem("said how its batches were halved in values robustcnn does not read")
    return [{**b, "where": f"{_printable(b['where'])} (Ray task on node {node})"} for b in items]


def _task_error(header: dict[str, Any]) -> Exception:
    """What the task's robustcnn code raised, rebuilt from text: a UsageError stays one (exit 2)."""
    kind, message = header.get("kind"), header.get("message")
    if kind not in ("usage", "failed", "error") or not isinstance(message, str):
        return _BadItem("reported an error in a form robustcnn does not read")
    text = _printable(" ".join(message.split()))[:MAX_MESSAGE]
    if kind == "usage":
        return UsageError(text)
    return RunFailed(text if kind == "failed" else f"a Ray task failed: {text}")


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)  # no terminal escapes from a worker


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- Ray's object store, read without unpickling ----------------------------------------------------
# Ray internals, measured on Ray 2.60: a task's `bytes` are stored with the metadata b"RAW" and returned as they
# are; any other Python object is stored as b"PYTHON" (a pickle), which `ray.get` unpickles; an error Ray records
# is stored under its ErrorType number. `next(generator)` at the end of a stream calls `ray.get` on the task's
# return object. So the driver takes the next item's ref and reads the stored bytes and metadata itself.
RAW = b"RAW"
_INTERNALS = ("try_read_next_object_ref_stream", "get_objects")


def _check_ray_internals() -> None:
    import ray

    core_worker = ray._private.worker.global_worker.core_worker
    missing = [name for name in _INTERNALS if not hasattr(core_worker, name)]
    if missing:
        raise UsageError(
            f"--ray: this Ray ({ray.__version__}) lacks {', '.join(missing)}, which robustcnn reads task results "
            "through without unpickling them; install the Ray robustcnn was tested with: pip install 'ray==2.60.*'"
        )


def _next_item(generator) -> bytes | _Lost:
    """The next item the task streamed, as the bytes it yielded, or _Lost; ray.wait has said one is ready."""
    from ray.exceptions import ObjectRefStreamEndOfStreamError

    core_worker = generator.worker.core_worker
    try:
        ref = core_worker.try_read_next_object_ref_stream(generator.completed())
    except ObjectRefStreamEndOfStreamError:  # ended without its last item: its return object may hold why
        ref = None
    data, metadata = core_worker.get_objects([ref if ref is not None else generator.completed()], -1)[0][:2]
    kind = bytes(metadata or b"").split(b",")[0]
    size = 0 if data is None else memoryview(data).nbytes
    if kind.isdigit():
        return _ray_error(int(kind), data)
    if kind != RAW or ref is None:
        what = "ended without saying where it ran" if ref is None else "sent a Python object, not plain bytes"
        raise _BadItem(f"{what} (Ray metadata {_shown(kind)}; not unpickled)")
    if size > MAX_ITEM_BYTES:
        raise _BadItem(f"sent an item of {size} bytes, more than a cell can take ({MAX_ITEM_BYTES})")
    return b"" if data is None else data.to_pybytes()


def _drain(generator, until: float) -> int:
    """Reads what is left of a task's stream, raw, and returns how many items there were (0 for a task that
    ended after its last one). Ray unpickles an error nobody read when its ref goes, to report it: a task could
    send one after its last item. What a task sends beyond MAX_EXTRA items or after `until` is left unread."""
    import ray
    from ray.exceptions import ObjectRefStreamEndOfStreamError

    core_worker, extra = generator.worker.core_worker, 0
    while extra <= MAX_EXTRA:
        ready, _ = ray.wait([generator], num_returns=1, timeout=max(0.0, until - time.monotonic()))
        if not ready:
            break
        try:
            ref = core_worker.try_read_next_object_ref_stream(generator.completed())
        except ObjectRefStreamEndOfStreamError:
            core_worker.get_objects([generator.completed()], -1)  # read, not deserialized: nothing left unread
            break
        core_worker.get_objects([ref], -1)
        extra += 1
    return extra


def _ray_error(number: int, data) -> _Lost:
    """An error Ray recorded: a lost worker or node is retried; a task that raised outside robustcnn's task code
    (its arguments could not be read: robustcnn missing on the node?) stops the sweep with Ray's text for it."""
    from ray.core.generated.common_pb2 import ErrorType

    try:
        name = ErrorType.Name(number)
    except ValueError:
        name = f"Ray error {number}"
    if name != "TASK_EXECUTION_EXCEPTION":
        return _Lost(name)
    raise RunFailed(f"a Ray task failed outside robustcnn's task code: {_ray_error_text(data)}")


def _ray_error_text(data) -> str:
    """The last line of the traceback Ray stored as text beside the pickled exception, which stays unread."""
    text = "see the worker's log"
    with contextlib.suppress(Exception):  # Ray internals; without them, only the pointer to the log
        from ray._raylet import MessagePackSerializer, split_buffer
        from ray.core.generated.common_pb2 import RayException

        packed, _ = split_buffer(data)  # Ray's framing: msgpack, then pickle5 buffers (none for an error)
        exception = RayException.FromString(MessagePackSerializer.loads(packed, _no_python_objects))
        text = last_line(Exception(exception.formatted_exception_string))
    return _printable(text)[:MAX_MESSAGE]


def _no_python_objects(index: int) -> Any:
    raise _BadItem("an error record that holds a Python object")


# --- the worker's side -------------------------------------------------------------------------
def _chain_task(
    payload: Payload,
    names: tuple[str, ...],
    known: dict[str, Cell],
    config: SweepConfig,
    suite: Suite,
    grids: dict[str, tuple[float, ...]],
    versions: dict[str, str],
) -> Iterator[bytes]:
    """Runs one chain, yielding each computed cell, then where it ran (or, instead, what went wrong), as `_pack`
    bytes: an exception goes back as text, never pickled."""
    try:
        yield from _chain_items(payload, names, known, config, suite, grids, versions)
    except UsageError as error:
        yield _pack({"item": "error", "kind": "usage", "message": str(error)})
    except RunFailed as error:
        yield _pack({"item": "error", "kind": "failed", "message": str(error)})
    except Exception as error:  # noqa: BLE001 - told to the driver as one line
        yield _pack({"item": "error", "kind": "error", "message": f"{type(error).__name__}: {last_line(error)}"})


def _chain_items(payload, names, known, config, suite, grids, versions) -> Iterator[bytes]:
    import ray

    torch.set_num_threads(config.cpus_per_task)
    _same_versions(library_versions(), versions)  # the driver's are those that can change a cell's numbers
    device = resolve_device(config.device)
    subject = _on_device(payload.subject, device, config.batch_size, payload.judged)  # "auto": chosen on its device
    cells: queue.Queue = queue.Queue()
    runner = ChainRunner(
        config, suite, {subject.id: grids}, MemoryStore(known), versions,
        on_computed=lambda _, done: cells.put(_pack_cell(done.key, done.cell)),
    )  # fmt: skip
    runner.handed = dict(payload.handed)
    chain = Chain(subject, tuple(spec for spec in suite.attacks if spec.name in names), 0)
    worker = threading.Thread(target=_run, args=(runner, chain, cells), daemon=True)
    worker.start()  # a thread, so cells can be yielded while the chain is still at work
    while (item := cells.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item
    context = ray.get_runtime_context()
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    backoffs = runner.inputs[subject.id][0].batches.backoffs[:MAX_BACKOFFS]  # halvings on running out of memory
    yield _pack({"item": TASK_INFO, "node": context.get_node_id(), "gpu_ids": gpu_ids, "device": str(device),
                 "batch_backoffs": backoffs})  # fmt: skip


def _run(runner: ChainRunner, chain: Chain, cells: queue.Queue) -> None:
    try:
        runner.start(chain.subject)  # the clean cell came with the task: found, not computed
        runner.run_chain(chain)
        cells.put(None)
    except BaseException as error:  # noqa: BLE001 - handed to the generator, which raises it in the task
        cells.put(error)


def _same_versions(mine: dict[str, str], drivers: dict[str, str]) -> None:
    differ = [
        f"{name} {mine.get(name)} (driver: {drivers.get(name)})" for name in drivers if mine.get(name) != drivers[name]
    ]
    if differ:
        raise UsageError(
            f"a Ray worker has {', '.join(differ)}: one sweep's cells must come from one set of versions; install "
            "the driver's versions on every node"
        )


def _on_device(subject: Subject, device: torch.device, batch_size: int | str, judged: Judging) -> Subject:
    module = for_attacks(subject.model, device)
    target = attack_target(module, subject.info, device, batch_size, len(subject.data), judged)
    return dataclasses.replace(subject, model=module, target=target)
