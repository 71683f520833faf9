"""The text format of a tool episode (SkyRL-SQL's): calls, observations and the tools' line in the system prompt.

An episode is one assistant message. The model calls a tool by writing ``<name>argument</name>`` and stops there
(the closing tag is a stop string); the actor runs the call and appends ``OBS_OPEN`` + the result or the error +
``OBS_CLOSE``; the model goes on, and ends with its answer in the task's own format. It needs no tool support in
the chat template. Stdlib only: the actor's tool runner (``rewards.tools``) and the stand-in's pre-training
documents (``zoo.pretrain``) format episodes with these same functions, so the model reads in pre-training what
the actor appends.
"""

from __future__ import annotations

import re

OBS_OPEN = "\n<observation>\n"
OBS_CLOSE = "\n</observation>\n"
OBS_ROWS, OBS_CHARS = 20, 1500
"""A tool's default observation budget (``configs.tools.ToolSpec``'s ``max_observation_rows`` and ``_chars``)."""

_FENCE = re.compile(r"^```[A-Za-z0-9_+-]*\s*\n?(.*?)\n?```$", re.S)


def call_text(name: str, argument: str) -> str:
    """What the model writes to call ``name``.

    >>> call_text("sql", "SELECT 1")
    '<sql>SELECT 1</sql>'
    """
    return f"<{name}>{argument}</{name}>"


def find_call(text: str, names) -> tuple[str, str] | None:
    """``(name, argument)`` of the call a turn's ``text`` ends in: the last ``</name>`` of one of ``names`` and the
    last ``<name>`` before it (the argument stripped, a code fence around it removed); ``(name, None)`` written as
    ``(name, "")`` when the opening tag is missing; None when the text closes no tool.

    >>> find_call("Vou conferir. <sql>SELECT 2</sql>\\n", ["sql"])
    ('sql', 'SELECT 2')
    >>> find_call("<sql>```sql\\nSELECT 1\\n```</sql>", ["sql"]), find_call("só texto", ["sql"])
    (('sql', 'SELECT 1'), None)
    """
    best = None
    for name in names:
        end = text.rfind(f"</{name}>")
        if end >= 0 and (best is None or end > best[1]):
            best = (name, end)
    if best is None:
        return None
    name, end = best
    start = text.rfind(f"<{name}>", 0, end)
    if start < 0:
        return name, ""
    arg = text[start + len(name) + 2:end].strip()
    m = _FENCE.match(arg)
    return name, (m.group(1).strip() if m else arg)


def observation(text: str) -> str:
    """The observation block appended after a call.

    >>> observation("erro: no such column: x")
    '\\n<observation>\\nerro: no such column: x\\n</observation>\\n'
    """
    return OBS_OPEN + text + OBS_CLOSE


def clip(text: str, max_lines: int, max_chars: int) -> tuple[str, bool]:
    """``text`` cut to ``max_lines`` lines and ``max_chars`` characters, with a note when cut; (text, cut).

    >>> clip("a\\nb\\nc", 2, 100)
    ('a\\nb\\n(mostrando 2 de 3 linhas)', True)
    >>> clip("x" * 30, 5, 20)
    ('xxxxxxxxxxxxxxxxxxxx… (cortado)', True)
    """
    lines = text.split("\n")
    cut = False
    if len(lines) > max_lines:
        text = "\n".join(lines[:max_lines]) + f"\n(mostrando {max_lines} de {len(lines)} linhas)"
        cut = True
    if len(text) > max_chars:
        text = text[:max_chars] + "… (cortado)"
        cut = True
    return text, cut


def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 and v else (f"{v:.2f}".rstrip("0").rstrip(".") if v % 1 else str(int(v)))
    if isinstance(v, (bytes, bytearray)):
        return bytes(v).hex()
    return " ".join(str(v).split())


def rows_text(columns, rows, max_rows: int, max_chars: int, more: bool = False) -> tuple[str, bool]:
    """A query's result as the model reads it: a header, one ``a | b`` line per row, cut to ``max_rows`` rows and
    ``max_chars`` characters (a note says how many there were; ``more``: the sandbox stopped reading). (text, cut).

    >>> rows_text(("uf", "n"), [("SP", 12), ("RJ", 3.5)], 20, 500)
    ('uf | n\\nSP | 12\\nRJ | 3.5', False)
    >>> rows_text(("n",), [], 20, 500)
    ('n\\n(nenhuma linha)', False)
    >>> rows_text(("n",), [(i,) for i in range(5)], 2, 500)
    ('n\\n0\\n1\\n(mostrando 2 de 5 linhas)', True)
    """
    head = " | ".join(str(c) for c in columns)
    if not rows:
        return head + "\n(nenhuma linha)", False
    body = [" | ".join(_cell(v) for v in r) for r in rows[:max_rows]]
    cut = len(rows) > max_rows or more
    text = "\n".join([head, *body])
    if cut:
        text += f"\n(mostrando {min(max_rows, len(rows))} de {len(rows)}{'+' if more else ''} linhas)"
    if len(text) > max_chars:
        text, cut = text[:max_chars] + "… (cortado)", True
    return text, cut


def tools_prompt(signatures: list[tuple[str, str, str]], max_turns: int) -> str:
    """The paragraph that tells the model its tools: ``signatures`` are ``(name, "name(a: str)", description)``.

    >>> print(tools_prompt([("sql", "sql(query: str)", "Executa uma consulta.")], 3))
    Ferramentas: antes de responder, você pode chamar uma ferramenta escrevendo <nome>argumento</nome> e parando \
ali; o resultado (ou o erro) volta em <observation>…</observation>. Até 2 chamadas; depois, responda no formato \
pedido.
    - sql(query: str): Executa uma consulta.
    """
    calls = f"{max_turns - 1} chamada{'s' if max_turns > 2 else ''}"
    lines = [f"Ferramentas: antes de responder, você pode chamar uma ferramenta escrevendo <nome>argumento</nome> e "
             f"parando ali; o resultado (ou o erro) volta em <observation>…</observation>. Até {calls}; depois, "
             "responda no formato pedido."]
    lines += [f"- {sig}: {desc}" for _, sig, desc in signatures]
    return "\n".join(lines)


def with_tools(messages: list[dict], text: str) -> list[dict]:
    """``messages`` with ``text`` added to the system message (one is put first when there is none).

    >>> with_tools([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}], "T")[0]["content"]
    'S\\n\\nT'
    >>> [m["role"] for m in with_tools([{"role": "user", "content": "U"}], "T")]
    ['system', 'user']
    """
    out = [dict(m) for m in messages]
    if out and out[0].get("role") == "system":
        out[0]["content"] = f"{out[0].get('content', '')}\n\n{text}"
        return out
    return [{"role": "system", "content": text}, *out]
