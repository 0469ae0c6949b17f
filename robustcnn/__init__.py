"""robustcnn: train CNN image classifiers and measure how robust they really are, through ART.

    robustcnn.train(dataset="mnist5k", adv=True, out="runs/mnist-adv")
    model = robustcnn.load_model("runs/mnist-adv")      # eval mode, pixels in [0, 1] -> logits
    run = robustcnn.load_run("runs/mnist-adv")          # run.meta: config, dataset, metrics, versions
    test = robustcnn.load_dataset("mnist5k", "test")
    results = robustcnn.sweep(["runs/mnist-std", "runs/mnist-adv"], suite="quick", out="reports/mnist")
    robustcnn.sweep([robustcnn.Model(my_module, dataset="cifar10", normalize="imagenet")], out="reports/mine")
    robustcnn.report("reports/mnist")                   # report.html, summary.md, checks.json
    robustcnn.compare("reports/last-week", "reports/mnist").frame()  # paired tests, row by matched row
    robustcnn.export("reports/mnist", per_example=True) # per_example.csv: one row per model, attack, eps, example

Imports are lazy so that `python -m robustcnn.report` never pays for torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "train": ("robustcnn.train", None),  # the package is callable: robustcnn.train(...)
    "sweep": ("robustcnn.sweep", None),  # robustcnn.sweep(models, suite=...) -> DataFrame
    "report": ("robustcnn.report", None),  # robustcnn.report(out_dir) -> path of report.html
    "compare": ("robustcnn.compare", None),  # robustcnn.compare(old_dir, new_dir) -> Comparison (paired tests)
    "export": ("robustcnn.export", None),  # robustcnn.export(out_dir, per_example=True) -> Exported (files written)
    "load_model": ("robustcnn.runs", "load_model"),
    "load_run": ("robustcnn.runs", "load_run"),
    "load_dataset": ("robustcnn.data", "load_dataset"),
    "Model": ("robustcnn.models.external.model", "Model"),
    "TrainConfig": ("robustcnn.train.config", "TrainConfig"),
    "SweepConfig": ("robustcnn.sweep.config", "SweepConfig"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'robustcnn' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)
