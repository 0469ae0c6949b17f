"""A `torch.export.save` archive checked with the standard library before torch reads a byte of it.

`torch.export.load` can run code from an archive through more than pickle: it unpickles weights, constants and
sample inputs flagged so (falling back to `torch.load(weights_only=False)`), rebuilds custom objects (torchbind,
opaque), `eval`s every symbolic size expression through `sympy.sympify`, `exec`s `guards_code` when the module is
built and on every forward, and dlopens AOTInductor libraries (`data/aotinductor/.../*.so`). So `checked_archive`
opens the file as a zip, allows only the entries `torch.export.save` writes for one model, parses the JSON here,
and refuses whatever would reach one of those paths. What torch then reads is an in-memory copy of exactly the
bytes checked here, with `guards_code` dropped (it only re-checks input shapes) and the sample inputs emptied (a
pickle, not needed to run the model): nothing in it is unpickled, evaluated or executed, so torch is not patched.
"""

from __future__ import annotations

import ast
import hashlib
import io
import json
import math
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustcnn.errors import UsageError, last_line
from robustcnn.models.external.weights import MAX_TENSOR_BYTES

MODEL = "model"  # torch.export.save writes one program, under this name; torch.export.load returns only it
INSTEAD = (
    "export without pickled or compiled parts (plain torch.export.save), or give ONNX or a builder with safetensors"
)
NATIVE_CODE = (".so", ".dll", ".dylib", ".pyd")  # loading one runs its constructor
REQUIRED_ENTRIES = {  # what torch reads of an archive besides tensors, under the archive's one top folder
    "archive_version",
    f"models/{MODEL}.json",
    f"data/weights/{MODEL}_weights_config.json",
    f"data/constants/{MODEL}_constants_config.json",
    f"data/sample_inputs/{MODEL}.pt",
}
EXACT_ENTRIES = {*REQUIRED_ENTRIES, "archive_format", "byteorder", ".data/version", ".data/serialization_id"}
TENSOR_ENTRY = re.compile(r"data/(weights/weight|constants/tensor)_\d+")  # raw bytes, described by the configs
EXTRA_ENTRY = re.compile(r"extra/[\w.-]+")  # torch.export.save(extra_files=...): text torch only hands back
PAYLOAD_DTYPES = {  # torch._export.serde.schema.ScalarType value -> (name, bytes per element); no complex
    1: ("uint8", 1),
    2: ("int8", 1),
    3: ("int16", 2),
    4: ("int32", 4),
    5: ("int64", 8),
    6: ("float16", 2),
    7: ("float32", 4),
    8: ("float64", 8),
    12: ("bool", 1),
    13: ("bfloat16", 2),
}
STRIDED = 7  # torch._export.serde.schema.Layout.Strided; sparse layouts are refused
DEVICES = ("cpu", "cuda")  # a "meta" weight has no data

# Symbolic sizes: torch writes them with sympy's srepr, e.g. "FloorDiv(Add(Symbol('s77', positive=True,
# integer=True), Integer(1)), Integer(2))"; older archives wrote "s77 + 1". These are all that a CNN's sizes need.
SIZE_FUNCTIONS = {"Symbol", "Integer", "Add", "Mul", "Max", "Min"}
DIVISIONS = {"FloorDiv", "Mod", "PythonMod", "CleanDiv", "CeilDiv"}  # torch's integer division and remainder
RELATIONS = {"Equality", "Unequality", "StrictLessThan", "LessThan", "StrictGreaterThan", "GreaterThan"}
LOGIC = {"And", "Or", "Not"}  # sym_bool expressions (e.g. a shape check kept in the graph)
SYMBOL = re.compile(r"[a-z]{1,4}\d{1,9}")  # s77 (a size), u0 (from data): the names torch gives symbols
ASSUMPTIONS = {"positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite", "zero", "nonzero"}
MAX_EXPRESSION_CHARS = 1000  # real ones are under 200; sympy's time and ast's recursion grow with length
MAX_INTEGER = 2**63  # sizes are int64
SIZE_OPERATORS = (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod)  # no ** or <<: a huge power never finishes

# Node targets: aten operators and the size arithmetic torch puts in graphs (serialize._SYM_OPS without pow and
# shifts). Higher-order operators (torch.ops.higher_order.*) and extension operators ("#...") are refused.
ATEN_TARGET = re.compile(r"torch\.ops\.aten\.\w+\.\w+")
FILE_OPERATORS = {"from_file", "save"}  # aten operators that read or write a file named in the graph
SIZE_TARGETS = {
    *(f"_operator.{name}" for name in ("add", "sub", "mul", "floordiv", "truediv", "mod", "neg", "pos")),
    *(f"_operator.{name}" for name in ("eq", "ne", "lt", "le", "gt", "ge", "and_", "or_")),
    *(f"torch.sym_{name}" for name in ("float", "int", "ite", "max", "min", "not")),
    "torch._sym_sqrt",
    "math.trunc",
}


@dataclass(frozen=True)
class CheckedArchive:
    data: io.BytesIO  # the checked archive, cleaned, for load_pt2
    sha256: str  # of the file as read, so the identity is of the bytes that were checked


def checked_archive(path: Path) -> CheckedArchive:
    """The archive at `path`, checked and cleaned, in memory; UsageError (one line) if refused."""
    raw = _read_file(path)
    sha256 = hashlib.sha256(raw).hexdigest()
    entries = _read_entries(path, raw)
    del raw  # the entries are a copy: at most two copies of a large archive at a time
    for name in entries:
        _check_entry_name(path, name)
    missing = sorted(REQUIRED_ENTRIES - entries.keys())
    if missing:
        raise UsageError(f"cannot load {path} as a torch.export archive: it has no {missing[0]}")
    for kind in ("weights", "constants"):
        _check_payloads(path, entries, kind)
    program = _json(path, entries, f"models/{MODEL}.json")
    _check_program(path, program)
    program["guards_code"] = []
    entries[f"models/{MODEL}.json"] = json.dumps(program).encode()
    entries[f"data/sample_inputs/{MODEL}.pt"] = b""
    return CheckedArchive(_write(entries), sha256)


def _read_file(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_TENSOR_BYTES:
            raise UsageError(f"{path} is {size} bytes, more than the {MAX_TENSOR_BYTES} allowed for a model file")
        return path.read_bytes()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or last_line(error)}") from None


def _read_entries(path: Path, raw: bytes) -> dict[str, bytes]:
    """Every entry, named without the archive's top folder, after checking the sizes they declare."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            infos = archive.infolist()
            _check_sizes(path, infos)
            tops = {info.filename.partition("/")[0] for info in infos}
            if len(tops) != 1 or any("/" not in info.filename for info in infos):
                raise UsageError(f"cannot load {path} as a torch.export archive: its entries are not in one folder")
            entries = {info.filename.partition("/")[2]: archive.read(info) for info in infos}
    except (zipfile.BadZipFile, EOFError, NotImplementedError, RuntimeError) as error:  # RuntimeError: encrypted
        raise UsageError(f"cannot load {path} as a torch.export archive: {last_line(error)}") from None
    if len(entries) != len(infos):
        raise UsageError(f"{path} names an entry twice; refused (torch and this check could read different ones)")
    return entries


def _check_sizes(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    """Before anything is decompressed: a small compressed entry may declare gigabytes."""
    total = sum(info.file_size for info in infos)
    if total > MAX_TENSOR_BYTES:
        raise UsageError(
            f"{path} expands to {total} bytes, more than the {MAX_TENSOR_BYTES} allowed for a model file; refused"
        )


def _check_entry_name(path: Path, name: str) -> None:
    if name.lower().endswith(NATIVE_CODE) or name.startswith("data/aotinductor/"):
        raise UsageError(
            f"{path} holds compiled code ({name!r}: AOTInductor or a native library); refused: loading it runs it; "
            f"{INSTEAD}"
        )
    if name.startswith("data/constants/custom_obj_") or name.startswith("data/constants/opaque_obj_"):
        raise UsageError(f"{path} holds a custom object ({name!r}: torchbind or opaque); refused: {INSTEAD}")
    if name not in EXACT_ENTRIES and not TENSOR_ENTRY.fullmatch(name) and not EXTRA_ENTRY.fullmatch(name):
        raise UsageError(
            f"{path} holds {name!r}, which torch.export.save does not write for one model; refused: {INSTEAD}"
        )


def _json(path: Path, entries: dict[str, bytes], name: str) -> Any:
    try:
        return json.loads(entries[name])
    except (ValueError, RecursionError) as error:
        raise UsageError(f"cannot load {path} as a torch.export archive: {name} is not JSON ({error})") from None


def _check_payloads(path: Path, entries: dict[str, bytes], kind: str) -> None:
    """Each weight or constant is raw bytes (not a pickle, not an object) that hold every element it declares."""
    folder = f"data/{kind}/"
    config = _json(path, entries, f"{folder}{MODEL}_{kind}_config.json")
    items = config.get("config") if isinstance(config, dict) else None
    if not isinstance(items, dict):
        raise UsageError(f"cannot load {path} as a torch.export archive: {folder} has no config of tensors")
    for fqn, meta in items.items():
        meta = meta if isinstance(meta, dict) else {}
        if meta.get("use_pickle") is not False:
            raise UsageError(f"{path} holds pickled {kind} ({fqn!r}); refused: unpickling could run code; {INSTEAD}")
        record = f"{folder}{meta.get('path_name')}"
        if not TENSOR_ENTRY.fullmatch(record) or record not in entries:
            raise UsageError(f"{path}: {kind} {fqn!r} is stored as {record!r}, not as raw tensor bytes; refused")
        _check_tensor_meta(path, f"{kind} {fqn!r}", meta.get("tensor_meta"), len(entries[record]))


def _check_tensor_meta(path: Path, what: str, meta: Any, stored: int) -> None:
    meta = meta if isinstance(meta, dict) else {}
    dtype = PAYLOAD_DTYPES.get(meta.get("dtype"))
    device = (meta.get("device") or {}).get("type") if isinstance(meta.get("device"), dict) else None
    if dtype is None or meta.get("layout") != STRIDED or device not in DEVICES:
        raise UsageError(
            f"{path}: {what} has dtype code {meta.get('dtype')}, layout code {meta.get('layout')} and device "
            f"{device!r}; allowed: a dense (strided) {'/'.join(DEVICES)} tensor of a real number or bool dtype"
        )
    sizes, strides = _ints(meta.get("sizes")), _ints(meta.get("strides"))
    offset = _ints([meta.get("storage_offset")])
    if sizes is None or strides is None or offset is None or len(sizes) != len(strides):
        raise UsageError(f"{path}: {what} has sizes or strides that are not whole numbers >= 0; refused")
    numel = math.prod(sizes)
    extent = 0 if numel == 0 else offset[0] + sum((n - 1) * s for n, s in zip(sizes, strides, strict=True)) + 1
    name, width = dtype
    if extent * width > stored or numel * width > MAX_TENSOR_BYTES:
        raise UsageError(
            f"{path}: {what} declares {numel} {name} elements ({extent * width} bytes) but its record holds {stored} "
            "bytes; refused"
        )


def _ints(values: Any) -> list[int] | None:
    """[{"as_int": 3}, ...] -> [3, ...]; None if any is not a plain int >= 0."""
    if not isinstance(values, list):
        return None
    out = [v.get("as_int") if isinstance(v, dict) else None for v in values]
    return out if all(type(v) is int and 0 <= v < MAX_INTEGER for v in out) else None  # type: ignore[return-value]


def _check_program(path: Path, program: Any) -> None:
    """Walks all of models/model.json: every size expression, every operator, no custom objects."""
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise UsageError(f"cannot load {path} as a torch.export archive: models/{MODEL}.json is not a program")
    for key, value in _items(program):
        if "custom_obj" in key and value:
            raise UsageError(f"{path} uses a custom object ({key!r}: torchbind or opaque); refused: {INSTEAD}")
        if key == "expr_str" and not (isinstance(value, str) and plain_size(value)):
            shown = str(value)[:80]
            raise UsageError(
                f"{path} has a size expression that is not a plain symbolic size ({shown!r}); refused: torch "
                "evaluates it with sympy; allowed: symbols like s0, integers, + - * // %, Max, Min, FloorDiv, Mod"
            )
        if key in ("target", "as_operator") and not _known_operator(value):
            raise UsageError(
                f"{path} calls {str(value)[:80]!r}; refused: an archive may use aten operators "
                f"(torch.ops.aten.*) and size arithmetic only; {INSTEAD}"
            )


def _items(tree: Any) -> Iterator[tuple[str, Any]]:
    """(key, value) of every dict inside `tree`, however deep (iteratively: the JSON may be deep)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                yield str(key), value
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def _known_operator(target: Any) -> bool:
    if not isinstance(target, str):
        return False
    if ATEN_TARGET.fullmatch(target):
        return target.split(".")[3] not in FILE_OPERATORS
    return target in SIZE_TARGETS


def plain_size(text: str) -> bool:
    """Whether `text` is a symbolic size sympy can read without running anything but sympy's size arithmetic."""
    if len(text) > MAX_EXPRESSION_CHARS:
        return False
    try:
        return _size_node(ast.parse(text, mode="eval").body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False


def _size_node(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return type(node.value) is int and abs(node.value) < MAX_INTEGER
    if isinstance(node, ast.Name):
        return bool(SYMBOL.fullmatch(node.id)) or node.id in ("true", "false")
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, (ast.USub, ast.UAdd)) and _size_node(node.operand)
    if isinstance(node, ast.BinOp):
        return isinstance(node.op, SIZE_OPERATORS) and _size_node(node.left) and _size_node(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return _size_call(node.func.id, node)
    return False


def _size_call(name: str, node: ast.Call) -> bool:
    if name == "Symbol":
        first = node.args[0] if len(node.args) == 1 else None
        named = isinstance(first, ast.Constant) and isinstance(first.value, str) and SYMBOL.fullmatch(first.value)
        flags = all(
            k.arg in ASSUMPTIONS and isinstance(k.value, ast.Constant) and type(k.value.value) is bool
            for k in node.keywords
        )
        return bool(named) and flags
    if name in SIZE_FUNCTIONS | DIVISIONS | RELATIONS | LOGIC:
        return not node.keywords and 0 < len(node.args) <= 64 and all(_size_node(arg) for arg in node.args)
    return False


def _write(entries: dict[str, bytes]) -> io.BytesIO:
    """A zip of `entries` under one top folder, as torch's archive reader expects (stored, not compressed)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(f"{MODEL}/{name}", data)
    buffer.seek(0)
    return buffer
