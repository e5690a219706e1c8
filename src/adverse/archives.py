"""Model archives (``torch.export`` ``.pt2``, TorchScript, ``torch.save`` zips) checked before torch reads them.

``.pt2`` and TorchScript files carry code: torch's own loaders unpickle some of their members with full pickle
(``torch.export.load`` does so for any weight or constant whose config says ``use_pickle``, for custom and
opaque objects, and as a fallback for sample inputs), evaluate strings from the graph (``sympy.sympify`` of
shape expressions, ``exec`` of guard code and of the generated ``forward``), and TorchScript runs the archive's
own code while loading (``__setstate__``) and when called (``forward``). So before anything reaches torch,
:func:`open_archive` reads the archive itself — its central directory and the members that hold code or metadata,
never the weights, never extracted to disk — and :func:`check_exported_program` / :func:`check_torchscript`
refuse, with a :class:`~adverse.errors.ModelError` naming the file, the member and the fix:

* any archive beyond the limits (``MAX_MEMBERS`` members, ``MAX_DECLARED_BYTES`` uncompressed, members
  compressed more than ``MAX_RATIO``:1 — a zip bomb —, a central directory over ``MAX_DIRECTORY_BYTES``,
  members torch would see differently: duplicates, names outside the archive's one root folder, links,
  encrypted members, a member list that differs from torch's own reader's);
* ``.pt2``: any member torch would read that is not a JSON file checked here, a raw tensor payload named by a
  weights or constants config, or extra text (``extra/``) — so no AOTInductor shared library, no legacy
  pickled weights; a config entry marked ``use_pickle`` (torch loads it with ``weights_only=False``); a
  constant that is a custom or opaque object (unpickled by ``torch._C._pickle_load_obj`` / ``pickle.loads``);
  sample inputs that do not load with ``torch.load(weights_only=True)`` (torch would retry with full pickle);
  a graph node whose target is outside :func:`op_allowed` (custom namespaces, extension operators, file,
  process and network operators such as ``aten::from_file`` and ``aten::save``); a symbolic-shape expression
  or guard that is not a plain arithmetic expression over the allowed names (they are ``eval``'d); a
  parameter, buffer or node name with a quote, backslash or control character, or a forward argument name
  that is not an identifier (torch.fx pastes them into the Python code it generates and runs);
* TorchScript: a code file (``code/**.py``, compiled and run by torch, including ``__setstate__`` at load
  time) that does not parse, or that names an operator outside :func:`op_allowed` (``torch.X`` is ``aten::X``,
  ``ops.NS.X`` is ``NS::X``), a TorchBind class (``__torch__.torch.classes``, native code), or ``print``; a
  pickle member (``data.pkl``, ``constants.pkl``, debug info) that refers to anything but TorchScript classes
  of the archive, tensors and storages; legacy archives (``model.json``, ``attributes.pkl``).

The pure operators (:func:`op_allowed`) are every operator registered in torch's ``aten``, ``prims`` and
``prim`` namespaces except those in ``DENIED_OPS`` (files, printing, RPC), plus the symbolic-integer helpers
``torch.export`` itself serializes (``operator.add``, ``torch.sym_max``, ...) and the control-flow
higher-order operators whose bodies are checked the same way (``HIGHER_ORDER_ALLOWED``). ``trust_code=True``
(``--trust-code``) skips these checks for a file the user trusts; the size limits still apply.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import json
import pickletools
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelError

MAX_MEMBERS = 65_536  # members in one archive (a large TorchScript model holds a few thousand)
MAX_DIRECTORY_BYTES = 64 * 2**20  # the zip central directory, read before anything else
MAX_DECLARED_BYTES = 64 * 2**30  # the sum of the members' uncompressed sizes
MAX_RATIO = 200  # uncompressed / compressed size of one member above 1 MiB (genuine archives are stored or text)
MAX_READ_BYTES = 256 * 2**20  # one member read for inspection (JSON, code, pickles, sample inputs)
MAX_READ_TOTAL = 1024 * 2**20  # all members read for inspection
HINT = ("if you trust the file and its author, pass trust_code=True (--trust-code); otherwise save the weights with "
        "safetensors and name the architecture (--arch)")

DENIED_OPS = frozenset({
    "from_file", "save", "_print", "Print", "load_tensor",  # files and printing (stdout belongs to --json)
    "rpc_async", "rpc_sync", "rpc_remote", "to_here", "local_value", "owner", "owner_name", "is_owner",
    "confirmed_by_owner",  # remote calls
})
PURE_NAMESPACES = ("aten", "prims", "prim")
HIGHER_ORDER_ALLOWED = frozenset({"cond", "while_loop", "map_impl", "scan", "wrap_with_set_grad_enabled",
                                  "wrap_with_autocast"})
SAFE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*\Z")
UNSAFE_IN_NAME = re.compile(r"[\"'\\\x00-\x1f\x7f]")  # what could end the string torch.fx pastes a name into
SAFE_STRING = re.compile(r"[A-Za-z0-9_ .\-]*\Z")
SYMBOL = re.compile(r"[a-z]+[0-9]+\Z")
# names a symbolic-shape expression (sympy.sympify) or a guard (exec) may use
SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Mod", "Abs", "floor", "ceiling",
    "sqrt", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan",
    "Equality", "Unequality", "And", "Or", "Not", "Piecewise", "ITE", "true", "false", "oo", "zoo", "nan",
    "int_oo", "IntInfinity", "NegativeIntInfinity", "Infinity", "NegativeInfinity", "Zero", "One", "NegativeOne",
    "Half", "BooleanTrue", "BooleanFalse",
    # torch.utils._sympy.functions, as the export deserializer passes them to sympify
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat",
    "Identity", "OpaqueUnaryFn_sqrt", "BitwiseFn_bitwise_and", "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor",
})
GUARD_NAMES = SYMPY_NAMES | {"L", "math", "inf", "int", "float", "abs", "min", "max"}
GUARD_ATTRS = frozenset({"size", "stride", "storage_offset", "dim", "numel"})
MATH_ATTRS = frozenset({"inf", "nan", "isnan", "isinf", "floor", "ceil", "trunc", "sqrt"})
POW_LIKE = frozenset({"Pow", "PowByNatural", "FloatPow", "LShift", "RShift"})
TS_PICKLE_GLOBALS = {"collections": {"OrderedDict"}, "torch.jit._pickle": None, "torch._utils": None}


def _refuse(path: Path, problem: str) -> ModelError:
    return ModelError(f"{path} {problem}; {HINT}")


# --------------------------------------------------------------------------------------------- the zip itself
@dataclass
class Archive:
    """A zip model archive's members, checked against the limits; members are read through torch's reader."""

    path: Path
    root: str
    members: dict[str, zipfile.ZipInfo]  # name below the root folder -> its entry
    _reader: Any = None
    _read: int = 0
    _cache: dict[str, bytes] = field(default_factory=dict)

    def has(self, name: str) -> bool:
        return name in self.members

    def read(self, name: str) -> bytes:
        """A member's bytes (at most ``MAX_READ_BYTES``), as torch's own zip reader sees them."""
        if name in self._cache:
            return self._cache[name]
        if name not in self.members:
            raise ModelError(f"{self.path} lacks the member {self.root}/{name}; it is not a complete torch archive")
        size = self.members[name].file_size
        if size > MAX_READ_BYTES or self._read + size > MAX_READ_TOTAL:
            raise ModelError(f"{self.path}: member {self.root}/{name} is {size} bytes, more than adverse reads to "
                             f"check an archive ({MAX_READ_BYTES} per member, {MAX_READ_TOTAL} in all); "
                             f"{HINT}")
        self._read += size
        try:
            data = bytes(self._reader.get_record(name)) if self._reader is not None else b""
        except Exception as e:  # torch's reader raises RuntimeError for damaged members (CRC, sizes)
            raise ModelError(f"{self.path}: member {self.root}/{name} cannot be read ({e}); the file is damaged") from e
        if len(data) != size:
            raise ModelError(f"{self.path}: member {self.root}/{name} holds {len(data)} bytes but its entry says "
                             f"{size}; the file is damaged or doctored")
        self._cache[name] = data
        return data

    def text(self, name: str) -> str:
        try:
            return self.read(name).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ModelError(f"{self.path}: member {self.root}/{name} is not UTF-8 text ({e})") from e


def _directory(fp: Any, path: Path) -> None:
    """Refuse a zip whose end record announces more members or a larger central directory than the limits,
    before :mod:`zipfile` parses (and allocates for) the directory."""
    try:
        end = zipfile._EndRecData(fp)  # type: ignore[attr-defined]  # (stdlib; reads the last 64 KiB only)
    except OSError as e:
        raise ModelError(f"{path} cannot be read ({e})") from e
    if end is None:
        raise ModelError(f"{path} is not a zip archive (no end-of-directory record); it is not a torch archive")
    count, size = end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
    if count > MAX_MEMBERS or size > MAX_DIRECTORY_BYTES:
        raise ModelError(f"{path} declares {count} members in a {size}-byte directory, more than a model archive "
                         f"holds (at most {MAX_MEMBERS} members, {MAX_DIRECTORY_BYTES} bytes); refused unread")


def open_archive(path: str | Path) -> Archive:
    """The archive at ``path`` (a regular file), after the checks on its directory that need no trust: limits on
    members and sizes (zip bombs), one root folder, no duplicate, linked or encrypted member, and the same
    member list as torch's own reader sees (:class:`ModelError` otherwise)."""
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"{p} is not a regular file; give the path of a model file")
    file_size = p.stat().st_size
    with p.open("rb") as fp:
        _directory(fp, p)
        try:
            with zipfile.ZipFile(fp) as z:
                infos = z.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
            raise ModelError(f"{p} is not a valid zip archive ({e})") from e
    if len(infos) > MAX_MEMBERS:
        raise ModelError(f"{p} holds {len(infos)} members, more than {MAX_MEMBERS}; refused unread")
    members: dict[str, zipfile.ZipInfo] = {}
    roots = set()
    declared = 0
    for info in infos:
        name = info.filename
        kind = stat.S_IFMT(info.external_attr >> 16)
        if info.flag_bits & 0x1:
            raise ModelError(f"{p}: member {name} is encrypted; a torch archive never is")
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR) or (kind == stat.S_IFDIR) != name.endswith("/"):
            raise ModelError(f"{p}: member {name} is not a regular file (a link or device entry); refused")
        if name.endswith("/"):
            continue
        root, sep, rest = name.partition("/")
        if not sep or not rest or "\\" in name or name.startswith("/"):
            raise ModelError(f"{p}: member {name!r} is not inside the archive's root folder; a torch archive keeps "
                             "every member in one folder")
        roots.add(root)
        if rest in members:
            raise ModelError(f"{p}: member {name} appears twice; torch and adverse might read different copies")
        members[rest] = info
        declared += info.file_size
        if info.file_size > 2**20 and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            raise ModelError(f"{p}: member {name} expands {info.compress_size} bytes to {info.file_size} (more "
                             f"than {MAX_RATIO}:1), a zip bomb; refused unread")
    if len(roots) > 1:
        raise ModelError(f"{p} has {len(roots)} root folders ({', '.join(sorted(roots)[:3])}, ...); a torch archive "
                         "has one")
    if declared > MAX_DECLARED_BYTES or declared > 16 * file_size + 2**26:
        raise ModelError(f"{p}: its members declare {declared} bytes uncompressed from a {file_size}-byte file "
                         f"(limit {MAX_DECLARED_BYTES}, and at most 16× the file), a zip bomb; refused unread")
    archive = Archive(p, roots.pop() if roots else "", members)
    archive._reader = _torch_reader(p, archive)
    return archive


def _torch_reader(p: Path, archive: Archive) -> Any:
    """torch's own zip reader on the file, checked to list the same members with the same sizes."""
    import torch

    try:
        reader = torch._C.PyTorchFileReader(str(p))
        records = set(reader.get_all_records())
    except Exception as e:  # RuntimeError from torch's zip reader
        raise ModelError(f"{p} is not a torch archive torch can read ({e})") from e
    if records != set(archive.members):
        odd = sorted(records.symmetric_difference(archive.members))[:3]
        raise ModelError(f"{p}: torch's zip reader and Python's zipfile list different members ({', '.join(odd)}); "
                         "the archive is malformed or doctored")
    for name, info in archive.members.items():
        if reader.get_record_size(name) != info.file_size:
            raise ModelError(f"{p}: member {name} has different sizes for torch's reader and zipfile; the archive "
                             "is malformed or doctored")
    return reader


def kind(archive: Archive) -> str:
    """``"pt2"``, ``"torchscript"`` or ``"torch.save"``: what torch would take the archive for."""
    if archive.has("archive_format"):
        return "pt2"
    if archive.has("constants.pkl") or any(n.startswith("code/") for n in archive.members):
        return "torchscript"  # torch.load dispatches an archive with constants.pkl to torch.jit.load
    return "torch.save"


def sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_nested_zip(data: bytes, where: str) -> None:
    """The limits of :func:`open_archive` for a zip held in memory (a ``torch.save`` file inside an archive)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError) as e:
        raise ModelError(f"{where} is not a valid torch.save file ({e})") from e
    declared = sum(i.file_size for i in infos)
    if len(infos) > MAX_MEMBERS or declared > 16 * len(data) + 2**26:
        raise ModelError(f"{where} declares {declared} bytes in {len(infos)} members from {len(data)} bytes, a zip "
                         "bomb; refused unread")


# --------------------------------------------------------------------------------------------- operators
@functools.lru_cache(maxsize=1)
def _registered() -> frozenset[tuple[str, str]]:
    import torch
    import torch._prims  # registers the prims namespace

    names = set()
    for schema in torch._C._jit_get_all_schemas():
        ns, _, name = schema.name.partition("::")
        names.add((ns, name))
    return frozenset(names)


def op_allowed(namespace: str, name: str) -> str | None:
    """None when ``namespace::name`` is a pure tensor operator, else why not."""
    if namespace not in PURE_NAMESPACES:
        return f"operator {namespace}::{name} is outside the pure namespaces ({', '.join(PURE_NAMESPACES)})"
    if name in DENIED_OPS:
        return f"operator {namespace}::{name} reads or writes files, prints or calls other machines"
    if (namespace, name) not in _registered():
        return f"operator {namespace}::{name} is not a registered torch operator"
    return None


@functools.lru_cache(maxsize=1)
def _sym_ops() -> frozenset[str]:
    """The symbolic-integer helpers as ``torch.export`` serializes them (``_operator.add``, ``torch.sym_max``)."""
    try:
        from torch._export.serde.serialize import _SYM_OPS

        return frozenset(f"{f.__module__}.{f.__name__}" for f in _SYM_OPS)
    except (ImportError, AttributeError):  # a torch without that table: the ones torch 2.13 has
        ops = ["eq", "ne", "le", "ge", "lt", "gt", "neg", "pos", "mul", "add", "sub", "floordiv", "mod", "pow",
               "truediv", "and_", "or_", "lshift", "rshift"]
        return frozenset([f"_operator.{o}" for o in ops] + ["math.trunc"]
                         + [f"torch.sym_{o}" for o in ("not", "int", "float", "ite", "max", "min", "sqrt")])


def _target_problem(target: Any) -> str | None:
    """None when a serialized graph node's target is allowed, else why not."""
    if not isinstance(target, str):
        return f"a node target of type {type(target).__name__}"
    if target in _sym_ops() or target == "_operator.getitem":
        return None
    parts = target.split(".")
    if parts[:2] == ["torch", "ops"] and len(parts) in (4, 5):
        ns, name = parts[2], parts[3]
        if ns == "higher_order":
            return None if name in HIGHER_ORDER_ALLOWED and len(parts) == 4 else \
                f"higher-order operator {name} is not one of {', '.join(sorted(HIGHER_ORDER_ALLOWED))}"
        return op_allowed(ns, name)
    return f"target {target!r} is not a torch operator"


# --------------------------------------------------------------------------------------------- expressions
def _expression_problem(text: Any, names: frozenset[str], guard: bool) -> str | None:
    """None when ``text`` is a plain arithmetic expression over ``names`` (and symbols), safe to ``eval``."""
    if not isinstance(text, str) or len(text) > 10_000:
        return "an expression that is not a short string"
    if any(c in text for c in "#\\\n\r"):  # torch pastes guards into code: no comment, escape or line break
        return f"expression {text[:80]!r} holds a comment, backslash or line break"
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return f"expression {text[:80]!r} does not parse"
    allowed_nodes = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.Call, ast.Name,
                     ast.Constant, ast.keyword, ast.Tuple, ast.Load, ast.operator, ast.unaryop, ast.boolop,
                     ast.cmpop, ast.Subscript, ast.Attribute)
    try:
        nodes = list(ast.walk(tree))
    except RecursionError:
        return "an expression nested too deeply"
    for node in nodes:
        if not isinstance(node, allowed_nodes) or isinstance(node, (ast.MatMult, ast.In, ast.NotIn, ast.BitXor)):
            return f"expression {text[:80]!r} uses {type(node).__name__}"
        if isinstance(node, ast.Name) and node.id not in names and not SYMBOL.match(node.id):
            return f"expression {text[:80]!r} names {node.id!r}"
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, str) and not (SAFE_STRING.match(v) and (guard or SAFE_NAME.match(v))):
                return f"expression {text[:80]!r} holds the string {v[:40]!r}"
            if isinstance(v, int) and not isinstance(v, bool) and abs(v) > 2**63:
                return f"expression {text[:80]!r} holds a huge number"
            if not isinstance(v, (str, int, float, bool, type(None))):
                return f"expression {text[:80]!r} holds a {type(v).__name__} constant"
        if isinstance(node, ast.keyword) and (node.arg is None or node.arg.startswith("_")):
            return f"expression {text[:80]!r} passes **kwargs or a private keyword"
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                if f.id not in names or f.id in ("L", "math"):
                    return f"expression {text[:80]!r} calls {f.id!r}"
                if f.id in POW_LIKE and len(node.args) == 2 and not _small_exponent(node.args[1]):
                    return f"expression {text[:80]!r} raises to a large constant power"
            elif not (guard and isinstance(f, ast.Attribute)):
                return f"expression {text[:80]!r} calls something other than a named function"
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Pow, ast.LShift, ast.RShift)) \
                and not _small_exponent(node.right):
            return f"expression {text[:80]!r} raises to a large constant power"
        if isinstance(node, (ast.Subscript, ast.Attribute)) and not guard:
            return f"expression {text[:80]!r} uses {type(node).__name__}"
        if isinstance(node, ast.Attribute):
            base = node.value
            if isinstance(base, ast.Name) and base.id == "math":
                if node.attr not in MATH_ATTRS:
                    return f"guard {text[:80]!r} uses math.{node.attr}"
            elif node.attr not in GUARD_ATTRS or not _rooted_at_l(base):
                return f"guard {text[:80]!r} uses the attribute {node.attr!r}"
        if isinstance(node, ast.Subscript) and not _rooted_at_l(node.value):
            return f"guard {text[:80]!r} indexes something other than the inputs"
    return None


def _small_exponent(node: ast.AST) -> bool:
    """Exponents and shifts: one small constant (sympy would compute 2**10**10 exactly), or an expression with a
    symbol (it stays symbolic)."""
    if any(isinstance(n, ast.Name) and SYMBOL.match(n.id) for n in ast.walk(node)):
        return True
    while isinstance(node, ast.UnaryOp):
        node = node.operand
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("Integer", "Float") \
            and len(node.args) == 1 and not node.keywords:
        node = node.args[0]
    return isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and abs(node.value) <= 64


def _rooted_at_l(node: ast.AST) -> bool:
    """``L[...]``, ``L[...].size()[0]``, ...: the guard's inputs."""
    while True:
        if isinstance(node, ast.Name):
            return node.id == "L"
        if isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Call) and not node.args and not node.keywords:
            node = node.func
        elif isinstance(node, ast.Attribute) and node.attr in GUARD_ATTRS:
            node = node.value
        else:
            return False


# --------------------------------------------------------------------------------------------- .pt2
NAME_KEYS = ("name", "fqn", "parameter_name", "buffer_name", "tensor_constant_name", "custom_obj_name",
             "user_input_name", "user_output_name", "gradient_name", "target")


def _walk_json(doc: Any) -> Any:
    """Every (key, value, parent) in a JSON document, without recursion (a deep document cannot crash it)."""
    stack: list[tuple[Any, Any, Any]] = [(None, doc, None)]
    while stack:
        key, value, parent = stack.pop()
        yield key, value, parent
        if isinstance(value, dict):
            stack.extend((k, v, value) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((key, v, value) for v in value)


def _load_json(archive: Archive, name: str) -> Any:
    try:
        return json.loads(archive.text(name))
    except (json.JSONDecodeError, RecursionError) as e:
        raise ModelError(f"{archive.path}: member {archive.root}/{name} is not valid JSON ({e})") from e


def _check_json(archive: Archive, name: str, doc: Any) -> None:
    """The rules every JSON member of a ``.pt2`` keeps (graph nodes, expressions, guards, names, pickles)."""
    for key, value, parent in _walk_json(doc):
        if not isinstance(parent, dict):
            if key == "forward_arg_names" and not (isinstance(value, str) and value.isidentifier()):
                raise _refuse(archive.path, f"names the argument {str(value)[:60]!r} in {name} (it would be "
                                            "pasted into generated code)")
            if key == "guards_code" and (p := _expression_problem(value, GUARD_NAMES, guard=True)):
                raise _refuse(archive.path, f"has a guard torch would exec: {p} (in {name})")
            continue
        if key == "use_pickle" and value:
            raise _refuse(archive.path, f"marks an entry as pickled in {name}: torch.export.load would unpickle it "
                                        "with weights_only=False, which runs any code the file names")
        if key == "expr_str" and (p := _expression_problem(value, SYMPY_NAMES, guard=False)):
            raise _refuse(archive.path, f"has a shape expression torch would eval with sympy: {p} (in {name})")
        if key == "as_operator" and (p := _target_problem(value)):
            raise _refuse(archive.path, f"passes an operator to the graph: {p} (in {name})")
        if key == "target" and {"inputs", "outputs"} <= set(parent):
            if p := _target_problem(value):
                raise _refuse(archive.path, f"has a graph node outside the pure tensor operators: {p} (in {name})")
            continue
        if (key in NAME_KEYS or key.endswith("_name")) and isinstance(value, str) and _bad_name(value):
            raise _refuse(archive.path, f"has the name {value[:60]!r} ({key}) in {name}, with a quote, backslash or "
                                        "control character (torch pastes names into generated code)")
        if key == "tensor_values" and isinstance(value, dict):
            bad = next((k for k in value if _bad_name(k)), None)
            if bad is not None:
                raise _refuse(archive.path, f"has the tensor name {bad[:60]!r} in {name}")


def _bad_name(name: str) -> bool:
    """A name torch.fx could paste into generated code so that it ends the string it sits in."""
    return len(name) > 1000 or UNSAFE_IN_NAME.search(name) is not None


def check_exported_program(archive: Archive) -> None:
    """Refuse a ``.pt2`` that torch.export.load would unpickle from, run code from, or that uses operators
    outside :func:`op_allowed` (see the module docstring); :class:`ModelError` names the member."""
    import torch._C._export as ex

    c = ex.pt2_archive_constants
    p = archive.path
    if archive.text(c.ARCHIVE_FORMAT_PATH).strip() != c.ARCHIVE_FORMAT_VALUE:
        raise ModelError(f"{p} is not a torch.export archive (archive_format is not 'pt2'); save it with "
                         "torch.export.save")
    models = [n for n in archive.members if n.startswith(c.MODELS_DIR) and n.endswith(".json")]
    if not models:
        raise ModelError(f"{p} holds no exported program (no {c.MODELS_DIR}*.json); save it with torch.export.save")
    raw: set[str] = set()  # tensor payloads named by a config: read by torch as raw bytes, never unpickled
    checked = {c.ARCHIVE_FORMAT_PATH, c.ARCHIVE_VERSION_PATH, ".data/version", ".data/serialization_id", "byteorder"}
    for model_file in models:
        model = model_file[len(c.MODELS_DIR):-len(".json")]
        _check_json(archive, model_file, _load_json(archive, model_file))
        checked.add(model_file)
        for fmt, folder in ((c.WEIGHTS_CONFIG_FILENAME_FORMAT, c.WEIGHTS_DIR),
                            (c.CONSTANTS_CONFIG_FILENAME_FORMAT, c.CONSTANTS_DIR)):
            config_name = fmt.format(model)
            if not archive.has(config_name):
                raise ModelError(f"{p} lacks {config_name} (an archive from an older torch keeps pickled weights); "
                                 f"re-save it with torch.export.save from torch ≥ 2.8, or {HINT}")
            config = _load_json(archive, config_name)
            _check_json(archive, config_name, config)
            checked.add(config_name)
            entries = config.get("config") if isinstance(config, dict) else None
            if not isinstance(entries, dict):
                raise ModelError(f"{p}: {config_name} is not a payload config")
            for fqn, meta in entries.items():
                path_name = meta.get("path_name") if isinstance(meta, dict) else None
                if not isinstance(path_name, str) or not SAFE_NAME.match(path_name) or _bad_name(fqn):
                    raise ModelError(f"{p}: {config_name} has a malformed entry {str(fqn)[:60]!r}")
                if folder == c.CONSTANTS_DIR and not path_name.startswith(c.TENSOR_CONSTANT_FILENAME_PREFIX):
                    raise _refuse(p, f"holds the constant {fqn!r} as a pickled Python or TorchBind object "
                                     f"({path_name}), which torch.export.load would unpickle")
                raw.add(folder + path_name)
        sample = c.SAMPLE_INPUTS_FILENAME_FORMAT.format(model)
        if archive.has(sample):
            _weights_only(archive, sample)
            checked.add(sample)
    for name in archive.members:
        if name in checked or name in raw or name.startswith(c.EXTRA_DIR):
            continue
        what = ("AOTInductor compiled code (a shared library)" if name.startswith(c.AOTINDUCTOR_DIR)
                else "a member torch may unpickle or run")
        raise _refuse(p, f"holds {archive.root}/{name}, {what}, which adverse does not check")


def _weights_only(archive: Archive, name: str) -> None:
    """Refuse a pickle member that ``torch.load(weights_only=True)`` does not load (torch would retry it with
    full pickle)."""
    import torch

    data = archive.read(name)
    where = f"{archive.path}: member {archive.root}/{name}"
    if data[:4] == b"PK\x03\x04":
        check_nested_zip(data, where)
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError, ...: torch's weights-only unpickler refused it
        raise _refuse(archive.path, f"holds {archive.root}/{name}, which torch.load(weights_only=True) refuses "
                                    f"({str(e).splitlines()[0][:200]}); torch.export.load would unpickle it with "
                                    "weights_only=False") from e


# --------------------------------------------------------------------------------------------- TorchScript
TS_PLAIN = {"version", ".data/version", ".data/serialization_id", "byteorder"}
TS_BUILTIN_CALLS_DENIED = frozenset({"print", "open", "exec", "eval", "compile", "__import__", "input",
                                     "breakpoint"})


def check_torchscript(archive: Archive) -> None:
    """Refuse a TorchScript archive whose code (run by ``torch.jit.load`` itself through ``__setstate__``, and
    by every call) uses operators outside :func:`op_allowed`, TorchBind classes or ``print``, or whose pickles
    name anything but the archive's own classes, tensors and storages; :class:`ModelError` names the member."""
    p = archive.path
    for name in sorted(archive.members):
        if name in ("model.json", "attributes.pkl"):
            raise ModelError(f"{p} is a legacy TorchScript archive ({name}); re-save it with torch.jit.save from a "
                             f"recent torch, or {HINT}")
        if name.startswith("code/") and name.endswith(".py"):
            _check_ts_code(archive, name)
        elif name.endswith((".pkl", ".debug_pkl")):
            _check_ts_pickle(archive, name)
        elif name in TS_PLAIN or name.startswith("extra/") or _storage_of_pickle(archive, name):
            continue  # plain text, extra files torch does not read unless asked, raw storage bytes
        else:
            raise _refuse(p, f"holds {archive.root}/{name}, a member adverse does not check")


def _storage_of_pickle(archive: Archive, name: str) -> bool:
    """``data/0`` beside ``data.pkl``: the raw bytes of a storage a TorchScript pickle refers to."""
    folder, sep, rest = name.partition("/")
    return bool(sep) and "/" not in rest and archive.has(folder + ".pkl")


def _check_ts_code(archive: Archive, name: str) -> None:
    p = archive.path
    try:
        tree = ast.parse(archive.text(name), filename=name)
        nodes = list(ast.walk(tree))
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise _refuse(p, f"holds TorchScript code adverse cannot parse ({archive.root}/{name}: {e})") from e
    parents: dict[int, ast.AST] = {}
    for node in nodes:
        for child in ast.iter_child_nodes(node):
            parents[id(child)] = node
    for node in nodes:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in TS_BUILTIN_CALLS_DENIED:
            raise _refuse(p, f"calls {node.func.id}() in its TorchScript code ({archive.root}/{name}, line "
                             f"{node.lineno})")
        if not isinstance(node, (ast.Name, ast.Attribute)):
            continue
        parent = parents.get(id(node))
        if isinstance(parent, ast.Attribute) and parent.value is node:
            continue  # not the whole chain
        chain = _chain(node)
        line = getattr(node, "lineno", "?")
        if chain is None:
            if isinstance(node, ast.Attribute) and node.attr in DENIED_OPS:
                raise _refuse(p, f"calls the method {node.attr} in its TorchScript code ({archive.root}/{name}, "
                                 f"line {line})")
            continue
        problem = _ts_name_problem(chain)
        if problem:
            raise _refuse(p, f"uses {'.'.join(chain)} in its TorchScript code ({archive.root}/{name}, line {line}): "
                             f"{problem}")


def _chain(node: ast.AST) -> list[str] | None:
    """``a.b.c`` as ``["a", "b", "c"]``; None when the chain does not start at a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _ts_name_problem(chain: list[str]) -> str | None:
    """How TorchScript resolves a name in serialized code: ``torch.X`` is ``aten::X``, ``ops.NS.X`` is
    ``NS::X``, ``__torch__.…`` a class or function of the archive (``__torch__.torch.classes`` is TorchBind)."""
    head = chain[0]
    if head == "torch":
        if len(chain) != 2:
            return "not an aten operator"
        return op_allowed("aten", chain[1])
    if head == "ops":
        if len(chain) != 3:
            return "not an operator"
        return op_allowed(chain[1], chain[2])
    if head == "__torch__" and chain[1:3] == ["torch", "classes"]:
        return "a TorchBind class, implemented in native code outside the archive"
    if len(chain) > 1 and chain[-1] in DENIED_OPS:
        return f"{chain[-1]} reads or writes files, prints or calls other machines"
    return None


def _check_ts_pickle(archive: Archive, name: str) -> None:
    """The globals a TorchScript pickle names: the archive's classes (``__torch__``), tensors and storages."""
    p = archive.path
    try:
        ops = list(pickletools.genops(archive.read(name)))
    except Exception as e:  # pickletools raises ValueError and friends on malformed pickles
        raise ModelError(f"{p}: member {archive.root}/{name} is not a valid pickle ({e}); the file is damaged") from e
    for op, arg, _ in ops:
        if op.name in ("STACK_GLOBAL", "INST", "OBJ", "NEWOBJ_EX"):
            raise _refuse(p, f"holds a pickle ({archive.root}/{name}) with the opcode {op.name}, which TorchScript "
                             "archives do not use")
        if op.name != "GLOBAL":
            continue
        module, _, attr = str(arg).partition(" ")
        if module == "__torch__" or module.startswith("__torch__."):
            if module.startswith("__torch__.torch.classes"):
                raise _refuse(p, f"holds a TorchBind object {module}.{attr} ({archive.root}/{name}), implemented in "
                                 "native code outside the archive")
            continue
        allowed = TS_PICKLE_GLOBALS.get(module, ())
        if module == "torch" and attr.endswith("Storage"):
            continue
        if allowed is None and (module != "torch._utils" or attr.startswith("_rebuild_")):
            continue
        if allowed and attr in allowed:
            continue
        raise _refuse(p, f"holds a pickle ({archive.root}/{name}) that names {module}.{attr}, not a TorchScript class, "
                         "tensor or storage")
