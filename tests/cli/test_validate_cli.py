import json
import pathlib

from typer.testing import CliRunner

from fhirgw.cli import app

ROOT = pathlib.Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_validate_examples_folder_passes():
    r = runner.invoke(app, ["validate", str(ROOT / "profiles" / "examples")])
    assert r.exit_code == 0, r.output
    assert "0 error(s)" in r.output


def test_validate_reports_errors_and_exits_1(tmp_path):
    bad = {"resourceType": "Patient",
           "meta": {"profile": ["http://fhirgw.dev/fhir/StructureDefinition/iop-client"]}}
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(bad))
    r = runner.invoke(app, ["validate", str(f)], env={"COLUMNS": "200"})
    assert r.exit_code == 1
    assert "Patient.birthDate" in r.output


def test_validate_against_a_named_profile(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"resourceType": "Patient", "name": [{"family": "A"}]}))
    assert runner.invoke(app, ["validate", str(f)]).exit_code == 0
    r = runner.invoke(app, ["validate", str(f), "--profile",
                            "http://fhirgw.dev/fhir/StructureDefinition/iop-client"])
    assert r.exit_code == 1


def test_validate_missing_path():
    assert runner.invoke(app, ["validate", "/no/such/file.json"]).exit_code == 2
