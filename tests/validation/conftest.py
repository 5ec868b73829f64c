"""Fixtures for profile validation tests.

The IOP profiles live in the repository (profiles/); the external packages (IPS, HL7
terminology) are fetched by scripts/fetch_profile_packages.sh into .cache/fhir/. Without
them the external-package tests skip, except under CI=true, where that is a failure.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from fhirgw.validation import ProfileValidator

ROOT = Path(__file__).resolve().parents[2]
PROFILES = ROOT / "profiles"
EXAMPLES = PROFILES / "examples"
CACHE = ROOT / ".cache" / "fhir"
IPS = CACHE / "hl7.fhir.uv.ips-2.0.0" / "package"
TERMINOLOGY = CACHE / "hl7.terminology.r4-7.0.1" / "package"


def need_packages() -> None:
    missing = [p for p in (IPS, TERMINOLOGY) if not (p / "package.json").is_file()]
    if missing:
        msg = (f"external FHIR packages missing ({', '.join(str(m) for m in missing)}); "
               "run scripts/fetch_profile_packages.sh")
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def load_json(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def errors(issues) -> list:
    return [i for i in issues if i.severity == "error"]


@pytest.fixture(scope="session")
def iop() -> ProfileValidator:
    """The IOP profiles, loaded the way the server loads them (default location)."""
    return ProfileValidator()


@pytest.fixture(scope="session")
def ips() -> ProfileValidator:
    need_packages()
    return ProfileValidator(IPS, TERMINOLOGY)


@pytest.fixture
def example():
    """A fresh copy of an IOP example: example('Task-iop-referral-task')."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            cache[name] = load_json(EXAMPLES / f"{name}.json")
        return copy.deepcopy(cache[name])

    return get
