"""A CNN trained in plain PyTorch, as a user's own script trains one: robustcnn plays no part in the training.

    python examples/own_model.py     # about 30 s on 2 CPU cores; writes examples/out/cnn.pt and cnn.onnx

Then robustcnn evaluates it (README, "Evaluate your own model"):

    python -m robustcnn.sweep examples/own_model.py:build --weights examples/out/cnn.pt \\
        --normalize 0.1307,0.3081 --dataset mnist5k --out reports/own

The model takes normalised images, (x - 0.1307) / 0.3081, as `transforms.Normalize` would make them:
`--normalize 0.1307,0.3081` tells the sweep so, and attacks still work in [0, 1] pixel units.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

MEAN, STD = 0.1307, 0.3081  # MNIST's pixel statistics, [0, 1] units
OUT = Path(__file__).resolve().parent / "out"


def build(width: int = 32, classes: int = 10) -> nn.Module:
    """(N, 1, 28, 28) normalised images -> (N, classes) logits; BatchNorm and dropout, as real models have."""
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),  # (N, w, 14, 14)
        nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(), nn.MaxPool2d(2),  # 7x7
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(2 * width * 7 * 7, 128), nn.ReLU(), nn.Linear(128, classes),
    )  # fmt: skip


def train(epochs: int, train_size: int | None, seed: int = 0) -> nn.Module:
    from robustcnn import load_dataset  # only for the offline MNIST digits; the loop below is plain PyTorch

    torch.manual_seed(seed)
    data = load_dataset("mnist5k", "train")  # the 4000 training digits; the sweep tests on the other 1000
    x, y = (data.images() - MEAN) / STD, data.y
    x, y = (x[:train_size], y[:train_size]) if train_size else (x, y)
    model = build()
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    for epoch in range(epochs):
        model.train()
        for index in torch.randperm(len(y)).split(64):
            loss = nn.functional.cross_entropy(model(x[index]), y[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}")
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=None, help="fewer training images, for a quick try")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    model = train(args.epochs, args.train_size)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "epochs": args.epochs}, args.out / "cnn.pt")  # a typical checkpoint
    example = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(
        model, (example,), args.out / "cnn.onnx", dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}}
    )
    print(f"wrote {args.out / 'cnn.pt'} and {args.out / 'cnn.onnx'}")


if __name__ == "__main__":
    main()
