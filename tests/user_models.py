"""Models from elsewhere, as the tests' users bring them: their own model file and weights saved their way.

`NETS_PY` is a model file written by someone who never used robustcnn (plain PyTorch). Its `smallcnn`
has robustcnn's smallcnn layers, so a robustcnn run's weights can be saved as that user would save them.
"""

from __future__ import annotations

from pathlib import Path

import torch

NETS_PY = '''
import torch
from torch import nn

WIDTH = 16


def smallcnn(classes=10, channels=1, width=WIDTH, side=28):
    features = nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(width, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
    )
    return nn.Sequential(features, nn.Linear(32 * (side // 4) ** 2, 128), nn.ReLU(), nn.Linear(128, classes))


class Normalised(nn.Module):
    """Normalises inside, as robustcnn's own models do."""

    def __init__(self, mean=0.1307, std=0.3081):
        super().__init__()
        self.mean, self.std = mean, std
        self.body = smallcnn()

    def forward(self, x):
        return self.body((x - self.mean) / self.std)


class TwoHeads(nn.Module):
    """Returns (logits, features), as many research models do."""

    def __init__(self, as_dict=False):
        super().__init__()
        self.body, self.as_dict = smallcnn(), as_dict

    def forward(self, x):
        features = self.body[0](x)
        logits = self.body[3](self.body[2](self.body[1](features)))
        return {"features": features, "logits": logits} if self.as_dict else (logits, features)


def two_heads(as_dict=False):
    return TwoHeads(as_dict)


def with_batchnorm():
    net = smallcnn()
    net[0].insert(1, nn.BatchNorm2d(WIDTH))
    return net


class NotANumber(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = smallcnn()

    def forward(self, x):
        return self.body(x) * float("nan")


def broken(width=-1):
    raise ValueError(f"width must be positive, got {width}")


def not_a_module():
    return "resnet"
'''

BROKEN_PY = "import torch\ndef build(:\n    pass\n"


def write_nets(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nets.py").write_text(NETS_PY)
    (folder / "broken_syntax.py").write_text(BROKEN_PY)
    return folder / "nets.py"


def user_state_dict(run_path: Path) -> dict[str, torch.Tensor]:
    """A robustcnn run's weights as the plain `smallcnn` above holds them (no `net.` prefix, no mean/std)."""
    import robustcnn

    state = robustcnn.load_model(run_path, channels_last=False).state_dict()  # as a user's own script holds them
    return {k.removeprefix("net."): v.clone() for k, v in state.items() if k.startswith("net.")}


def save_like_a_training_script(state: dict[str, torch.Tensor], path: Path) -> Path:
    """torch.save of a DDP model's checkpoint: {"state_dict": {"module.<key>": tensor}, "epoch": ...}."""
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 9, "best_acc": 0.97}, path)
    return path
