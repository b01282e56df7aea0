"""The shipped bundle (agent_worker/web/static) is exactly what web/src builds to, and web/src
type-checks: rebuild with the pinned esbuild from web/package-lock.json and compare bytes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agent_worker.web import STATIC_FILES, static_file

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "web"

pytestmark = pytest.mark.node


def _npm_tools() -> None:
    if not (WEB / "node_modules" / ".bin" / "esbuild").exists():
        pytest.fail("web/node_modules is missing: run `make setup` (it runs `npm ci` in web/)")


def test_the_shipped_bundle_is_built_from_the_sources(tmp_path: Path) -> None:
    _npm_tools()
    node = shutil.which("node")
    assert node is not None, "node is required to build the web client"
    out = tmp_path / "static"
    subprocess.run([node, "build.mjs", "--out", str(out)], cwd=WEB, check=True, timeout=300)
    stale = [name for name in STATIC_FILES if (out / name).read_bytes() != static_file(name)]
    assert not stale, f"agent_worker/web/static is stale ({', '.join(stale)}): run `make web` and commit"


def test_the_sources_type_check() -> None:
    _npm_tools()
    result = subprocess.run(
        [str(WEB / "node_modules" / ".bin" / "tsc"), "-p", "."],
        cwd=WEB,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_bundle_pins_the_official_packages() -> None:
    """The page is built on the official packages at the versions the worker speaks (no CDN)."""
    import json  # noqa: PLC0415

    lock = json.loads((WEB / "package-lock.json").read_text())["packages"]
    assert lock["node_modules/@ably/ai-transport"]["version"] == "0.8.0"
    assert lock["node_modules/ably"]["version"] == "2.28.0"
    html = static_file("index.html").decode()
    assert "http://" not in html and "https://" not in html
    assert b"ChatTransport" in static_file("app.js") or b"chatTransport" in static_file("app.js")
