"""Switch params.yaml between profiles: ``python -m hpo_embed.gpu.profile gpu|release|embedded``.

A profile is an overlay in ``profiles/<name>.yaml``: only the keys it sets change in
params.yaml; comments, styles and every other line are kept. ``embedded`` restores the
defaults, so it names every key another overlay names (``gpu`` names the same keys).

params.yaml is edited line by line, not re-serialised: a YAML library's round trip moves
comments and, on files that ``dvc exp run -S ...`` rewrote (block-style lists, comment
lines between a key and its items), produced files it could not read back. Each named
key's value (its line plus any block-sequence or continuation lines below it) is
replaced by the overlay value in flow style on the key's line; its end-of-line comment
and the comment lines are kept. The result is then read back and checked value by value
against the original with the overlay applied, and validated, before params.yaml is
replaced: for any file the tools themselves write, embedded -> gpu -> embedded returns
the same values (and, for the shipped params.yaml, the same bytes: a key that already has
the overlay's value is not rewritten); anything else is a one-line error and params.yaml is
left as it was.
"""
from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import yaml

from hpo_embed.common import ROOT, UserError, atomic_write_text, run_stage
from hpo_embed.params import PARAMS_FILE, parse_params

PROFILES = ROOT / "profiles"
_KEY = re.compile(r"^(?P<indent>[ ]*)(?P<key>[A-Za-z_][A-Za-z0-9_]*)[ ]*:(?=[ \t]|$)")


def overlay_settings(overlay: dict) -> dict:
    """A profile overlay as flat settings, a section's keys dotted (``train.epochs``): the keys a
    profile names, and what `dvc exp run -S` takes."""
    settings = {}
    for key, value in overlay.items():
        if isinstance(value, dict):
            settings |= {f"{key}.{k}": v for k, v in value.items()}
        else:
            settings[key] = value
    return settings


def load_profile(name: str, folder: Path = PROFILES) -> dict:
    path = folder / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise UserError(f"unknown profile {name!r} (known: {known})")
    data = _safe_load(path.read_text(encoding="utf-8"), path) or {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping")
    for k, v in data.items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                if isinstance(vv, dict) and vv:
                    raise UserError(f"{path}: {k}.{kk}: profiles set whole values two levels deep at most")
    return data


def _safe_load(text: str, where) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{where}{line}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None


def _flow(value) -> str:
    """``value`` as one line of YAML flow syntax."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf"), allow_unicode=True,
                          sort_keys=False).strip()
    if text.endswith("\n..."):
        text = text[:-4].rstrip()
    elif text.endswith("..."):
        text = text[:-3].rstrip()
    if "\n" in text:
        raise UserError(f"profile value {value!r} cannot be written on one line")
    return text


def _eol_comment(rest: str) -> str:
    """The ``  # comment`` part (with its leading spaces) of a value, '' if none."""
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            j = i
            while j > 0 and rest[j - 1] in " \t":
                j -= 1
            return rest[j:]
    return ""


def _is_content(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _value_end(lines: list[str], i: int, indent: int) -> int:
    """Index after the last line of the value that starts on line ``i`` (a key at ``indent``):
    more-indented lines, and block-sequence items at the key's own indent."""
    j = i + 1
    last = i
    while j < len(lines):
        line = lines[j]
        if _is_content(line):
            ind = _indent(line)
            if ind > indent or (ind == indent and line.lstrip(" ").startswith("- ") or
                                ind == indent and line.strip() == "-"):
                last = j
            else:
                break
        j += 1
    return last + 1


def _find_key(lines: list[str], start: int, stop: int, indent: int | None, key: str) -> tuple[int, int] | None:
    """(line index, indent) of ``key`` at ``indent`` (None: the first indent seen) in lines[start:stop]."""
    want = indent
    for i in range(start, stop):
        m = _KEY.match(lines[i])
        if not m:
            continue
        ind = len(m.group("indent"))
        if want is None:
            want = ind
        if ind == want and m.group("key") == key:
            return i, ind
    return None


def _section_span(lines: list[str], key: str) -> tuple[int, int] | None:
    found = _find_key(lines, 0, len(lines), 0, key)
    if found is None:
        return None
    i, _ = found
    return i, _value_end(lines, i, 0)


def _set_value(lines: list[str], start: int, stop: int, key: str, value) -> None:
    """Replace (or add at the end of lines[start:stop]) ``key: value`` in place."""
    body_indent = None
    for i in range(start, stop):
        if _is_content(lines[i]):
            body_indent = _indent(lines[i])
            break
    found = _find_key(lines, start, stop, body_indent, key)
    if found is None:
        if body_indent is None:
            body_indent = 2 if start > 0 else 0
        at = stop
        while at > start and not _is_content(lines[at - 1]):
            at -= 1
        lines.insert(at, " " * body_indent + f"{key}: {_flow(value)}")
        return
    i, ind = found
    end = _value_end(lines, i, ind)
    m = _KEY.match(lines[i])
    head = lines[i][:m.end()]
    rest = lines[i][m.end():]
    comment = _eol_comment(rest)
    new_line = f"{head} {_flow(value)}"
    if comment:
        # keep the comment's column when the new value fits before it (a comment pushed right
        # by a long value, one space after it, moves back to two spaces after the new value)
        gap = len(comment) - len(comment.lstrip())
        hash_col = len(lines[i]) - len(comment.lstrip()) if gap > 1 else len(new_line) + 2
        new_line = (new_line.ljust(hash_col) if len(new_line) < hash_col else new_line + " ") + comment.lstrip()
    kept = [line for line in lines[i + 1:end] if not _is_content(line)]   # comment lines stay
    lines[i:end] = [new_line, *kept]


_MISSING = object()


def _same(have, want) -> bool:
    """A line already holding the overlay's value is left as written (``1.0e-04`` stays, not
    ``0.0001``): switching profiles there and back gives the same file, not just the same values."""
    return type(have) is type(want) and have == want


def _expected(original: dict, overlay: dict) -> dict:
    out = copy.deepcopy(original)
    for k, v in overlay.items():
        if isinstance(v, dict):
            if not isinstance(out.get(k), dict):
                raise UserError(f"profile sets {k}.* but params.yaml has no {k} section")
            out[k].update(copy.deepcopy(v))
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_profile(name: str, params_path: Path = PARAMS_FILE, folder: Path = PROFILES) -> str:
    """Return the text of ``params_path`` with the profile applied (checked and validated)."""
    overlay = load_profile(name, folder)
    text = params_path.read_text(encoding="utf-8")
    original = _safe_load(text, params_path)
    if original is None:
        original = {}
    if not isinstance(original, dict):
        raise UserError(f"{params_path}: expected a mapping at the top level")
    want = _expected(original, overlay)
    lines = text.splitlines()
    for k, v in overlay.items():
        if isinstance(v, dict):
            span = _section_span(lines, k)
            if span is None:
                raise UserError(f"profile sets {k}.* but params.yaml has no {k} section")
            for kk, vv in v.items():
                if not _same(original[k].get(kk, _MISSING), vv):
                    s0, s1 = _section_span(lines, k)
                    _set_value(lines, s0 + 1, s1, kk, vv)
        elif not _same(original.get(k, _MISSING), v):
            _set_value(lines, 0, len(lines), k, v)
    out = "\n".join(lines) + "\n"
    got = _safe_load(out, f"{params_path} with profile {name}")
    if got != want:
        diff = sorted(f"{k}.{kk}" if isinstance(want.get(k), dict) else k
                      for k in set(want) | set(got or {})
                      for kk in ((set(want.get(k) or {}) | set((got or {}).get(k) or {}))
                                 if isinstance(want.get(k), dict) else [None])
                      if (want.get(k) if kk is None else (want.get(k) or {}).get(kk)) !=
                      ((got or {}).get(k) if kk is None else ((got or {}).get(k) or {}).get(kk)))
        raise UserError(f"{params_path}: cannot apply profile {name} line by line (would change "
                        f"{', '.join(diff[:5])}); params.yaml is unchanged, edit those keys by hand")
    parse_params(got, f"profile {name}")
    return out


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise UserError("usage: python -m hpo_embed.gpu.profile <profile>  (profiles: "
                        + ", ".join(sorted(p.stem for p in PROFILES.glob("*.yaml"))) + ")")
    text = apply_profile(argv[0], PARAMS_FILE)    # the module global, looked up now (tests point it elsewhere)
    atomic_write_text(PARAMS_FILE, text)
    print(f"params.yaml now uses the {argv[0]} profile ({PROFILES / (argv[0] + '.yaml')}); "
          "review with `dvc params diff`, run with `dvc repro` or `dvc exp run`")


if __name__ == "__main__":
    run_stage(main)
