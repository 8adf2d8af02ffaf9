"""Generated sections of the project's Markdown files (README results, study tables, the
release headline): a script owns the text between ``<!-- <name>:start -->`` and
``<!-- <name>:end -->`` and rewrites only that; the prose around it is kept."""
from __future__ import annotations

import re

from hpo_embed.common import UserError


def marks(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def read_section(text: str, name: str) -> str | None:
    """The body of section ``name`` in ``text`` (without its marks); None where it has none."""
    start, end = marks(name)
    m = re.search(re.escape(start) + r"\n?(.*?)" + re.escape(end), text, flags=re.S)
    return m.group(1) if m else None


def fill_section(text: str, name: str, body: str, where: str = "text") -> str:
    """``text`` with section ``name`` holding ``body`` (a newline is added if it lacks one);
    a text without both marks is a UserError naming ``where``."""
    start, end = marks(name)
    if start not in text or end not in text:
        raise UserError(f"{where}: no {start} … {end} section to fill")
    body = body if body.endswith("\n") else body + "\n"
    return re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: f"{start}\n{body}{end}", text,
                  count=1, flags=re.S)
