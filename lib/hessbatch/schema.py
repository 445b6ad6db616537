"""Declared inputs, checked before anything is imported, written or locked.

Every input has a :class:`Spec`: its type (strict: a boolean is not a number), range, finiteness,
size, and whether it may be null. Options of a dataclass (``TrainConfig``, a chapter's
``Params``) declare theirs on the field (:func:`option`), or take the rule of their annotation:
an ``int`` is a count (1 to ``INT_MAX``), a ``float`` a size (finite, > 0, at most ``NUM_MAX``).
The command line parses its flags with specs, the environment variables are declared in
``ENVIRONMENT``, folders are checked by :func:`folder`, and YAML is read by :func:`load_yaml`,
with limits on size, depth and aliases. Nothing here imports torch."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from .errors import HessbatchError, check

INT_MAX = 2**31 - 1
SEED_MAX = 2**32 - 1   # numpy's and torch's seeds both take it
NUM_MAX = 1e6
TEXT_MAX = 4096
LIST_MAX = 10_000


@dataclass(frozen=True)
class Spec:
    """One input's type and range: ``kind`` is int, num, bool, str, list or map."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    null: bool = False
    choices: tuple = ()
    item: "Spec | None" = None
    pattern: str = ""      # a text: the whole of it matches this regular expression
    what: str = ""         # how an error names what is expected, where the rest cannot say it

    def describe(self) -> str:
        if self.what:
            what = self.what
        elif self.choices:
            what = "one of " + ", ".join(map(str, self.choices))
        elif self.kind in ("int", "num"):
            what = ("an integer" if self.kind == "int" else "a finite number") + self._range()
        else:
            what = {"bool": "true or false", "str": "a non-empty text", "map": "a mapping",
                    "batches": "a list of mappings, each a batch_size and its options, e.g. [{batch_size: 16, lr: 0.01}]",
                    "list": "a list" + (f" (each item {self.item.describe()})" if self.item else "")}[self.kind]
        return what + (" or null" if self.null else "")

    def _range(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f" in {'(' if self.lo_open else '['}{_n(self.lo)}, {_n(self.hi)}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f" {'>' if self.lo_open else '>='} {_n(self.lo)}"
        return f" {'<' if self.hi_open else '<='} {_n(self.hi)}" if self.hi is not None else ""

    def ok(self, v) -> bool:
        if v is None:
            return self.null
        if self.choices:
            return isinstance(v, (str, int, float)) and not isinstance(v, bool) and v in self.choices
        if self.kind in ("int", "num"):
            if isinstance(v, bool) or not isinstance(v, int if self.kind == "int" else (int, float)):
                return False
            return math.isfinite(v) and self._within(v)
        if self.kind == "bool":
            return isinstance(v, bool)
        if self.kind == "str":
            return (isinstance(v, str) and 0 < len(v) <= TEXT_MAX and "\0" not in v
                    and (not self.pattern or re.fullmatch(self.pattern, v) is not None))
        if self.kind == "map":
            return isinstance(v, dict) and len(v) <= LIST_MAX and all(isinstance(k, str) for k in v)
        if self.kind == "batches":
            return isinstance(v, (list, tuple)) and len(v) <= LIST_MAX and all(
                Spec("map").ok(o) and integer().ok(o.get("batch_size")) and len(o) > 1 for o in v)
        return (isinstance(v, (list, tuple)) and (self.lo or 0) <= len(v) <= LIST_MAX
                and (self.item is None or all(self.item.ok(x) for x in v)))

    def _within(self, v) -> bool:
        lo = self.lo is None or (v > self.lo if self.lo_open else v >= self.lo)
        return lo and (self.hi is None or (v < self.hi if self.hi_open else v <= self.hi))

    def check(self, value, name: str):
        """``value``, or a one-line error naming ``name``, what it must be and what it got."""
        check(self.ok(value), f"{name} must be {self.describe()}, got {_show(value)}".lstrip())
        return value

    def parse(self, text: str, name: str = ""):
        """A value from a command-line or environment string (a list: comma-separated items)."""
        if self.null and text.strip().lower() in ("none", "null", "off"):
            return None
        if self.kind == "list":
            item = self.item or Spec("str")
            return self.check(tuple(item.parse(t.strip(), name) for t in text.split(",") if t.strip()), name)
        convert = {"int": int, "num": float}.get(self.kind, str)
        try:
            return self.check(convert(text), name)
        except ValueError as e:
            if isinstance(e, HessbatchError):
                raise
            return self.check(text, name)   # not a number: the error names the text


def integer(lo: int | None = 1, hi: int = INT_MAX, null: bool = False) -> Spec:
    return Spec("int", lo, hi, null=null)


def number(lo: float | None = None, hi: float | None = NUM_MAX, above: float | None = None,
           below: float | None = None, null: bool = False) -> Spec:
    """A finite number in [lo, hi], or with ``above``/``below`` an open end."""
    return Spec("num", above if above is not None else lo, below if below is not None else hi,
                lo_open=above is not None, hi_open=below is not None, null=null)


def text(choices=(), null: bool = False) -> Spec:
    return Spec("str", choices=tuple(choices), null=null)


def items(item: Spec | None = None, null: bool = False, least: int = 0) -> Spec:
    """A list (of ``item``s), with at least ``least`` of them."""
    return Spec("list", least or None, item=item, null=null,
                what=f"a list of at least {least} (each {item.describe() if item else 'any'})" if least else "")


FLAG = Spec("bool")
MAPPING = Spec("map")
PER_BATCH = Spec("batches", null=True)   # options for some batch sizes
SEED = integer(0, SEED_MAX)
PROBABILITY = number(0, below=1)   # in [0, 1)
EPS = number(0)                    # an attack's radius, in the inputs' units ([0, 1] pixels)
DEVICE = Spec("str", pattern=r"cpu|auto|cuda(:[0-9]{1,3})?", what="cpu, cuda, cuda:N or auto")


def option(default, spec: Spec | None = None):
    """A dataclass field with its spec (a list or dict default is copied for each instance)."""
    meta = {"spec": spec} if spec else {}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@functools.cache
def specs(cls) -> dict[str, Spec]:
    """Every field's spec: its own (:func:`option`), else the rule of its annotation."""
    hints = typing.get_type_hints(cls)
    return {f.name: f.metadata.get("spec") or _from_hint(hints[f.name]) for f in dataclasses.fields(cls)}


def _from_hint(hint) -> Spec:
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    null = type(None) in args
    base = next(a for a in args if a is not type(None))
    base = typing.get_origin(base) or base
    if base is bool:
        return Spec("bool", null=null)
    if base is int:
        return integer(null=null)
    if base is float:
        return number(above=0, null=null)
    if base is str:
        return text(null=null)
    return Spec("map" if base is dict else "list", null=null)


def check_fields(obj, where: str = "") -> None:
    """Each field of dataclass instance ``obj`` against its spec."""
    for name, spec in specs(type(obj)).items():
        spec.check(getattr(obj, name), f"{where}{name}")


def check_record(value, fields: dict[str, Spec], where: str) -> dict:
    """A mapping read from a file: each of ``fields`` present and valid (other keys are left alone)."""
    check(isinstance(value, dict), f"{where}: expected a mapping, got {type(value).__name__}")
    for name, spec in fields.items():
        check(name in value or spec.null, f"{where}: no {name!r}")
        spec.check(value.get(name), f"{where}: {name}")
    return value


def _n(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _show(v) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


# -- folders ------------------------------------------------------------------------------------

def folder(raw: str | os.PathLike, what: str) -> Path:
    """A folder given by the user (it may not exist yet): its expanded path, or one line saying why
    it cannot be one (an empty name, an unknown user's ~, a name too long, a symbolic link that
    loops or points nowhere, a file)."""
    s = os.fspath(raw)
    check(s.strip() != "" and "\0" not in s, f"{what} must name a folder, got {s!r}")
    try:
        path = Path(s).expanduser()
    except RuntimeError:
        raise HessbatchError(f"{what} {s!r}: no such user's home folder") from None
    check(len(os.fsencode(path.absolute())) < 4000 and all(len(os.fsencode(p)) <= 255 for p in path.parts),
          f"{what} {_show(s)}: the name is too long")
    for p in [path, *path.parents]:
        try:
            p.stat()
        except FileNotFoundError:
            check(not p.is_symlink(), f"{what} {s}: {p} is a symbolic link to nothing")
            continue
        except NotADirectoryError:
            continue
        except OSError as e:
            raise HessbatchError(f"{what} {s}: {e.strerror}") from None
        check(p.is_dir(), f"{what} {s}: {p} is not a folder")
        break
    return path


# -- environment --------------------------------------------------------------------------------

ENVIRONMENT = {
    "HESSBATCH_RESULTS": "folder",          # the result store (else ./results)
    "HESSBATCH_DATA": "folder",             # the data root (else ./data)
    "HESSBATCH_CACHE": "folder",            # decoded datasets (else ~/.cache/hessbatch)
    "HESSBATCH_CUDA_GRAPHS": text(("0", "1")),
    "HESSBATCH_CHANNELS_LAST": text(("0", "1")),
    "HESSBATCH_COMPILE": text(("0", "1", "auto")),
    "HESSBATCH_PARTS": text(("0", "1")),
    "HESSBATCH_GRAPH_MEMORY": number(0, 1),
    "HESSBATCH_STREAM_ABOVE": integer(0, 2**62),
}


def env(name: str, default=None):
    """The value of a declared environment variable, checked; ``default`` when it is unset or empty."""
    raw = os.environ.get(name)
    if not raw:
        return default
    spec = ENVIRONMENT[name]
    if spec == "folder":
        return str(folder(raw, name))
    return spec.parse(raw, name)


def check_environment() -> None:
    """Every declared environment variable that is set, checked (a command's first step)."""
    for name in ENVIRONMENT:
        env(name)


# -- YAML ---------------------------------------------------------------------------------------

YAML_BYTES = 1 << 20
YAML_DEPTH = 32
YAML_ALIASES = 100
YAML_NODES = 100_000


def load_yaml(text_: str, where: str):
    """YAML (the safe subset) with limits on size, nesting, aliases and nodes: one line if exceeded."""
    import yaml

    check(len(text_) <= YAML_BYTES, f"{where}: larger than {YAML_BYTES >> 20} MiB")

    class Bounded(yaml.SafeLoader):
        depth = aliases = nodes = 0

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                check(self.aliases <= YAML_ALIASES, f"{where}: more than {YAML_ALIASES} YAML aliases")
            self.depth += 1
            self.nodes += 1
            check(self.depth <= YAML_DEPTH, f"{where}: nested deeper than {YAML_DEPTH} levels")
            check(self.nodes <= YAML_NODES, f"{where}: more than {YAML_NODES} YAML nodes")
            try:
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    loader = Bounded(text_)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
