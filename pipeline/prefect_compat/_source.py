"""Checks of what a patch relies on, read from the installed libraries' source files.

The checks parse the installed files and never import them: Prefect reads its settings from
the environment when it is first imported (so an early import would freeze the wrong ones),
and importing Prefect's server modules, docket and burner-redis costs a process ~40 MB and
~1 s (measured: the supervisor went from 157 to 196 MB RSS), which the supervisor and the
worker would otherwise carry for their whole life only to run a start-up check. Reading and
parsing the eight files takes ~0.2 s (measured on 2 busy cores), once per process.

A *fingerprint* is a hash of a function's source with its docstring, comments and all
whitespace removed: reformatting does not change it, any change to the code does. A patch
records the fingerprints of the functions it replaces or whose behaviour it builds on, as
they were in the version it was written for; ``python -m pipeline.prefect_compat`` prints
the installed ones.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import io
import tokenize
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import PrefectCompatError

__all__ = ["Source", "Inspection", "installed_source", "installed_version", "version_drift"]

FunctionNode = ast.FunctionDef | ast.AsyncFunctionDef
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
           tokenize.ENDMARKER}


@dataclass(frozen=True)
class Source:
    """One module's source text, parsed."""

    module: str
    origin: str  #: the file it was read from, or "stand-in"
    tree: ast.Module
    tokens: tuple[tokenize.TokenInfo, ...]

    @classmethod
    def parse(cls, module: str, text: str, origin: str = "stand-in") -> Source:
        """Parse ``text`` as the source of ``module``."""
        tokens = tuple(tokenize.generate_tokens(io.StringIO(text).readline))
        return cls(module, origin, ast.parse(text), tokens)

    def find(self, qualname: str) -> ast.AST | None:
        """The top-level function or class ``qualname`` (``"Class.method"`` for a method),
        the last definition when there are several; None when there is none."""
        body: list[ast.stmt] = self.tree.body
        node: ast.AST | None = None
        for part in qualname.split("."):
            found = [n for n in body if isinstance(n, _DEFS) and n.name == part]
            if not found:
                return None
            node = found[-1]
            body = found[-1].body
        return node

    def normalized(self, node: ast.AST) -> str:
        """``node``'s source without decorators' layout, docstring, comments or whitespace."""
        first = min([getattr(node, "lineno", 0)]
                    + [d.lineno for d in getattr(node, "decorator_list", [])])
        last = getattr(node, "end_lineno", None) or first
        skip: range = range(0)
        body = getattr(node, "body", None)
        if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            skip = range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1)
        text = "".join(t.string for t in self.tokens
                       if first <= t.start[0] <= last and t.start[0] not in skip
                       and t.type not in _LAYOUT)
        return "".join(text.split())

    def fingerprint(self, node: ast.AST) -> str:
        """A short hash of ``normalized(node)``."""
        return hashlib.sha256(self.normalized(node).encode()).hexdigest()[:16]


def _module_file(module: str) -> Path | None:
    """The installed file of ``module``, found without importing it or its package."""
    top, _, rest = module.partition(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.origin.endswith(".py") else None
    for base in spec.submodule_search_locations or []:
        stem = Path(base, *rest.split("."))
        for candidate in (stem.with_name(stem.name + ".py"), stem / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


@functools.cache
def installed_source(module: str) -> Source | None:
    """The installed source of ``module`` (read once per process); None if not installed."""
    path = _module_file(module)
    if path is None:
        return None
    return Source.parse(module, path.read_text(encoding="utf-8"), str(path))


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (a PyPI name); None if not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_drift(written_for: Mapping[str, str]) -> list[str]:
    """``"prefect 3.9.1 -> 3.10.0"`` for each distribution whose installed version differs
    from the one a patch was written for."""
    drift = []
    for dist, version in written_for.items():
        installed = installed_version(dist)
        if installed != version:
            drift.append(f"{dist} {version} -> {installed or 'not installed'}")
    return drift


def _params(node: FunctionNode) -> list[str]:
    a = node.args
    names = [p.arg for p in (*a.posonlyargs, *a.args)]
    if a.vararg:
        names.append("*" + a.vararg.arg)
    names += [p.arg for p in a.kwonlyargs]
    if a.kwarg:
        names.append("**" + a.kwarg.arg)
    return names


def _default(node: FunctionNode, name: str) -> str | None:
    a = node.args
    positional = [*a.posonlyargs, *a.args]
    pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults, strict=True))
    pairs += [(p, d) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None]
    for param, default in pairs:
        if param.arg == name:
            return ast.unparse(default)
    return None


def _calls(node: ast.AST, func: str) -> Iterator[ast.Call]:
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            if (isinstance(f, ast.Name) and f.id == func) or (
                    isinstance(f, ast.Attribute) and f.attr == func):
                yield n


class Inspection:
    """Collects, for one patch, what the installed sources no longer have; ``done`` raises
    one ``PrefectCompatError`` naming all of it. ``sources`` maps a module name to stand-in
    source text, used instead of the installed file (to test the checks themselves)."""

    def __init__(self, sources: Mapping[str, str] | None = None) -> None:
        self.problems: list[str] = []
        self._stand_ins = dict(sources or {})
        self._reported: set[str] = set()

    def _problem(self, text: str) -> None:
        if text not in self._reported:
            self._reported.add(text)
            self.problems.append(text)

    def source(self, module: str) -> Source | None:
        """The source of ``module`` (a stand-in if given); None, noted, if not installed."""
        if module in self._stand_ins:
            return Source.parse(module, self._stand_ins[module])
        src = installed_source(module)
        if src is None:
            self._problem(f"{module} is not installed")
        return src

    def node(self, module: str, qualname: str) -> ast.AST | None:
        """The definition of ``module.qualname``; None, noted, if it is gone."""
        src = self.source(module)
        if src is None:
            return None
        found = src.find(qualname)
        if found is None:
            self._problem(f"{module}.{qualname} is gone")
        return found

    def function(self, module: str, qualname: str, *, params: Sequence[str] | None = None,
                 has: Sequence[str] = (), defaults: Mapping[str, str] | None = None) -> None:
        """Expect the function ``module.qualname`` with exactly ``params`` (when given), with
        at least the parameters ``has``, and with these ``defaults`` (source text)."""
        node = self.node(module, qualname)
        if node is None:
            return
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            self._problem(f"{module}.{qualname} is no longer a function")
            return
        names = _params(node)
        where = f"{module}.{qualname}"
        if params is not None and names != list(params):
            self._problem(f"{where} takes ({', '.join(names)}), expected ({', '.join(params)})")
        missing = [p for p in has if p not in names]
        if missing:
            self._problem(f"{where} has no parameter {', '.join(missing)}")
        for name, expected in (defaults or {}).items():
            got = _default(node, name)
            if name in names and got != expected:
                self._problem(f"{where} defaults {name} to {got}, expected {expected}")

    def fingerprints(self, expected: Mapping[tuple[str, str], str]) -> None:
        """Expect each ``(module, qualname)``'s source to have the recorded fingerprint."""
        for (module, qualname), fingerprint in expected.items():
            node = self.node(module, qualname)
            src = self.source(module)
            if node is None or src is None:
                continue
            got = src.fingerprint(node)
            if got != fingerprint:
                self._problem(f"{module}.{qualname} changed (source fingerprint {got}, "
                              f"written against {fingerprint})")

    def contains(self, module: str, qualname: str, code: str, meaning: str) -> None:
        """Expect ``code`` (whitespace ignored) in ``module.qualname``; else note that it no
        longer ``meaning``."""
        node = self.node(module, qualname)
        src = self.source(module)
        if node is None or src is None:
            return
        if "".join(code.split()) not in src.normalized(node):
            self._problem(f"{module}.{qualname} no longer {meaning}")

    def calls(self, module: str, qualname: str | None, func: str, *,
              without: Sequence[str] = ()) -> None:
        """Expect ``module.qualname`` (the whole module when None) to call ``func`` and never
        to pass it one of the keywords ``without`` (it would override the patch's value)."""
        src = self.source(module)
        if src is None:
            return
        scope = src.tree if qualname is None else self.node(module, qualname)
        if scope is None:
            return
        where = module if qualname is None else f"{module}.{qualname}"
        found = list(_calls(scope, func))
        if not found:
            self._problem(f"{where} no longer calls {func}()")
        passed = sorted({k.arg for c in found for k in c.keywords
                         if k.arg is not None and k.arg in without})
        if passed:
            self._problem(f"{where} now passes {', '.join(passed)} to {func}() itself")

    def done(self, patch: str, target: str, written_for: Mapping[str, str]) -> None:
        """Raise ``PrefectCompatError`` if anything was noted."""
        if not self.problems:
            return
        versions = ", ".join(f"{dist} {version}" for dist, version in written_for.items())
        installed = ", ".join(f"{dist} {installed_version(dist) or 'not installed'}"
                              for dist in written_for)
        raise PrefectCompatError(
            f"{patch} (replaces {target}): {'; '.join(self.problems)} "
            f"[written for {versions}; installed {installed}]"
        )
