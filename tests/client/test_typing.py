"""The SDK is typed: ``py.typed`` ships, and ``mypy --strict fhirgw/client`` is clean."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import fhirgw.client

PKG = Path(fhirgw.client.__file__).parent


def test_py_typed_marker_ships():
    assert (PKG / "py.typed").exists()


@pytest.mark.slow
def test_mypy_strict_is_clean():
    """About 1 minute with a cold mypy cache (fhir.resources is large), seconds after."""
    pytest.importorskip("mypy", reason="mypy is not installed (pip install mypy)")
    cmd = [sys.executable, "-m", "mypy", "--strict", str(PKG)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            cwd=PKG.parent.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_importing_fhirgw_stays_light():
    code = ("import sys, fhirgw; assert 'httpx' not in sys.modules and 'fhirgw.client' not in "
            "sys.modules; assert fhirgw.Client.__name__ == 'Client'; "
            "assert fhirgw.AsyncClient.__name__ == 'AsyncClient'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
