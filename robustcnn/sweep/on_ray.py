"""Sweeps on Ray (`--ray`): each chain of cells (chains.py) is a Ray task; the driver writes each cell as it returns.

How models and data reach the workers: through Ray's object store, never files. The driver loads every
model as a sweep without Ray does (on its CPU), then puts each module with its n test images (and the
patch's training images) in the object store once; a task rebuilds the ART wrapper on its own device.
Workers need robustcnn installed with the same library versions (checked: the cells' keys include
them), but no shared filesystem, dataset files or checkpoints. Only the driver writes into --out.

A task is a generator: cells stream back one by one and are on disk before the next arrives, so a worker
that dies loses only its cell in flight. The driver then runs the chain again, handing over the cells it
already has (they are not recomputed), up to MAX_ATTEMPTS times.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robustcnn.console import say
from robustcnn.devices import resolve_device
from robustcnn.errors import RunFailed, UsageError, last_line
from robustcnn.sweep.chains import Chain, ChainRunner, Done
from robustcnn.sweep.config import SweepConfig
from robustcnn.sweep.store import Cell, MemoryStore
from robustcnn.sweep.subjects import Subject, attack_target, default_batch_size, for_attacks
from robustcnn.sweep.suite import Suite

RAY_EXTRA = "pip install 'robustcnn[ray]'"
MAX_ATTEMPTS = 3  # runs of one chain; only a lost worker or node counts, an error in robustcnn's code stops the sweep
TASK_INFO = "task"  # the last item a task yields: where it ran


def require_ray() -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise UsageError(f"--ray needs Ray, which is not installed here: {RAY_EXTRA}") from None


@dataclass
class Payload:
    """What a task needs of a model besides its chain: put in the object store once per model."""

    subject: Subject  # without its ART wrapper (rebuilt on the task's device)
    patch_images: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]


@contextlib.contextmanager
def ray_session(config: SweepConfig) -> Iterator[None]:
    """Connected to the cluster --ray names (`local`: one started here) for the block; disconnects when it
    connected. Already connected (a notebook, a test): that cluster is used as it is."""
    import ray

    if ray.is_initialized():
        yield
        return
    try:
        if config.ray == "local":
            ray.init(include_dashboard=False, configure_logging=False)
        else:
            ray.init(address=config.ray, configure_logging=False)
    except ConnectionError as error:
        raise UsageError(
            f"--ray {config.ray}: no Ray cluster there ({last_line(error)}); start one with `ray start --head`, "
            "give its ADDRESS (host:port or ray://host:port), or use --ray local"
        ) from None
    try:
        yield
    finally:
        ray.shutdown()


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


class _Tasks:
    """The driver's side: submits chains, saves cells as they stream back, resubmits chains of lost workers."""

    def __init__(self, sweep, chains: list[Chain]):
        import ray

        self.sweep, self.config = sweep, sweep.config
        self.specs = {spec.name: spec for spec in sweep.suite.attacks}
        subjects = {chain.subject.id: chain.subject for chain in chains}
        self.payloads = {name: ray.put(self._payload(subject)) for name, subject in subjects.items()}
        self.remote = ray.remote(_chain_task).options(
            num_cpus=self.config.cpus_per_task,
            num_gpus=self.config.gpus_per_task,
            max_retries=0,
            num_returns="streaming",
        )
        self.attempts: dict[int, int] = {}
        self.active: dict[Any, Chain] = {}  # the task's generator -> its chain
        self.where: list[dict[str, Any]] = sweep.manifest.setdefault("ray_tasks", [])
        for chain in chains:
            self._submit(chain)

    def _payload(self, subject: Subject) -> Payload:
        patches = {
            (subject.id, spec.name): self.sweep.patch_training_images(subject, spec)
            for spec in self.sweep.suite.attacks
            if spec.kind == "patch"
        }
        return Payload(dataclasses.replace(subject, target=None, checks=[]), patches)

    def _submit(self, chain: Chain) -> None:
        self.attempts[chain.index] = self.attempts.get(chain.index, 0) + 1
        mine = set(chain.names)
        known = {d.key: d.cell for d in self.sweep.done[chain.subject.id] if d.spec is None or d.spec.name in mine}
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
                item = ray.get(next(generator))
            except StopIteration:
                del self.active[generator]
                continue
            except ray.exceptions.RayTaskError as error:  # robustcnn's own code raised: as it would without Ray
                self.cancel()
                raise _cause(error) from None
            except ray.exceptions.RayError as error:  # the worker or its node was lost
                del self.active[generator]
                self._retry(chain, error)
                continue
            self._receive(chain, *item)

    def _receive(self, chain: Chain, name: str | None, kind: str, key: str, cell: Cell | dict) -> None:
        if name == TASK_INFO:
            self.where.append({"model": chain.subject.id, "attacks": list(chain.names), **cell})
            return
        self.sweep.accept(chain.subject, Done(self.specs.get(name), kind, key, cell))

    def _retry(self, chain: Chain, error: Exception) -> None:
        what = f"{', '.join(chain.names)} on {chain.subject.id}"
        if self.attempts[chain.index] >= MAX_ATTEMPTS:
            self.cancel()
            raise RunFailed(
                f"the Ray task running {what} was lost {MAX_ATTEMPTS} times ({last_line(error)}); finished cells are "
                f"kept in {self.sweep.out}/cells: re-run the same command to resume"
            )
        say(f"a Ray worker was lost ({type(error).__name__}); running {what} again from its last finished cell")
        self._submit(chain)

    def cancel(self) -> None:
        import ray

        for generator in self.active:
            ray.cancel(generator, force=True)
        self.active.clear()


def _cause(error) -> Exception:
    cause = getattr(error, "cause", None)
    if isinstance(cause, (UsageError, RunFailed)):
        return cause
    return RunFailed(f"a Ray task failed: {last_line(cause or error)}")


# --- the worker's side -------------------------------------------------------------------------
def _chain_task(
    payload: Payload,
    names: tuple[str, ...],
    known: dict[str, Cell],
    config: SweepConfig,
    suite: Suite,
    grids: dict[str, tuple[float, ...]],
    versions: dict[str, str],
) -> Iterator[tuple]:
    """Runs one chain, yielding (attack name, kind, key, cell) per computed cell, then where it ran."""
    import ray

    from robustcnn.sweep.runner import number_versions

    torch.set_num_threads(config.cpus_per_task)
    _same_versions(number_versions(), versions)
    device = resolve_device(config.device)
    subject = _on_device(payload.subject, device, config.batch_size or default_batch_size(device))
    cells: queue.Queue = queue.Queue()
    runner = ChainRunner(
        config, suite, {subject.id: grids}, MemoryStore(known), versions,
        on_computed=lambda _, done: cells.put((done.spec.name if done.spec else None, done.kind, done.key, done.cell)),
    )  # fmt: skip
    runner.patch_images = {k: (x.copy(), y.copy()) for k, (x, y) in payload.patch_images.items()}  # writable
    chain = Chain(subject, tuple(spec for spec in suite.attacks if spec.name in names), 0)
    worker = threading.Thread(target=_run, args=(runner, chain, cells), daemon=True)
    worker.start()  # a thread, so cells can be yielded while the chain is still at work
    while (item := cells.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item
    context = ray.get_runtime_context()
    info = {"node": context.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "device": str(device)}
    yield TASK_INFO, TASK_INFO, "", info


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


def _on_device(subject: Subject, device: torch.device, batch_size: int) -> Subject:
    module = for_attacks(subject.model, device)
    return dataclasses.replace(subject, model=module, target=attack_target(module, subject.info, device, batch_size))
