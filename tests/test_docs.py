r"""The documentation runs as written: every Python block of README.md and docs/*.md,
printing what the ``text`` block right after it shows, and the main-job example."""

import contextlib
import io
import os
import re
import subprocess
import sys

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(path: Path) -> list[tuple[str, str | None]]:
    r"""Each Python block, and the text block right after it (what it prints), if any."""

    found = re.findall(r"```python\n(.*?)```(\s*```text\n(.*?)```)?", path.read_text(), re.S)
    return [(code, shown if after else None) for code, after, shown in found]


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if python_blocks(d)], ids=lambda d: d.name)
def test_document_code_runs(document: Path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks write their files here
    namespace: dict = {"__name__": "__doc__"}
    for i, (block, shown) in enumerate(python_blocks(document)):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(block, f"{document.name}[block {i}]", "exec"), namespace)
        if shown is not None:
            assert printed.getvalue().strip() == shown.strip(), f"{document.name}[block {i}] prints otherwise"


def test_main_job(tmp_path):
    env = {**os.environ, "XLA_FLAGS": ""}
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "save_restore.py"), "--dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "restored model.safetensors: ties intact, values equal" in result.stdout
    assert "restored model.msgpack: ties intact, values equal" in result.stdout
    assert "tag 'l1': .l1 <- .l2" in result.stdout
