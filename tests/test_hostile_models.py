"""Model files from strangers (issue 25): archives, weights and ONNX files that try to run code or crash the sweep.

Every hostile file is made here, the `.pt2` ones by editing a real `torch.export.save` archive (a zip). Each case
runs `robustcnn.sweep` as `python -m` does and checks the contract: exit code 2, one line naming what is wrong,
no traceback, nothing written to --out, and no marker file from the payload. Where a payload could run, a test
first shows that it really does run when torch is handed the file directly.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
import subprocess
import tempfile
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import Payload
from torch import nn

import robustcnn
from robustcnn.cli import run_main
from robustcnn.errors import UsageError
from robustcnn.models.external.exported import Exported
from robustcnn.models.external.pt2_check import plain_size
from robustcnn.sweep import __main__ as sweep_cli

SUITE = '[[attack]]\nname = "fgsm"\ntype = "fgsm"\nnorm = "inf"\neps = [0.1]\n'
EVIL_C = '#include <stdio.h>\n__attribute__((constructor)) static void run(void) { fclose(fopen(MARKER, "w")); }\n'


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(4), nn.Flatten(), nn.Linear(196, 10)
    ).eval()


NETS_PY = "from torch import nn\n\ndef tiny():\n    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))\n"


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, Path]:
    """Real archives of a tiny CNN: with a dynamic batch (symbolic sizes in its JSON) and a fixed one."""
    root = tmp_path_factory.mktemp("archives")
    model, x = tiny_cnn(), torch.rand(4, 1, 28, 28)
    dynamic = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(dynamic, root / "dynamic.pt2")
    torch.export.save(torch.export.export(model, (x,)), root / "fixed.pt2")
    return {"dynamic": root / "dynamic.pt2", "fixed": root / "fixed.pt2"}


def edit_archive(source: Path, target: Path, edit: Callable[[str, bytes], bytes | None], add=None) -> Path:
    """A copy of a zip with each entry's bytes passed through edit(name, bytes) (None drops it), plus `add`."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        top = old.namelist()[0].split("/")[0]
        for info in old.infolist():
            data = edit(info.filename.partition("/")[2], old.read(info))
            if data is not None:
                new.writestr(info, data)
        for name, data in (add or {}).items():
            new.writestr(f"{top}/{name}", data)
    return target


def edit_json(entry: str, change: Callable[[dict], None]) -> Callable[[str, bytes], bytes]:
    def edit(name: str, data: bytes) -> bytes:
        if name != entry:
            return data
        tree = json.loads(data)
        change(tree)
        return json.dumps(tree).encode()

    return edit


def first_expression(program: dict) -> dict:
    """The first dict holding an expr_str (a symbolic size) in a program's JSON."""
    stack = [program]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "expr_str" in node:
                return node
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    raise AssertionError("no symbolic size in the archive: export it with a dynamic batch")


def first_node(program: dict) -> dict:
    return program["graph_module"]["graph"]["nodes"][0]


def sweep_refuses(tmp_path: Path, capsys, spec: str, *extra: str) -> str:
    """Runs the sweep CLI on `spec`; checks exit 2, one line, no traceback, nothing in --out; returns the line."""
    suite, out = tmp_path / "suite.toml", tmp_path / "out"
    suite.write_text(SUITE)
    argv = [spec, "--dataset", "mnist5k", "--suite", str(suite), "--out", str(out), "--n", "8", *extra]
    capsys.readouterr()
    code = run_main(sweep_cli.main, argv, name="robustcnn.sweep")
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err, err
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("robustcnn.sweep: error: "), err
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), "the refused sweep wrote to --out"
    return lines[0]


# --- .pt2: code that would run without pickle -------------------------------------------------------------


def sympy_payload(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


def test_the_size_expression_payload_really_runs_in_torch(archives, tmp_path):
    """Without this, 'the marker never appears' below would prove nothing."""
    marker = tmp_path / "MARKER"
    hostile = edit_archive(
        archives["dynamic"],
        tmp_path / "m.pt2",
        edit_json("models/model.json", lambda p: first_expression(p).update(expr_str=sympy_payload(marker))),
    )
    with pytest.raises(Exception):  # noqa: B017  (torch fails after the payload ran; how is not the point)
        torch.export.load(hostile)
    assert marker.exists()


def test_a_size_expression_with_code_is_refused_before_sympy_sees_it(archives, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    hostile = edit_archive(
        archives["dynamic"],
        tmp_path / "model.pt2",
        edit_json("models/model.json", lambda p: first_expression(p).update(expr_str=sympy_payload(marker))),
    )
    line = sweep_refuses(tmp_path, capsys, str(hostile))
    assert "model.pt2 has a size expression that is not a plain symbolic size" in line
    assert "__import__" in line and "allowed: symbols like s0" in line
    assert not marker.exists()


@pytest.mark.parametrize(
    "text",
    [
        "Symbol('s77', positive=True, integer=True)",
        "FloorDiv(Add(Symbol('s77', positive=True, integer=True), Integer(1)), Integer(2))",
        "Max(Integer(2), Mul(Integer(-1), Symbol('u0', integer=True)))",
        "s17 + 1",
        "Mod(s0, 3) * 2 - s1 // 4",
        "Equality(Symbol('s0', integer=True), Integer(4))",
    ],
)
def test_the_sizes_torch_writes_are_plain(text):
    assert plain_size(text)


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "Symbol('s0').__class__",
        "Symbol('os.system')",
        "Symbol('s0', positive=exec)",
        "Integer(2) ** Integer(10**9)",
        "Pow(Integer(10), Integer(100000000000))",
        "lambda: 0",
        "[s0 for s0 in range(10**12)]",
        "getattr(s0, 'x')",
        "s0 if s1 else s2",
        "'s0'",
        "Add(" * 400 + "s0" + ")" * 400,
    ],
)
def test_anything_else_in_a_size_expression_is_not(text):
    assert not plain_size(text)


def test_guards_code_is_dropped_never_run(archives, tmp_path):
    """torch execs guards_code into the module it builds, run on every forward: the archive's is not used."""
    marker = tmp_path / "MARKER"
    guard = f"open({str(marker)!r}, 'w') is not None"
    hostile = edit_archive(
        archives["dynamic"], tmp_path / "m.pt2", edit_json("models/model.json", lambda p: p.update(guards_code=[guard]))
    )
    x = torch.rand(3, 1, 28, 28)
    torch.export.load(hostile).module()(x)  # the payload runs when torch's own module is called
    assert marker.exists()
    marker.unlink()

    built = Exported().build(robustcnn.Model(str(hostile)), 10, False)
    assert torch.equal(built.net(x), tiny_cnn()(x))
    assert not marker.exists()


def compile_library(tmp_path: Path, marker: Path) -> bytes:
    """A shared library whose constructor creates the marker (placeholder bytes where no C compiler is found)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return b"\x7fELF not really a library"
    source = tmp_path / "evil.c"
    source.write_text(EVIL_C)
    library = tmp_path / "evil.so"
    subprocess.run([compiler, "-shared", "-fPIC", f'-DMARKER="{marker}"', "-o", str(library), str(source)], check=True)
    return library.read_bytes()


def test_an_aotinductor_library_is_refused_unopened(archives, tmp_path, capsys, monkeypatch):
    marker = tmp_path / "MARKER"
    library = compile_library(tmp_path, marker)
    add = {
        "data/aotinductor/model/model.wrapper.so": library,
        "data/aotinductor/model/model.wrapper_metadata.json": json.dumps({"AOTI_DEVICE_KEY": "cpu"}),
    }
    hostile = edit_archive(archives["fixed"], tmp_path / "model.pt2", lambda name, data: data, add)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))  # where torch's C++ loader would extract the library
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    line = sweep_refuses(tmp_path, capsys, str(hostile))
    assert "model.pt2 holds compiled code ('data/aotinductor/model/model.wrapper.so'" in line
    assert "ONNX or a builder with safetensors" in line
    assert not marker.exists()
    assert list(scratch.iterdir()) == []


def pickled_weights(marker: Path) -> Callable[[str, bytes], bytes]:
    """Weights flagged use_pickle, with a weight's bytes replaced by a pickle carrying code."""

    def edit(name: str, data: bytes) -> bytes:
        if name == "data/weights/model_weights_config.json":
            config = json.loads(data)
            for entry in config["config"].values():
                entry["use_pickle"] = True
            return json.dumps(config).encode()
        return pickle.dumps(Payload(marker)) if name.startswith("data/weights/weight_") else data

    return edit


def pickled_constant(marker: Path) -> tuple[Callable, dict]:
    def use_pickle(config: dict) -> None:
        meta = {"path_name": "tensor_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        config["config"]["c"] = meta

    edit = edit_json("data/constants/model_constants_config.json", use_pickle)
    return edit, {"data/constants/tensor_0": pickle.dumps(Payload(marker))}


def custom_object(prefix: str, marker: Path) -> tuple[Callable, dict]:
    def add(config: dict) -> None:
        config["config"]["obj"] = {"path_name": f"{prefix}0", "is_param": False, "use_pickle": True}

    edit = edit_json("data/constants/model_constants_config.json", add)
    return edit, {f"data/constants/{prefix}0": pickle.dumps(Payload(marker))}


def declared_elements(count: int) -> Callable[[str, bytes], bytes]:
    """The first weight declares `count` elements; its record keeps its few bytes (torch.zeros would allocate)."""

    def change(config: dict) -> None:
        meta = next(iter(config["config"].values()))["tensor_meta"]
        meta["sizes"], meta["strides"] = [{"as_int": count}], [{"as_int": 1}]

    return edit_json("data/weights/model_weights_config.json", change)


def node_target(target: str) -> Callable[[str, bytes], bytes]:
    return edit_json("models/model.json", lambda p: first_node(p).update(target=target))


PT2_CASES = {  # id: (make(marker) -> (edit, added entries), words in the line)
    "pickled-weights": (lambda m: (pickled_weights(m), {}), "model.pt2 holds pickled weights"),
    "pickled-constant": (pickled_constant, "model.pt2 holds pickled constants ('c')"),
    "torchbind-object": (lambda m: custom_object("custom_obj_", m), "custom object ('data/constants/custom_obj_0'"),
    "opaque-object": (lambda m: custom_object("opaque_obj_", m), "custom object ('data/constants/opaque_obj_0'"),
    "legacy-pickled-weights": (
        lambda m: (lambda n, d: d, {"data/weights/model.pt": pickle.dumps(Payload(m))}),
        "holds 'data/weights/model.pt', which torch.export.save does not write",
    ),
    "native-library-in-extra": (lambda m: (lambda n, d: d, {"extra/x.so": b"\x7fELF"}), "holds compiled code"),
    "custom-object-in-graph": (
        lambda m: (
            edit_json("models/model.json", lambda p: p["graph_module"]["graph"]["custom_obj_values"].update(o={})),
            {},
        ),
        "model.pt2 uses a custom object ('custom_obj_values'",
    ),
    "operator-outside-aten": (lambda m: (node_target("torch.serialization.os.system"), {}), "calls 'torch.serial"),
    "higher-order-operator": (lambda m: (node_target("torch.ops.higher_order.cond"), {}), "aten operators"),
    "aten-file-operator": (lambda m: (node_target("torch.ops.aten.from_file.default"), {}), "from_file"),
    "weight-larger-than-its-bytes": (
        lambda m: (declared_elements(10**12), {}),
        "declares 1000000000000 float32 elements",
    ),
    "sparse-weight": (
        lambda m: (
            edit_json(
                "data/weights/model_weights_config.json",
                lambda c: next(iter(c["config"].values()))["tensor_meta"].update(layout=1),
            ),
            {},
        ),
        "allowed: a dense (strided) cpu/cuda tensor",
    ),
}


@pytest.mark.parametrize("case", sorted(PT2_CASES))
def test_an_archive_part_torch_would_unpickle_or_run_is_refused(case, archives, tmp_path, capsys):
    marker = tmp_path / "MARKER"
    make, words = PT2_CASES[case]
    edit, add = make(marker)
    hostile = edit_archive(archives["fixed"], tmp_path / "model.pt2", edit, add)
    line = sweep_refuses(tmp_path, capsys, str(hostile))
    assert words in line, line
    assert not marker.exists()


def test_the_existing_kinds_of_archive_still_load(archives):
    x = torch.rand(4, 1, 28, 28)
    for path in archives.values():
        built = Exported().build(robustcnn.Model(str(path)), 10, False)
        assert torch.equal(built.net(x), tiny_cnn()(x))


def declare_size(path: Path, entry_suffix: str, size: int) -> None:
    """Edits a zip's central directory so that entries ending in `entry_suffix` declare `size` bytes."""
    data = bytearray(path.read_bytes())
    start = 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:
        name_length = struct.unpack_from("<H", data, start + 28)[0]
        name = bytes(data[start + 46 : start + 46 + name_length]).decode()
        if name.endswith(entry_suffix):
            struct.pack_into("<I", data, start + 24, size)
        start += 46
    path.write_bytes(bytes(data))


def test_an_archive_declaring_gigabytes_is_refused_before_it_is_read(archives, tmp_path, capsys):
    hostile = Path(shutil.copy(archives["fixed"], tmp_path / "model.pt2"))
    declare_size(hostile, "/weight_0", 0xF000_0000)
    declare_size(hostile, "/weight_1", 0xF000_0000)
    line = sweep_refuses(tmp_path, capsys, str(hostile))
    assert "model.pt2 expands to" in line and "more than the 4294967296 allowed" in line


# --- two loads at once: nothing process-wide is patched ----------------------------------------------------


def test_two_threads_loading_archives_share_nothing(archives, tmp_path):
    import torch.export.pt2_archive._package as package

    marker = tmp_path / "MARKER"
    hostile = edit_archive(archives["fixed"], tmp_path / "hostile.pt2", pickled_weights(marker))
    originals = (torch.load, torch._C._pickle_load_obj, package.pickle, pickle.loads)
    outcomes: dict[str, list[str]] = {"good": [], "hostile": []}

    def load(kind: str, path: Path) -> None:
        for _ in range(8):
            try:
                Exported().build(robustcnn.Model(str(path)), 10, False)
                outcomes[kind].append("loaded")
            except UsageError as error:
                outcomes[kind].append(str(error))

    threads = [threading.Thread(target=load, args=a) for a in (("good", archives["fixed"]), ("hostile", hostile))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (torch.load, torch._C._pickle_load_obj, package.pickle, pickle.loads) == originals
    assert not marker.exists()
    assert outcomes["good"] == ["loaded"] * 8, outcomes["good"]
    assert len(outcomes["hostile"]) == 8 and all("holds pickled weights" in o for o in outcomes["hostile"])


# --- weights files: tensors a model cannot take ------------------------------------------------------------


def user_weights(tmp_path: Path, change: Callable[[dict], None], suffix: str = ".pt") -> tuple[str, str]:
    """A builder spec and a weights file for it, with one tensor changed."""
    (tmp_path / "nets.py").write_text(NETS_PY)
    torch.manual_seed(0)
    state = dict(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).state_dict())
    change(state)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return f"{tmp_path}/nets.py:tiny", str(path)


WEIGHT_CASES = {  # id: (change, file suffix, words)
    "sparse": (lambda s: s.update({"1.weight": s["1.weight"].to_sparse()}), ".pt", "layout torch.sparse_coo"),
    "meta": (lambda s: s.update({"1.weight": s["1.weight"].to("meta")}), ".pt", "on the meta device"),
    "complex": (lambda s: s.update({"1.weight": s["1.weight"].to(torch.complex64)}), ".pt", "torch.complex64"),
    "bool": (lambda s: s.update({"1.bias": s["1.bias"] > 0}), ".pt", "1.bias as torch.bool"),
    "complex-safetensors": (
        lambda s: s.update({"1.weight": s["1.weight"].to(torch.complex64)}),
        ".safetensors",
        "torch.complex64",
    ),
    "integer-for-float": (lambda s: s.update({"1.bias": s["1.bias"].to(torch.int64)}), ".safetensors", "torch.int64"),
}


@pytest.mark.parametrize("case", sorted(WEIGHT_CASES))
def test_weights_of_the_wrong_layout_or_dtype_are_refused(case, tmp_path, capsys):
    change, suffix, words = WEIGHT_CASES[case]
    spec, weights = user_weights(tmp_path, change, suffix)
    line = sweep_refuses(tmp_path, capsys, spec, "--weights", weights)
    assert words in line, line
    assert "allowed: a dense (strided) tensor with data, of a floating dtype, as the model's (torch.float32)" in line


def test_weights_declaring_gigabytes_are_refused_before_torch_reads_them(tmp_path, capsys):
    spec, weights = user_weights(tmp_path, lambda s: None)
    declare_size(Path(weights), "/data/0", 0xF000_0000)
    declare_size(Path(weights), "/data/1", 0xF000_0000)
    line = sweep_refuses(tmp_path, capsys, spec, "--weights", weights)
    assert "weights.pt expands to" in line and "refused before reading it" in line


# --- ONNX -------------------------------------------------------------------------------------------------


def onnx_model(tmp_path: Path) -> Path:
    pytest.importorskip("onnx2torch")
    path = tmp_path / "model.onnx"
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    torch.onnx.export(model, (torch.rand(2, 1, 28, 28),), path, dynamo=False, input_names=["x"])
    return path


def test_an_onnx_file_from_the_future_is_one_line(tmp_path, capsys):
    import onnx

    path = onnx_model(tmp_path)
    graph = onnx.load(str(path))
    graph.ir_version = 99
    onnx.save(graph, str(path))
    line = sweep_refuses(tmp_path, capsys, str(path))
    assert "model.onnx has ONNX ir_version 99" in line and "this onnx reads 1.." in line


def test_an_onnxruntime_failure_is_one_line(tmp_path, capsys, monkeypatch):
    onnxruntime = pytest.importorskip("onnxruntime")
    path = onnx_model(tmp_path)

    def fail(*args, **kwargs):
        raise onnxruntime.capi.onnxruntime_pybind11_state.Fail("[ONNXRuntimeError] : 1 : FAIL : Load model failed")

    monkeypatch.setattr(onnxruntime, "InferenceSession", fail)
    line = sweep_refuses(tmp_path, capsys, str(path))
    assert "onnxruntime cannot run" in line and "model.onnx: [ONNXRuntimeError] : 1 : FAIL" in line
