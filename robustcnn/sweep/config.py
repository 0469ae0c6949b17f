"""`SweepConfig`: every sweep choice in one frozen object, shared by the CLI and `robustcnn.sweep(...)`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from robustcnn.config import BOOL, COUNT, INT, from_mapping, option


def _weights(value: object) -> str:
    if str(value) not in {"best", "last"}:
        raise ValueError("choose one of: best, last")
    return str(value)


@dataclass(frozen=True)
class SweepConfig:
    suite: str = option("quick", "suite name (attacks/NAME.toml) or path to a .toml file")
    n: int | None = option(None, "test images to attack (a seeded random subset); default: the suite's n", INT)
    out: str = option("reports/sweep", "output directory; re-running into it resumes finished cells")
    seed: int = option(0, "seed for the image subset and the attacks' random starts", COUNT)
    device: str = option("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    batch_size: int | None = option(None, "examples per ART call; default 1024 on a GPU, 128 on a CPU (cache)", INT)
    weights: str = option("best", "which checkpoint of each run directory: best or last", _weights, flag=False)
    dataset: str | None = option(None, "evaluate on this dataset instead of each model's own (same image shape)")
    data_dir: str | None = option(None, "where downloadable datasets live; default ~/.cache/robustcnn/data")
    download: bool = option(False, "download the dataset if its files are missing (needs internet)", BOOL)
    naive: bool = option(False, "attack every example at every eps (slow; to compare with nested reuse)", BOOL)
    gallery: int = option(8, "adversarial examples per model kept for the report", COUNT)
    probe: int = option(
        50, "examples each white-box attack attacks afresh at every eps, for the report's checks (0: none)", COUNT
    )
    report: bool = option(True, "write report.html when done", BOOL, flag=False)
    fail_under: tuple[str, ...] = option((), "gates ATTACK@EPS=ACC", flag=False)

    @classmethod
    def from_dict(cls, data: dict, where: str = "") -> SweepConfig:
        return from_mapping(cls, data, where)

    def replace(self, **changes) -> SweepConfig:
        return dataclasses.replace(self, **changes)
