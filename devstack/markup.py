"""HTML where every value is data: text is escaped unless it is Markup this module built.

The console shows customer text, record bytes and object keys. Building the page only from
`el()` and `text()` means no code path can put such a value into the page as markup: a caller
cannot forget to escape, because escaping is what happens to anything that is not Markup.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Iterable, Mapping
from urllib.parse import urlencode

# Characters a browser would not show as themselves: controls (but tab and newline), format
# characters (zero-width ones, and the direction overrides that make text read backwards),
# line and paragraph separators, lone surrogates, and the Unicode noncharacters.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_VOID = frozenset({"br", "hr", "img", "input", "meta", "link"})
_NAME = re.compile(r"[a-z][a-z0-9-]*")


class Markup(str):
    """Text that is HTML already: made only by this module."""

    __slots__ = ()


def invisible(char: str) -> bool:
    code = ord(char)
    if char in "\t\n":
        return False
    return (
        unicodedata.category(char) in _INVISIBLE_CATEGORIES
        or 0xFDD0 <= code <= 0xFDEF
        or code & 0xFFFE == 0xFFFE
    )


def code_of(char: str) -> str:
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _visible(value: str, replace: bool = False) -> str:
    if value.isascii() and value.isprintable():
        return value
    return "".join(("\ufffd" if replace else code_of(c)) if invisible(c) else c for c in value)


def text(value: object) -> Markup:
    """`value` as text in HTML: escaped, and every invisible character shown as its code."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(_visible(str(value)), quote=True))


def _attribute(value: object) -> str:
    return html.escape(_visible(str(value), replace=True), quote=True)


def join(children: Iterable[object]) -> Markup:
    return Markup("".join(_child(child) for child in children))


def _child(child: object) -> str:
    if child is None or child is False:
        return ""
    if isinstance(child, str | int | float):
        return text(child)
    if isinstance(child, Iterable):
        return join(child)
    return text(child)


def el(tag: str, *children: object, **attributes: object) -> Markup:
    """<tag attributes>children</tag>. An attribute named `class_` is `class`; `data_x` is
    `data-x`; True is a bare attribute; None and False leave it out."""
    if not _NAME.fullmatch(tag):
        raise ValueError(f"not a tag name: {tag!r}")
    parts = [tag]
    for name, value in attributes.items():
        name = name.rstrip("_").replace("_", "-")
        if not _NAME.fullmatch(name):
            raise ValueError(f"not an attribute name: {name!r}")
        if value is None or value is False:
            continue
        parts.append(name if value is True else f'{name}="{_attribute(value)}"')
    opening = f"<{' '.join(parts)}>"
    if tag in _VOID:
        if children:
            raise ValueError(f"<{tag}> takes no children")
        return Markup(opening)
    return Markup(f"{opening}{join(children)}</{tag}>")


def url(path: str, query: Mapping[str, object] | None = None, fragment: str = "") -> str:
    """A same-origin link: the path is ours, every query value is encoded."""
    if not path.startswith("/") or path.startswith("//"):
        raise ValueError(f"not a path on this server: {path!r}")
    shown = {k: str(v) for k, v in (query or {}).items() if v is not None}
    # A key no S3 could hold (a lone surrogate) still makes a link, if one to nothing.
    encoded = urlencode(shown, encoding="utf-8", errors="replace")
    return path + (f"?{encoded}" if shown else "") + (f"#{fragment}" if fragment else "")


def document(
    title: str, head: Iterable[Markup], body: Iterable[Markup], **body_attributes: object
) -> bytes:
    page = join(
        [
            Markup("<!doctype html>"),
            el(
                "html",
                el("head", el("meta", charset="utf-8"), el("title", title), *head),
                el("body", *body, **body_attributes),
                lang="en",
            ),
        ]
    )
    return page.encode("utf-8")
