"""Griffe extension: render gradc's reST-flavoured numpydoc docstrings as Markdown.

* Sphinx roles (:class:`~a.b.C`, :func:`f`, :mod:`m`, ...) become optional autorefs: a
  link when the target is documented on the site, plain code otherwise (never a warning).
* ``>>>`` blocks outside an "Examples" section become fenced ``pycon`` blocks.
* reST literal blocks (a paragraph ending in ``::`` and an indented block) become fenced
  ``text`` blocks.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|exc|obj|const):`(~?)([^`<]+?)`")
SECTION = re.compile(r"^(\w[\w ]*)\n-{3,}$", re.M)


def _role(m):
    short, target = m[1], m[2].strip()
    title = target.rsplit(".", 1)[-1] if short else target
    return f'<autoref identifier="{target}" optional><code>{title}</code></autoref>'


def _fence(lines, lang):
    indent = min(len(ln) - len(ln.lstrip()) for ln in lines if ln.strip())
    pad = " " * indent
    return [pad + "```" + lang, *lines, pad + "```"]


def convert(text: str) -> str:
    text = ROLE.sub(_role, text)
    lines, out, i, section = text.split("\n"), [], 0, ""
    while i < len(lines):
        ln = lines[i]
        if i + 1 < len(lines) and re.fullmatch(r"-{3,}", lines[i + 1].strip()) and ln.strip():
            section = ln.strip()
        if ln.lstrip().startswith(">>>") and section != "Examples":
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i])
                i += 1
            out += _fence(block, "pycon")
            continue
        if ln.rstrip().endswith("::") and not ln.strip().startswith(".."):
            base = len(ln) - len(ln.lstrip())
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            block = []
            while j < len(lines) and (not lines[j].strip()
                                      or len(lines[j]) - len(lines[j].lstrip()) > base):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
            if block:
                stripped = ln.rstrip()[:-2].rstrip()
                out.append(stripped + ":" if stripped else "")
                out.append("")
                out += _fence(block, "text")
                out.append("")
                i = j
                continue
        out.append(ln)
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    def on_instance(self, *, obj, **kwargs):
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
