"""Compile SearchParameter expressions into fast value extractors.

Almost every official R4 search expression is a plain path, a union of paths, or a path with
one of a handful of well-known functions. Those compile here, once per (expression, resource
type), into a tuple of small steps walked over the resource's JSON dicts: no FHIRPath engine
runs for them. The FHIR type of every value is tracked at compile time (with fhirpathpy's R4
model tables: element types, choice types, inherited elements), so value conversion later
knows that ``Observation.value`` yielded a ``Quantity`` from ``valueQuantity``. The programs
of all parameters of a resource type run together, in a :class:`Forest`: the steps they share
(``AuditEvent.agent`` starts six of them) run once per resource.

Understood without fhirpathpy:

* ``Type.a.b`` paths (the leading type selects the union part that applies to a resource
  type), ``%resource.a``, ``a[0]``, ``first()``
* choice elements (``Observation.value`` -> ``valueQuantity``/``valueString``/...)
* ``(X as T)``, ``X.as(T)``, ``X.ofType(T)``
* ``X.where(resolve() is T)`` (and ``... is T1 or resolve() is T2``): references kept when
  their target type is T, read from the reference itself: nothing is resolved
* ``X.where(a = 'literal')`` / ``X.where(a.b = 'literal')``
* ``X.extension('url')``
* ``X.exists() and X != false`` (a boolean, e.g. Patient-deceased)

Anything else (``exists() and ... != false``, arbitrary custom expressions) falls back to a
fhirpathpy function compiled once per expression with the R4 model. fhirpathpy has no
``resolve()``; an unsupported expression that needs it extracts nothing (and
:func:`compile_expression` reports it in ``Program.fallback``).
"""
from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from fhirpathpy.models import models as _fp_models

log = logging.getLogger(__name__)

_MODEL = _fp_models["r4"]
PATH_TYPE: dict[str, str] = _MODEL["path2Type"]
CHOICE_PATHS: dict[str, list[str]] = _MODEL["choiceTypePaths"]
ELSEWHERE: dict[str, str] = _MODEL["pathsDefinedElsewhere"]
TYPE_PARENT: dict[str, str] = _MODEL["type2Parent"]

#: every element path that has children of its own (backbone elements)
_BACKBONES: frozenset[str] = frozenset(p.rsplit(".", 1)[0] for p in PATH_TYPE if "." in p)

#: the FHIR type names a choice element's JSON key may end with (``value`` + ``Quantity``)
CHOICE_SUFFIXES: frozenset[str] = frozenset(t for ts in CHOICE_PATHS.values() for t in ts)


def fhir_type_name(name: str) -> str:
    """``DateTime`` -> ``dateTime`` for primitives (as in path2Type); complex types unchanged."""
    low = name[:1].lower() + name[1:]
    if low in _PRIMITIVES:
        return low
    return name


_PRIMITIVES = frozenset({
    "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
    "instant", "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt",
    "uri", "url", "uuid", "xhtml",
})


def ancestors(type_name: str) -> list[str]:
    """``Patient`` -> ``[Patient, DomainResource, Resource]``; ``Age`` -> ``[Age, Quantity, ...]``."""
    out = [type_name]
    while type_name in TYPE_PARENT:
        type_name = TYPE_PARENT[type_name]
        out.append(type_name)
    return out


@functools.lru_cache(maxsize=4096)
def is_subtype(type_name: str | None, wanted: str) -> bool:
    if type_name is None:
        return False
    wanted_l = wanted.lower()
    return any(t.lower() == wanted_l for t in ancestors(type_name))


# ---------------------------------------------------------------- steps
# A step maps a list of (node, fhir_type) to a new list (never changing the one it is given).
# Types may be None (unknown). Every step has a ``key``, its kind and arguments: two steps with
# one key compute the same thing. Steps that find nothing in a node without certain JSON keys
# name them in ``keys``. (Both for Forest.)

Node = tuple[Any, "str | None"]
Step = Callable[[list[Node], dict], list[Node]]


def _field(name: str, out_type: str | None) -> Step:
    def step(nodes: list[Node], root: dict) -> list[Node]:
        out = []
        for node, _ in nodes:
            if node.__class__ is not dict:
                continue
            v = node.get(name)
            if v is None:
                continue
            if v.__class__ is list:   # (loops, not generators: this is the hot path)
                for x in v:
                    if x is not None:
                        out.append((x, out_type))
            else:
                out.append((v, out_type))
        return out
    step.key = ("field", name, out_type)
    step.keys = (name,)
    return step


def _choice(name: str, suffixes: dict[str, str]) -> Step:
    """A choice element: ``value`` is stored as ``valueQuantity`` etc."""
    keys = tuple((name + suffix, t) for suffix, t in suffixes.items())

    def step(nodes: list[Node], root: dict) -> list[Node]:
        out = []
        for node, _ in nodes:
            if node.__class__ is not dict:
                continue
            for key, t in keys:
                v = node.get(key)
                if v is not None:
                    if v.__class__ is list:
                        for x in v:
                            out.append((x, t))
                    else:
                        out.append((v, t))
        return out
    step.key = ("choice", keys)
    step.keys = tuple(k for k, _t in keys)
    return step


def _unknown_field(name: str) -> Step:
    """A field of an element whose type the model does not know (e.g. inside an extension)."""
    plen = len(name)

    def step(nodes: list[Node], root: dict) -> list[Node]:
        out = []
        for node, _ in nodes:
            if node.__class__ is not dict:
                continue
            v = node.get(name)
            if v is not None:
                if v.__class__ is list:
                    out.extend((x, None) for x in v)
                else:
                    out.append((v, None))
                continue
            for key, v in node.items():
                if key.startswith(name) and key[plen:] in CHOICE_SUFFIXES:
                    t = fhir_type_name(key[plen:])
                    if v.__class__ is list:
                        out.extend((x, t) for x in v)
                    else:
                        out.append((v, t))
        return out
    step.key = ("unknown", name)
    return step


def _as_type(type_name: str) -> Step:
    def step(nodes: list[Node], root: dict) -> list[Node]:
        return [(v, t) for v, t in nodes if is_subtype(t, type_name)]
    step.key = ("as", type_name)
    return step


def _index(n: int) -> Step:
    def step(nodes: list[Node], root: dict) -> list[Node]:
        return nodes[n:n + 1]
    step.key = ("index", n)
    return step


def _root(nodes: list[Node], root: dict) -> list[Node]:
    return [(root, root.get("resourceType"))]


_root.key = ("root",)


def reference_type(ref: Any) -> str | None:
    """The target type a Reference (dict) names, from ``reference`` or ``type``."""
    if ref.__class__ is not dict:
        return None
    s = ref.get("reference")
    if isinstance(s, str) and not s.startswith("#"):
        parts = s.split("/")
        if len(parts) >= 4 and parts[-2] == "_history":
            parts = parts[:-2]
        if len(parts) >= 2 and parts[-2][:1].isupper():
            return parts[-2]
    t = ref.get("type")
    return t if isinstance(t, str) else None


def _where_resolve_is(types: frozenset[str]) -> Step:
    def step(nodes: list[Node], root: dict) -> list[Node]:
        return [(v, t) for v, t in nodes if reference_type(v) in types]
    step.key = ("resolve", types)
    return step


def _where_equals(path: tuple[str, ...], literal: str) -> Step:
    first = path[0] if len(path) == 1 else None

    def step(nodes: list[Node], root: dict) -> list[Node]:
        out = []
        for v, t in nodes:
            if first is not None and v.__class__ is dict:
                x = v.get(first)
                if x.__class__ is str:   # the common case, e.g. where(system='email')
                    if x == literal:
                        out.append((v, t))
                    continue
            cur = [v]
            for p in path:
                nxt = []
                for c in cur:
                    if c.__class__ is dict and p in c:
                        x = c[p]
                        nxt.extend(x if x.__class__ is list else [x])
                cur = nxt
            if any(c == literal or (isinstance(c, bool) and str(c).lower() == literal)
                   for c in cur):
                out.append((v, t))
        return out
    step.key = ("where", path, literal)
    return step


def _extension(url: str) -> Step:
    def step(nodes: list[Node], root: dict) -> list[Node]:
        out = []
        for node, _ in nodes:
            if node.__class__ is not dict:
                continue
            for ext in node.get("extension") or ():
                if ext.__class__ is dict and ext.get("url") == url:
                    out.append((ext, "Extension"))
        return out
    step.key = ("extension", url)
    step.keys = ("extension",)
    return step


# ---------------------------------------------------------------- compiler

class Unsupported(Exception):
    """The expression is outside the compiled subset (falls back to fhirpathpy)."""


_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_RE_STEP = re.compile(
    r"\s*(?:"
    rf"(?P<field>{_IDENT}|`[^`]+`)(?![A-Za-z0-9_])(?:\[(?P<idx>\d+)\])?(?![A-Za-z0-9_\[]|\s*\()"
    rf"|as\(\s*(?P<as>{_IDENT}(?:\.{_IDENT})?)\s*\)"
    rf"|ofType\(\s*(?P<oftype>{_IDENT}(?:\.{_IDENT})?)\s*\)"
    rf"|where\(\s*(?P<resolve>resolve\(\)\s+is\s+{_IDENT}(?:\s+or\s+resolve\(\)\s+is\s+{_IDENT})*)\s*\)"
    rf"|where\(\s*(?P<wpath>{_IDENT}(?:\.{_IDENT})*)\s*=\s*'(?P<wlit>[^']*)'\s*\)"
    r"|extension\(\s*'(?P<ext>[^']*)'\s*\)"
    r"|(?P<first>first\(\))"
    r")\s*")
_RE_AS = re.compile(rf"^\((?P<inner>[^()]+)\s+as\s+(?P<type>{_IDENT})\)(?P<rest>(?:\..+)?)$", re.S)
_RE_AS_BARE = re.compile(rf"^(?P<inner>[^()]+)\s+as\s+(?P<type>{_IDENT})(?P<rest>)$", re.S)


def split_union(expr: str) -> list[str]:
    """Split at top-level ``|`` (outside parentheses and quotes)."""
    parts, depth, cur, quote = [], 0, [], False
    for ch in expr:
        if ch == "'":
            quote = not quote
        elif not quote:
            if ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
            elif ch == "|" and depth == 0:
                parts.append("".join(cur).strip())
                cur = []
                continue
        cur.append(ch)
    parts.append("".join(cur).strip())
    return [p for p in parts if p]


def _strip_parens(s: str) -> str:
    s = s.strip()
    while s.startswith("(") and s.endswith(")"):
        depth = 0
        for i, ch in enumerate(s):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(s) - 1:
                return s
        s = s[1:-1].strip()
    return s


class _Ctx:
    """Compile-time knowledge of where a path is: an element path in the model, or unknown."""

    def __init__(self, path: str | None, type_: str | None):
        self.path = path   # e.g. "Observation.component" / "CodeableConcept" / None
        self.type = type_


def _lookup(ctx: _Ctx, name: str) -> tuple[str, Any]:
    """Resolve a child element: ('field', (path, type)) / ('choice', {suffix: type}) / ('unknown', None)."""
    if ctx.path is None:
        return "unknown", None
    head, _, tail = ctx.path.partition(".")
    for t in ancestors(head):
        p = f"{t}.{tail}.{name}" if tail else f"{t}.{name}"
        p = ELSEWHERE.get(p, p)
        if p in CHOICE_PATHS:
            return "choice", {s: fhir_type_name(s) for s in CHOICE_PATHS[p]}
        ptype = PATH_TYPE.get(p)
        if ptype is not None:
            if ptype.startswith("System."):
                ptype = "string"
            return "field", (p, ptype)
        if p in _BACKBONES:
            return "field", (p, None)
    return "unknown", None


def _compile_path(path: str, ctx: _Ctx, res_type: str | None) -> list[Step] | None:
    """Steps for one union part; None when the part does not apply to ``res_type``."""
    path = path.strip()
    m = _RE_AS.match(path)
    if not m:
        path = _strip_parens(path)
        m = _RE_AS_BARE.match(path)
    if m:
        inner = _compile_path(m.group("inner"), ctx, res_type)
        if inner is None:
            return None
        steps, ctx2 = inner
        steps = _apply_as(steps, m.group("type"), ctx2)
        rest = m.group("rest")
        if rest:
            more = _compile_steps(rest[1:], ctx2, first=False)
            steps = steps + more[0]
            ctx2 = more[1]
        return steps, ctx2
    if path.startswith("%resource"):
        rest = path[len("%resource"):]
        rctx = _Ctx(res_type, res_type)
        steps, c = _compile_steps(rest[1:], rctx, first=False) if rest else ([], rctx)
        return [_root] + steps, c
    # leading type name: the part applies to that resource type (or its ancestors) only
    head = re.match(rf"({_IDENT})(?=\.|$)", path)
    if head and head.group(1)[:1].isupper() and (head.group(1) in TYPE_PARENT
                                                 or head.group(1) == "Resource"):
        tname = head.group(1)
        if res_type is not None and tname not in ancestors(res_type):
            return None
        rest = path[len(tname):]
        tctx = _Ctx(res_type or tname, res_type or tname)
        if not rest:
            return [], tctx
        return _compile_steps(rest[1:], tctx, first=False)
    return _compile_steps(path, ctx, first=True)


def _apply_as(steps: list[Step], type_name: str, ctx: "_Ctx") -> list[Step]:
    ctx.type = fhir_type_name(type_name)
    ctx.path = ctx.type if ctx.type not in _PRIMITIVES else None
    return steps + [_as_type(type_name)]


def _compile_steps(text: str, ctx: _Ctx, first: bool) -> tuple[list[Step], _Ctx]:
    steps: list[Step] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _RE_STEP.match(text, pos)
        if not m or m.end() == pos:
            raise Unsupported(text[pos:])
        pos = m.end()
        if pos < len(text):
            if text[pos] != ".":
                raise Unsupported(text[pos:])
            pos += 1
        g = m.groupdict()
        if g["field"]:
            name = g["field"].strip("`")
            kind, info = _lookup(ctx, name)
            if kind == "choice":
                steps.append(_choice(name, info))
                ctx = _Ctx(None, None)
            elif kind == "field":
                p, t = info
                steps.append(_field(name, t))
                if t is None or t in ("Element", "BackboneElement"):
                    ctx = _Ctx(p, None)
                elif t[:1].isupper() and t not in ("Resource",):
                    ctx = _Ctx(t, t)
                else:
                    ctx = _Ctx(None, t)
            else:
                steps.append(_unknown_field(name))
                ctx = _Ctx(None, None)
            if g["idx"] is not None:
                steps.append(_index(int(g["idx"])))
        elif g["as"] or g["oftype"]:
            tname = (g["as"] or g["oftype"]).split(".")[-1]
            steps = _apply_as(steps, tname, ctx)
        elif g["resolve"]:
            types = frozenset(re.findall(rf"is\s+({_IDENT})", g["resolve"]))
            steps.append(_where_resolve_is(types))
        elif g["wpath"]:
            steps.append(_where_equals(tuple(g["wpath"].split(".")), g["wlit"]))
        elif g["ext"] is not None:
            steps.append(_extension(g["ext"]))
            ctx = _Ctx("Extension", "Extension")
        elif g["first"]:
            steps.append(_index(0))
    return steps, ctx


@dataclass(frozen=True)
class Program:
    """A compiled expression: call it on a node (the resource, or a composite's element)."""

    parts: tuple[tuple[Step, ...], ...]
    fallback: Callable[[Any], list] | None = None
    expression: str = ""

    def __call__(self, node: Any, root: dict | None = None, node_type: str | None = None) -> list[Node]:
        root = node if root is None else root
        out: list[Node] = []
        for steps in self.parts:
            cur: list[Node] = [(node, node_type)]
            for step in steps:
                cur = step(cur, root)
                if not cur:
                    break
            out.extend(cur)
        if self.fallback is not None:
            out.extend(self.fallback(node, root))
        return out

    @property
    def empty(self) -> bool:
        return not self.parts and self.fallback is None


class Forest:
    """Several programs run over one node together, each shared step prefix walked once.

    The parameters of a resource type share many prefixes (``AuditEvent.agent`` starts six of
    them, ``Patient.name`` four, ``Resource.meta`` four), and so do composite components
    (``value.as(Quantity)``, ``value.as(CodeableConcept)``): their parts' steps go into a trie
    keyed by ``step.key``. At the node, the trie's branches are found by the node's own JSON
    keys: a branch whose first step reads keys the node lacks is not visited at all.

    ``run(node, root)`` returns ``{program index: values}`` for the programs that found
    something (in no particular order), each one's values as ``Program.__call__(node, root)``
    gives them (part by part, then its fallback). The value lists may be shared between
    programs and with the walk: read them, never change them.
    """

    def __init__(self, programs: Iterable[Program]):
        # Where a part's values go: program i's first part (or its fallback, if it has no
        # parts) to slot i, its other parts and fallback to extra slots after all programs,
        # numbered in program then part order (sorted, they are in Program.__call__ order).
        programs = list(programs)
        self._extra: dict[int, int] = {}        # extra slot -> program
        self._node_slots: list[int] = []        # parts without steps: the node itself
        self._fallbacks: list[tuple[int, Callable]] = []
        trie: dict = {}   # step key -> [step, [slots], {child key: ...}]
        for i, prog in enumerate(programs):
            slot = i
            for n, steps in enumerate(prog.parts):
                if n:
                    slot = self._extra_slot(len(programs), i)
                if not steps:
                    self._node_slots.append(slot)
                    continue
                level = trie
                for k, step in enumerate(steps):
                    branch = level.setdefault(step.key, [step, [], {}])
                    if k == len(steps) - 1:
                        branch[1].append(slot)
                    level = branch[2]
            if prog.fallback is not None:
                slot = self._extra_slot(len(programs), i) if prog.parts else i
                self._fallbacks.append((slot, prog.fallback))

        def freeze(level: dict) -> tuple:
            # branches as _walk takes them: (step, field name or None, field type, slots,
            # children)
            return tuple((step, step.key[1] if step.key[0] == "field" else None,
                          step.key[2] if step.key[0] == "field" else None,
                          tuple(slots), freeze(children))
                         for step, slots, children in level.values())

        # The node's branches by the JSON keys their first step reads: key -> (field type
        # and slots of a field step without children, which run() does inline, or None;
        # the other branches that read this key only; those that read several keys, like a
        # choice element's valueQuantity, valueString, ...). Those that read no key they
        # declare are always walked.
        self._by_key: dict[str, tuple] = {}
        self._always: list[tuple] = []
        for branch in freeze(trie):
            step, name, out_type, slots, children = branch
            keys = getattr(step, "keys", None)
            if keys is None:
                self._always.append(branch)
                continue
            for key in keys:
                leaf, single, multi = self._by_key.get(key, (None, (), ()))
                if len(keys) > 1:
                    multi += (branch,)
                elif name is not None and not children and leaf is None:
                    leaf = (out_type, slots)
                else:
                    single += (branch,)
                self._by_key[key] = (leaf, single, multi)

    def _extra_slot(self, n_programs: int, program: int) -> int:
        slot = n_programs + len(self._extra)
        self._extra[slot] = program
        return slot

    def run(self, node: Any, root: dict | None = None) -> dict[int, list[Node]]:
        root = node if root is None else root
        found: dict[int, list[Node]] = {}
        start: list[Node] = [(node, None)]
        for slot in self._node_slots:
            found[slot] = start
        if node.__class__ is dict:   # (the steps that read keys skip other nodes)
            by_key = self._by_key
            several = None   # branches that read several keys: walked once
            for key in node.keys() & by_key.keys():
                leaf, branches, multi = by_key[key]
                if multi:
                    if several is None:
                        several = {}
                    for branch in multi:
                        several[id(branch)] = branch
                if leaf is not None:   # a field step, inline
                    v = node[key]
                    if v is not None:
                        out_type, slots = leaf
                        if v.__class__ is list:
                            out = [(x, out_type) for x in v if x is not None]
                        else:
                            out = [(v, out_type)]
                        if out:
                            for slot in slots:
                                found[slot] = out
                if branches:
                    _walk(branches, start, root, found)
            if several is not None:
                _walk(several.values(), start, root, found)
        if self._always:
            _walk(self._always, start, root, found)
        for slot, fallback in self._fallbacks:
            values = fallback(node, root)
            if values:
                found[slot] = values
        if self._extra:   # join a program's parts
            extra = self._extra
            for slot in sorted(found.keys() & extra.keys()):
                i = extra[slot]
                values = found.pop(slot)
                found[i] = found[i] + values if i in found else values
        return found


def _walk(branches: Iterable[tuple], nodes: list[Node], root: dict,
          found: dict[int, list[Node]]) -> None:
    """Run each branch's step on ``nodes``; a non-empty result fills the branch's slots and
    goes on to its children. Field steps, most of them, run inline (what ``_field`` does,
    without a call)."""
    for step, name, out_type, slots, children in branches:
        if name is None:
            out = step(nodes, root)
        else:
            out = []
            for node, _ in nodes:
                if node.__class__ is dict:
                    v = node.get(name)
                    if v is not None:
                        if v.__class__ is list:
                            for x in v:
                                if x is not None:
                                    out.append((x, out_type))
                        else:
                            out.append((v, out_type))
        if out:
            for slot in slots:
                found[slot] = out
            if children:
                _walk(children, out, root, found)


def _fhirpathpy_fallback(expr: str) -> Callable[[Any, dict], list[Node]]:
    import fhirpathpy

    try:
        fn = fhirpathpy.compile(expr, _MODEL)
    except Exception as exc:  # pragma: no cover - invalid custom expression
        log.warning("search expression %r does not compile: %s", expr, exc)
        return lambda node, root: []

    def run(node: Any, root: dict) -> list[Node]:
        try:
            res = fn(node, {"resource": root, "rootResource": root})
        except Exception:
            return []
        return [(_plain(v), None) for v in res if v is not None]
    return run


def check_expression(expr: str, res_type: str | None = None) -> None:
    """Raise ValueError when ``expr`` is not valid FHIRPath (for definitions posted at run
    time: the compiler above quietly skips what it cannot use, and fhirpathpy's own parser
    recovers from syntax errors instead of reporting them). The syntax is checked once per
    expression, its evaluation once per expression and type (a SearchParameter of 30 base
    types parsed its expression 60 times)."""
    _check_syntax(expr)
    _check_evaluation(expr, res_type or "Resource")


@functools.lru_cache(maxsize=2048)
def _check_syntax(expr: str) -> None:
    from antlr4 import CommonTokenStream, InputStream
    from antlr4.error.ErrorListener import ErrorListener
    from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
    from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

    class Raise(ErrorListener):
        def syntaxError(self, recognizer, offending, line, column, msg, e):  # noqa: N802
            raise ValueError(f"syntax error at column {column + 1}: {msg}")

    lexer = FHIRPathLexer(InputStream(expr))
    lexer.removeErrorListeners()
    lexer.addErrorListener(Raise())
    parser = FHIRPathParser(CommonTokenStream(lexer))
    parser.removeErrorListeners()
    parser.addErrorListener(Raise())
    parser.expression()
    tok = parser.getCurrentToken()
    if tok.type != tok.EOF:
        raise ValueError(f"unexpected {tok.text!r} at column {tok.column + 1}")


@functools.lru_cache(maxsize=2048)
def _fhirpathpy_compiled(expr: str):
    import fhirpathpy

    return fhirpathpy.compile(expr, _MODEL)


@functools.lru_cache(maxsize=8192)
def _check_evaluation(expr: str, res_type: str) -> None:
    try:  # semantic errors (unknown function, wrong arity) show on a first evaluation
        _fhirpathpy_compiled(expr)({"resourceType": res_type})
    except Exception as exc:  # noqa: BLE001 - fhirpathpy raises plain Exception
        raise ValueError(str(exc) or type(exc).__name__) from None


def _plain(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool, dict, list)):
        return v
    return str(v)  # fhirpathpy date/time/quantity wrappers


#: ``X.exists() and X != false`` (e.g. Patient-deceased): a boolean over a path
_RE_EXISTS_NOT_FALSE = re.compile(r"^(?P<a>[A-Za-z_][\w.]*)\.exists\(\)\s+and\s+(?P<b>[A-Za-z_][\w.]*)\s*!=\s*false$")


@functools.lru_cache(maxsize=8192)
def compile_expression(expression: str, res_type: str | None, context: str | None = None) -> Program:
    """Compile ``expression`` for resources of ``res_type``.

    ``context`` is the element path the expression is relative to (composite components,
    e.g. ``Observation.component``); None means the resource itself, ``"*"`` an element of
    unknown type (choice elements are then recognized by their JSON key's type suffix).
    """
    m = _RE_EXISTS_NOT_FALSE.match(expression.strip())
    if m and m.group("a") == m.group("b"):
        inner = compile_expression(m.group("a"), res_type, context)
        if inner.fallback is None:
            def exists_not_false(node: Any, root: dict) -> list[Node]:
                vals = inner(node, root)
                return [(any(v is not False for v, _ in vals), "boolean")]
            return Program((), exists_not_false, expression)
    parts: list[tuple[Step, ...]] = []
    fallback_parts: list[str] = []
    for part in split_union(expression):
        if context == "*":
            ctx = _Ctx(None, None)
        else:
            ctx = _Ctx(context or res_type, context or res_type)
        try:
            compiled = _compile_path(part, ctx, res_type)
        except Unsupported:
            if res_type is not None and not _part_may_apply(part, res_type):
                continue
            fallback_parts.append(part)
            continue
        if compiled is not None:
            parts.append(tuple(compiled[0]))
    fallback = None
    if fallback_parts:
        fallback = _fhirpathpy_fallback(" | ".join(fallback_parts))
    return Program(tuple(parts), fallback, expression)


def _part_may_apply(part: str, res_type: str) -> bool:
    head = re.match(rf"\(?\s*({_IDENT})", part)
    if head and head.group(1)[:1].isupper() and head.group(1) in TYPE_PARENT:
        return head.group(1) in ancestors(res_type)
    return True


def applies_to(expression: str, res_type: str) -> bool:
    """Whether any union part of ``expression`` can yield values for ``res_type``."""
    return any(_part_may_apply(p, res_type) for p in split_union(expression))


def iter_values(program: Program, resource: dict) -> Iterable[Node]:
    return program(resource)
