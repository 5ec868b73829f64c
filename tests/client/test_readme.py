"""The SDK README's Python examples run, in order, against a live gateway: it never lies."""
from __future__ import annotations

import re
from pathlib import Path

import fhirgw

README = Path(fhirgw.__file__).parent / "client" / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_examples_run(gateway, capsys):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 6
    namespace: dict = {"BASE": gateway}
    for n, block in enumerate(blocks):
        try:
            exec(compile(block, f"{README.name}[python block {n + 1}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - shows which example broke
            raise AssertionError(f"README python block {n + 1} failed: {exc!r}\n{block}") from exc
    out = capsys.readouterr().out
    assert "412" in out and "deleted" in out and "Osei" in out
    assert "['Patient.birthDate']" in out
