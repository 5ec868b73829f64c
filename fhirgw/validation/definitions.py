"""Where conformance resources come from: the vendored R4 core, files, folders, npm packages.

Three resource types matter to validation: StructureDefinition, ValueSet and CodeSystem.
:class:`Definitions` maps their canonical URLs to the resources. It is filled from

* the vendored R4 core (``data/r4-core.json``, built by :mod:`.build_core`): every R4
  resource and data type with its snapshot, the core extensions and profiles, and the
  ValueSets/CodeSystems their required and extensible bindings use. Always present, lowest
  priority, shared by every instance (read-only);
* JSON files (a resource, or a Bundle of them), folders (walked recursively, ``example``
  and ``examples`` subfolders skipped) and unpacked npm packages (a folder holding
  ``package/package.json``, or the ``package`` folder itself). A package's ``.index.json``
  lets its files be read only when a URL is first needed, so a 4,000-file terminology
  package costs milliseconds to register.

A :class:`Definitions` is treated as immutable once published: :meth:`with_added` and
:meth:`without` return new instances, which is what makes runtime additions thread-safe.
"""
from __future__ import annotations

import functools
import os
from typing import Iterable, Iterator

import orjson

from .terminology import strip_version

KINDS = ("StructureDefinition", "ValueSet", "CodeSystem")
CORE_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
_CORE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "r4-core.json")
_SKIP_DIRS = {"example", "examples", "node_modules", "xml", "openapi", "other", ".git"}


class DefinitionError(ValueError):
    """A conformance resource is malformed or cannot be used."""


@functools.lru_cache(maxsize=1)
def core() -> "Definitions":
    """The vendored FHIR R4 core definitions (loaded once per process)."""
    with open(_CORE_FILE, "rb") as f:
        data = orjson.loads(f.read())
    defs = Definitions()
    for kind in KINDS:
        table = defs._tables[kind]
        for res in data[kind]:
            table[res["url"]] = res
    return defs


def _read_json(path: str) -> dict | None:
    try:
        with open(path, "rb") as f:
            return orjson.loads(f.read())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise DefinitionError(f"cannot read {path}: {exc}") from None


def iter_resources(obj: dict) -> Iterator[dict]:
    """The conformance resources in a parsed JSON document (a resource or a Bundle)."""
    if not isinstance(obj, dict):
        return
    rtype = obj.get("resourceType")
    if rtype in KINDS:
        yield obj
    elif rtype == "Bundle":
        for entry in obj.get("entry", []) or []:
            res = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(res, dict):
                yield from iter_resources(res)


class _Lazy:
    """A file in an npm package, read when its URL is first looked up."""

    __slots__ = ("path",)

    def __init__(self, path: str):
        self.path = path


class Definitions:
    """URL -> resource tables for StructureDefinition, ValueSet and CodeSystem."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, dict | _Lazy]] = {k: {} for k in KINDS}

    # ------------------------------------------------------------ lookup

    def get(self, kind: str, url: str | None) -> dict | None:
        if not url:
            return None
        table = self._tables[kind]
        url = strip_version(url)
        hit = table.get(url)
        if isinstance(hit, _Lazy):
            res = _read_json(hit.path)
            if not isinstance(res, dict) or res.get("url") != url:
                table.pop(url, None)
                return None
            table[url] = res  # a benign race: two threads may both read the file
            return res
        return hit

    def urls(self, kind: str) -> list[str]:
        return list(self._tables[kind])

    def __contains__(self, key: tuple[str, str]) -> bool:
        kind, url = key
        return strip_version(url) in self._tables[kind]

    # ------------------------------------------------------------ building

    def copy(self) -> "Definitions":
        new = Definitions()
        for kind in KINDS:
            new._tables[kind] = dict(self._tables[kind])
        return new

    def add_resource(self, res: dict) -> None:
        """Register one resource in place (only while building, before publishing)."""
        kind = res.get("resourceType")
        if kind not in KINDS:
            raise DefinitionError(f"not a conformance resource: {kind!r} (expected one of "
                                  f"{', '.join(KINDS)})")
        url = res.get("url")
        if not isinstance(url, str) or not url:
            raise DefinitionError(f"{kind} has no url")
        if kind == "StructureDefinition":
            if not res.get("type"):
                raise DefinitionError(f"StructureDefinition {url} has no type")
            if not (res.get("snapshot") or {}).get("element") and \
                    not (res.get("differential") or {}).get("element"):
                raise DefinitionError(f"StructureDefinition {url} has neither snapshot nor "
                                      "differential elements")
        self._tables[kind][strip_version(url)] = res

    def load(self, path: str) -> int:
        """Load a file, a folder or an npm package; returns the number of resources found."""
        path = os.fspath(path)
        if os.path.isfile(path):
            n = 0
            for res in iter_resources(_read_json(path)):
                self.add_resource(res)
                n += 1
            return n
        if not os.path.isdir(path):
            raise DefinitionError(f"no such file or folder: {path}")
        pkg = os.path.join(path, "package")
        if os.path.isfile(os.path.join(pkg, "package.json")):
            return self._load_package(pkg)
        if os.path.isfile(os.path.join(path, "package.json")) and \
                os.path.isfile(os.path.join(path, ".index.json")):
            return self._load_package(path)
        n = 0
        for file in _walk_json(path):
            try:
                doc = _read_json(file)
            except DefinitionError:
                continue
            for res in iter_resources(doc):
                self.add_resource(res)
                n += 1
        return n

    def _load_package(self, folder: str) -> int:
        index_file = os.path.join(folder, ".index.json")
        n = 0
        if os.path.isfile(index_file):
            index = _read_json(index_file) or {}
            for item in index.get("files", []):
                kind, url = item.get("resourceType"), item.get("url")
                if kind in KINDS and url:
                    self._tables[kind][strip_version(url)] = _Lazy(
                        os.path.join(folder, item["filename"]))
                    n += 1
            return n
        for name in sorted(os.listdir(folder)):
            if name.endswith(".json") and name not in ("package.json", ".index.json"):
                for res in iter_resources(_read_json(os.path.join(folder, name))):
                    self.add_resource(res)
                    n += 1
        return n


def _walk_json(folder: str) -> Iterable[str]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".json") and name not in ("package.json", ".index.json"):
                yield os.path.join(root, name)


class Layered:
    """User definitions over the vendored core: lookups try the user layer first."""

    def __init__(self, user: Definitions):
        self.user = user
        self.core = core()

    def get(self, kind: str, url: str | None) -> dict | None:
        return self.user.get(kind, url) or self.core.get(kind, url)

    def sd(self, url: str | None) -> dict | None:
        return self.get("StructureDefinition", url)

    def vs(self, url: str | None) -> dict | None:
        return self.get("ValueSet", url)

    def cs(self, url: str | None) -> dict | None:
        return self.get("CodeSystem", url)

    def type_sd(self, type_code: str) -> dict | None:
        """The base definition of a FHIR type (``HumanName`` -> its core SD)."""
        return self.core.get("StructureDefinition", CORE_PREFIX + type_code)
