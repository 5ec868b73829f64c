"""The README's SDK examples run, in order, against a live gateway: it never lies."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def sdk_section(text: str) -> str:
    """The README's "The Python SDK" section, up to the next top-level section."""
    start = text.index("## The Python SDK")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_examples_run(gateway, admin_credentials, capsys):
    blocks = python_blocks(sdk_section(README.read_text()))
    assert len(blocks) >= 6
    client_id, secret = admin_credentials
    namespace: dict = {"BASE": gateway, "CLIENT_ID": client_id, "CLIENT_SECRET": secret}
    for n, block in enumerate(blocks):
        try:
            exec(compile(block, f"{README.name}[python block {n + 1}]", "exec"), namespace)
        except Exception as exc:  # pragma: no cover - shows which example broke
            raise AssertionError(f"README python block {n + 1} failed: {exc!r}\n{block}") from exc
    out = capsys.readouterr().out
    assert "412" in out and "deleted" in out and "Osei" in out
    assert "['Patient.birthDate']" in out
