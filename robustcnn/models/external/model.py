"""`Model`: one model to sweep and everything that has to be said about it, from the CLI or from Python.

    robustcnn.Model(my_module, name="mine", dataset="cifar10", normalize="imagenet")
    robustcnn.Model("nets.py:build", weights="nets.pt", model_args={"width": 2})
    robustcnn.Model("runs/mnist-adv", weights="last")

On the command line a spec is written `SPEC` or `SPEC@key=value@key=value` (keys as the flags, with
`-` or `_`), e.g. `nets.py:build@weights=nets.pt@normalize=dataset`; the flags (`--weights`,
`--normalize`, ...) apply to every spec that does not set the key itself.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustcnn.config import COUNT, convert_field, option
from robustcnn.errors import UsageError
from robustcnn.models.preprocess import InputRange, OutputSelect, parse_input_range, parse_normalize

RUN_WEIGHTS = ("best", "last")  # a run directory's two checkpoints


def parse_model_args(value: Any) -> dict[str, Any]:
    """KEY=VALUE texts (values parsed as JSON, else kept as strings) or a mapping, into a dict."""
    if isinstance(value, dict):
        return dict(value)
    items = [value] if isinstance(value, str) else list(value)
    parsed = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip().isidentifier():
            raise ValueError(f"expected KEY=VALUE with KEY a Python name, got {item!r}")
        try:
            parsed[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            parsed[key.strip()] = text
    return parsed


def _text(value: Any) -> str:
    return str(value)


@dataclass(frozen=True)
class Model:
    source: Any  # an nn.Module, a run directory (path or Run), or a spec string such as "torchvision:resnet18"
    name: str | None = option(None, "model id in the results (default: from the spec)", _text)
    dataset: str | None = option(None, "the dataset the model was made for (default: the sweep's --dataset)", _text)
    weights: str | None = option(
        None, "weights file (.safetensors, .pt, .pth) for a builder spec; best or last for a run directory", _text
    )
    model_args: dict[str, Any] = option(None, "KEY=VALUE passed to the builder (JSON values)", parse_model_args)
    normalize: str | None = option(
        None,
        "none | dataset | imagenet | MEAN,STD: what the model expects; default: what its pretrained weights declare, "
        "else none",
        parse_normalize,
    )
    input_range: InputRange = option(
        InputRange.UNIT, "0-1 | 0-255: the pixel range the model expects", parse_input_range
    )
    output_index: int | None = option(None, "which element of a tuple output holds the logits", COUNT)
    output_key: str | None = option(None, "which key (or attribute) of a dict output holds the logits", _text)

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self)[1:]:  # Python callers get the same checks as the CLI
            value = getattr(self, field.name)
            object.__setattr__(self, field.name, convert_field(Model, field.name, value))
        if self.model_args is None:
            object.__setattr__(self, "model_args", {})
        if self.output_index is not None and self.output_key is not None:
            raise UsageError("give --output-index or --output-key, not both")

    @property
    def output(self) -> OutputSelect:
        return OutputSelect(self.output_index, self.output_key)

    @property
    def spec(self) -> str:
        """The source as text, for messages and the manifest."""
        from torch import nn

        if isinstance(self.source, nn.Module):
            return f"<{type(self.source).__module__}.{type(self.source).__qualname__} object>"
        return str(getattr(self.source, "path", self.source))

    def given(self) -> dict[str, Any]:
        """The options that differ from the defaults, as plain JSON (for the manifest and `repeat`)."""
        out = {}
        for field in dataclasses.fields(self)[1:]:
            value = getattr(self, field.name)
            if value != field.default and value not in ({}, None):
                out[field.name] = value.value if isinstance(value, InputRange) else value
        return out

    def to_spec(self) -> str:
        """`SPEC@key=value...`: this model on a command line (Python objects cannot be written so)."""
        parts = [self.spec]
        for key, value in self.given().items():
            if key == "model_args":
                parts += [f"model-arg={k}={json.dumps(v)}" for k, v in value.items()]
            else:
                parts.append(f"{key.replace('_', '-')}={value}")
        return "@".join(parts)


PER_MODEL_FLAGS = tuple(f.name for f in dataclasses.fields(Model)[1:])


def parse_spec(text: str, defaults: dict[str, Any] | None = None) -> Model:
    """`SPEC@key=value...` -> Model; keys given after @ win over `defaults` (the command line's flags)."""
    text = str(text)
    spec, overrides = text, {}
    if "@" in text and not Path(text).exists():
        spec, *pairs = text.split("@")
        for pair in pairs:
            key, sep, value = pair.partition("=")
            key = key.strip().replace("-", "_")
            key = "model_args" if key == "model_arg" else key
            if not sep or key not in PER_MODEL_FLAGS:
                known = ", ".join(k.replace("_", "-") for k in PER_MODEL_FLAGS).replace("model-args", "model-arg")
                raise UsageError(f"model spec {text!r}: {pair!r} is not KEY=VALUE with KEY one of: {known}")
            if key == "model_args":
                overrides.setdefault(key, []).append(value)
            else:
                overrides[key] = value
    options = dict(defaults or {})
    if "model_args" in overrides and "model_args" in options:  # spec arguments add to (and win over) the flags'
        overrides["model_args"] = {
            **parse_model_args(options["model_args"]),
            **parse_model_args(overrides["model_args"]),
        }
    options.update(overrides)
    return Model(spec, **options)
