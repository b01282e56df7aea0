"""docs/agent.md ("Build your agent") works as written: its files run, its test passes."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "agent.md"
BLOCK = re.compile(r'```python(?: title="(?P<title>[^"]+)")?\n(?P<code>.*?)```', re.S)


def blocks() -> list[tuple[str | None, str]]:
    return [(m.group("title"), m.group("code")) for m in BLOCK.finditer(PAGE.read_text(encoding="utf-8"))]


def test_agent_with_a_tool_is_under_30_lines() -> None:
    """The page's promise: a custom agent with a tool in under 30 lines."""
    files = dict(b for b in blocks() if b[0] is not None)
    assert len(files["myapp.py"].splitlines()) < 30


def test_every_snippet_compiles() -> None:
    """Untitled snippets (fragments) are at least valid Python."""
    for title, code in blocks():
        compile(code, title or "<snippet>", "exec")


async def test_page_files_run_and_the_page_test_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """myapp.py builds its agent (the OpenAI client needs only a key to exist), and test_myapp.py,
    written against agent_worker.testing, passes against a real worker and embedded server."""
    monkeypatch.setenv("OPENAI_API_KEY", "mock-api-key")
    for title, code in blocks():
        if title is not None:
            (tmp_path / title).write_text(code, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    myapp = importlib.import_module("myapp")
    assert [t.name for t in myapp.agent.tools] == ["in_stock"]
    page_test = importlib.import_module("test_myapp")
    try:
        await page_test.test_stock_question()
    finally:
        await myapp.agent.aclose()
        for name in ("myapp", "test_myapp"):
            monkeypatch.delitem(sys.modules, name, raising=False)
