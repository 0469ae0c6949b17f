"""How long the report takes for a standard-size sweep: 10 models x 5 attacks x 10 eps (+ a patch attack).

    python benchmarks/report_speed.py

Synthetic results from tests/report_fixtures.py, with a gallery, patches and training logs for every
model. Target: under 2 s per report on a 2-core CPU. `report_s` is the call alone (imports done);
`cli_s` is one cold `python -m robustcnn.report`, imports included.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from report_fixtures import make_sweep_dir  # noqa: E402

import robustcnn.report  # noqa: E402

MODELS = [f"model-{i}" for i in range(10)]
ATTACKS = ["fgsm", "pgd", "pgd-50", "apgd-ce", "square", "patch"]  # 5 eps-bounded attacks + a patch
EPS = [i * 0.04 for i in range(10)]  # 0 ... 0.36


def measure(repeats: int = 5, models: int = len(MODELS), cli: bool = True) -> dict:
    """`models` < 10 and `cli=False` make a quick smoke run; the figures are for the defaults."""
    with tempfile.TemporaryDirectory() as tmp:
        out = make_sweep_dir(Path(tmp) / "sweep", models=MODELS[:models], attacks=ATTACKS, eps=EPS)
        robustcnn.report(out)  # warm-up: template compilation, font cache
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            path = robustcnn.report(out)
            times.append(time.perf_counter() - started)
        cli_s = float("nan")
        if cli:
            started = time.perf_counter()
            command = [sys.executable, "-m", "robustcnn.report", str(out)]
            subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
            cli_s = time.perf_counter() - started
        return {
            "sweep": f"{models} models x {len(ATTACKS) - 1} attacks x {len(EPS)} eps + patch",
            "rows": sum(1 for _ in open(out / "results.csv")) - 1,
            "repeats": repeats,
            "report_s_median": round(statistics.median(times), 3),
            "report_s_min": round(min(times), 3),
            "cli_s": round(cli_s, 3),
            "html_bytes": path.stat().st_size,
        }


if __name__ == "__main__":
    print(measure())
