"""A griffe extension for the API reference: cyllama's docstrings use Sphinx roles
(:class:`~cyllama.LLM`) and reST literal blocks (``text::``); this turns them into Markdown
(`LLM`, ``text:``) so mkdocstrings renders them as code instead of raw markup."""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|mod|data|exc|obj):`(~?)([^`]+)`")


def _role(m: re.Match) -> str:
    target = m.group(2)
    if m.group(1):  # ~a.b.C shows only C, as Sphinx does
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def to_markdown(text: str) -> str:
    text = _ROLE.sub(_role, text)
    # "text::" before an indented block is reST's literal block; Markdown needs only the indent
    return re.sub(r"(?<=\S)::[ \t]*$", ":", text, flags=re.M)


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
