"""``extract_json``: the handoff's Change 1 done right -- a tolerant tokenizer and an iterative parser.

The handoff's ``_extract_json`` stripped fences with a regex, rewrote every ``\\d+,\\d+`` outside
strings to ``\\d+.\\d+`` and called ``json.loads``, then a greedy ``\\{[\\s\\S]*\\}``. That merges
integer arrays (``[1,2,3]`` becomes ``[1.2,3]``), fails on two objects in one completion (the greedy
match spans both), on trailing commas, single quotes and Python literals, raises RecursionError on
deep nesting and is quadratic on hostile input. Here:

- the text is scanned for the first ``{`` that starts a complete object; prose, code fences (any
  case, any language tag) and a second object after it are ignored;
- a fast path hands the candidate to ``json.JSONDecoder.raw_decode`` (valid JSON costs microseconds);
- otherwise a regex tokenizer feeds an explicit-stack parser (no recursion) that accepts trailing
  commas, single-quoted strings, unquoted identifier keys, ``True/False/None``, ``NaN``/``Infinity``,
  ``//`` and ``/* */`` comments, raw control characters and unknown escapes inside strings;
- PT-BR numbers are read only where a number stands as an object *value*: ``4,5`` -> 4.5,
  ``1.234,56`` -> 1234.56, ``1.234.567`` -> 1234567. Inside arrays a comma is always a separator
  (``[4,5]`` stays two integers); strings are never touched; ``1.234`` alone is JSON's 1.234;
- a truncated object (the text ends inside it) gives None, as does a top-level array; a syntax
  error restarts the scan after the error position, so the total work is linear in the input.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["extract_json", "parse_object"]

_DECODER = json.JSONDecoder()
_WS = re.compile(r"(?:\s+|//[^\n]*|/\*.*?\*/)*", re.S)
_STR_D = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_STR_S = re.compile(r"'[^'\\]*(?:\\.[^'\\]*)*'", re.S)
_NUM = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_END = r"(?=\s*(?:[,}\]]|/[/*]|\Z))"
_PT_THOUSANDS_DEC = re.compile(r"([-+]?\d{1,3}(?:\.\d{3})+),(\d+)" + _END)
_PT_THOUSANDS = re.compile(r"([-+]?\d{1,3}(?:\.\d{3}){2,})" + _END)
_PT_DECIMAL = re.compile(r"([-+]?\d+),(\d+(?:[eE][-+]?\d+)?)" + _END)
_IDENT = re.compile(r"[A-Za-z_$][\w$]*")
_ESC = re.compile(r"\\(u[0-9a-fA-F]{4}|.)", re.S)
_SURR = re.compile("[\ud800-\udbff][\udc00-\udfff]")
_ESCAPES = {'"': '"', "'": "'", "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_LITERALS = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None,
             "NaN": float("nan"), "Infinity": float("inf")}

MAX_DEPTH = 500  # deeper nesting is refused (results stay printable and comparable)

# parser states
_KEY, _COLON, _VALUE, _COMMA = 0, 1, 2, 3


class _Fail(Exception):
    def __init__(self, pos: int, eof: bool = False):
        self.pos, self.eof = pos, eof


def _unescape(body: str) -> str:
    def rep(m: re.Match) -> str:
        e = m.group(1)
        return chr(int(e[1:], 16)) if len(e) == 5 else _ESCAPES.get(e, e)

    out = _ESC.sub(rep, body)
    if "\\u" in body:
        out = _SURR.sub(lambda m: m.group().encode("utf-16", "surrogatepass").decode("utf-16"), out)
    return out


def _string(s: str, i: int) -> tuple[str, int]:
    if s[i] == '"':
        try:
            return json.decoder.scanstring(s, i + 1, False)
        except ValueError:
            m = _STR_D.match(s, i)
    else:
        m = _STR_S.match(s, i)
    if m is None:
        raise _Fail(len(s), eof=True)
    return _unescape(m.group()[1:-1]), m.end()


def _to_number(text: str) -> float | int:
    if re.fullmatch(r"[-+]?\d+", text):
        try:
            return int(text)
        except ValueError:  # more digits than int() converts
            pass
    return float(text)


def _number(s: str, i: int, in_object: bool) -> tuple[float | int, int]:
    if in_object:
        m = _PT_THOUSANDS_DEC.match(s, i)
        if m:
            return float(m.group(1).replace(".", "") + "." + m.group(2)), m.end()
        m = _PT_DECIMAL.match(s, i)
        if m:
            return float(m.group(1) + "." + m.group(2)), m.end()
    m = _PT_THOUSANDS.match(s, i)
    if m:
        return int(m.group(1).replace(".", "")), m.end()
    m = _NUM.match(s, i)
    if m is None:
        raise _Fail(i)
    return _to_number(m.group()), m.end()


def _value(s: str, i: int, in_object: bool) -> tuple[Any, int]:
    """A scalar value at ``i`` (containers are handled by the caller's stack)."""
    c = s[i]
    if c == '"' or c == "'":
        return _string(s, i)
    if c.isdigit() or c in "-+.":
        if s.startswith("-Infinity", i):
            return float("-inf"), i + 9
        return _number(s, i, in_object)
    m = _IDENT.match(s, i)
    if m and m.group() in _LITERALS:
        return _LITERALS[m.group()], m.end()
    if m and m.end() == len(s) and any(k.startswith(m.group()) for k in _LITERALS):
        raise _Fail(len(s), eof=True)  # 'tru' at the very end: truncated
    raise _Fail(i)


def parse_object(s: str, i: int) -> tuple[dict | list, int]:
    """Parse the container opening at ``s[i]`` ('{' or '['); return (value, end) or raise ``_Fail``."""
    n = len(s)
    # frame: [container, is_object, pending_key, state]
    stack: list[list] = []
    c = s[i]
    stack.append([{} if c == "{" else [], c == "{", None, _KEY if c == "{" else _VALUE])
    i += 1
    while True:
        i = _WS.match(s, i).end()
        if i >= n:
            raise _Fail(n, eof=True)
        c = s[i]
        frame = stack[-1]
        container, is_obj, state = frame[0], frame[1], frame[3]
        if state == _COMMA or (state == _KEY and c == "}") or (state == _VALUE and not is_obj and c == "]"):
            if c == ",":
                frame[3] = _KEY if is_obj else _VALUE
                i += 1
                continue
            if c != ("}" if is_obj else "]"):
                raise _Fail(i)
            i += 1
            stack.pop()
            if not stack:
                return container, i
            parent = stack[-1]
            if parent[1]:
                parent[0][parent[2]] = container
            else:
                parent[0].append(container)
            parent[3] = _COMMA
            continue
        if state == _KEY:
            if c == '"' or c == "'":
                key, i = _string(s, i)
            else:
                m = _IDENT.match(s, i)
                if m is None:
                    raise _Fail(i)
                key, i = m.group(), m.end()
            frame[2], frame[3] = key, _COLON
            continue
        if state == _COLON:
            if c != ":":
                raise _Fail(i)
            frame[3] = _VALUE
            i += 1
            continue
        # state == _VALUE
        if c == "{" or c == "[":
            frame[3] = _COMMA  # the child's value is attached when it closes
            if len(stack) >= MAX_DEPTH:
                raise _Fail(i)
            stack.append([{} if c == "{" else [], c == "{", None, _KEY if c == "{" else _VALUE])
            i += 1
            continue
        v, i = _value(s, i, is_obj)
        if is_obj:
            container[frame[2]] = v
        else:
            container.append(v)
        frame[3] = _COMMA


def _leading_array(text: str) -> bool:
    """True when the text (after an optional fence line) is a complete top-level JSON array."""
    t = text.lstrip()
    if t.startswith("```"):
        nl = t.find("\n")
        t = t[nl + 1:].lstrip() if nl >= 0 else ""
    if not t.startswith("["):
        return False
    try:
        parse_object(t, 0)
        return True
    except _Fail:
        return False


def extract_json(text: Any) -> dict | None:
    """The first complete JSON object in a model completion, read tolerantly; None if there is none.

    Never raises; linear time on hostile input.

    >>> extract_json('```json\\n{"sentiment": "positive", "sentiment_score": 4,5}\\n```')
    {'sentiment': 'positive', 'sentiment_score': 4.5}
    >>> extract_json("Claro! {'total': 1.234,56, 'ids': [1,2,3], 'ok': True,} Espero ter ajudado.")
    {'total': 1234.56, 'ids': [1, 2, 3], 'ok': True}
    >>> extract_json('{"a": 1} {"b": 2}')
    {'a': 1}
    >>> extract_json('{"texto": "nota 4,5", "n": 2}')
    {'texto': 'nota 4,5', 'n': 2}
    >>> extract_json('{"sentiment": "negative", "summary": "chegou atras') is None
    True
    >>> extract_json('[1, 2, 3]') is None
    True
    """
    try:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", "replace")
        if not isinstance(text, str):
            return None
        pos = text.find("{")
        if pos < 0 or _leading_array(text):
            return None
        try:  # fast path, first candidate only (a JSONDecodeError costs O(pos) to build)
            obj, _ = _DECODER.raw_decode(text, pos)
            if isinstance(obj, dict):
                return obj
        except (ValueError, RecursionError):
            pass
        while pos >= 0:
            try:
                obj, _ = parse_object(text, pos)
                return obj if isinstance(obj, dict) else None
            except _Fail as f:
                if f.eof:
                    return None
                pos = text.find("{", max(f.pos, pos + 1))
        return None
    except Exception:  # noqa: BLE001 - a reward helper never raises
        return None
