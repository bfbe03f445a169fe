"""Griffe extension for the API reference: Sphinx idioms in the docstrings, rendered.

``#:`` comments above an attribute become its docstring.

The docstrings are Google style, but many name other objects the Sphinx way
(``:func:`align```, ``:class:`~bayesdistill.ShapeMismatchError```, ``:mod:`.terms```). Each role
becomes an optional autorefs link around the name in code font: a link where the target is in
the reference, plain code where it is not (a private module, another library).
"""

from __future__ import annotations

import html
import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const)(?:ref)?:`([^`]+)`")


def _exists(obj: griffe.Object, path: str) -> bool:
    try:
        obj.modules_collection.get_member(path)
    except Exception:  # noqa: BLE001 - griffe raises KeyError or alias resolution errors
        return False
    return True


def _resolve(obj: griffe.Object, name: str) -> str:
    module = obj if obj.is_module else obj.module
    if name.startswith("."):
        scopes = [module] if module.is_package or module.is_init_module else [module.parent or module]
        candidates = [scope.path + name for scope in scopes]
    else:
        candidates = [name]
        scope: griffe.Object | None = obj
        while scope is not None:
            candidates.append(f"{scope.path}.{name}")
            scope = scope.parent
    for candidate in candidates:
        if _exists(obj, candidate):
            return candidate
    return candidates[0]


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of the package into optional cross-references."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:  # griffe >= 1.x
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.is_attribute and obj.docstring is None:
            self._comment_docstring(obj)
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(lambda m: self._link(obj, m.group(1)), obj.docstring.value)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)

    @staticmethod
    def _comment_docstring(attr: griffe.Object) -> None:
        """Sphinx's ``#:`` comments above a module or class attribute become its docstring."""
        try:
            lines = attr.module.lines
        except Exception:  # noqa: BLE001 - no source
            return
        index = (attr.lineno or 0) - 2
        comment = []
        while 0 <= index < len(lines) and lines[index].strip().startswith("#:"):
            comment.insert(0, lines[index].strip()[2:].strip())
            index -= 1
        if comment:
            attr.docstring = griffe.Docstring("\n".join(comment), lineno=index + 2, parent=attr)

    @staticmethod
    def _link(obj: griffe.Object, target: str) -> str:
        text = target.strip()
        short = text.startswith("~")
        text = text.lstrip("~").removesuffix("()")
        shown = text.rsplit(".", 1)[-1] if short else text.lstrip(".")
        identifier = _resolve(obj, text)
        return (f'<autoref identifier="{html.escape(identifier)}" optional>'
                f"<code>{html.escape(shown)}</code></autoref>")
