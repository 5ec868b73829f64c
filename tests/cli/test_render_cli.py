import json

from typer.testing import CliRunner

from fhirgw.cli import app

runner = CliRunner()


def test_render_a_document_file(tmp_path):
    doc = {"resourceType": "Bundle", "type": "document", "entry": [
        {"fullUrl": "urn:uuid:c", "resource": {
            "resourceType": "Composition", "status": "final", "title": "Discharge summary",
            "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5"}]},
            "date": "2026-04-10", "author": [{"display": "IOP"}],
            "subject": {"reference": "urn:uuid:p"},
            "section": [{"title": "Discharge instructions",
                         "text": {"status": "generated",
                                  "div": '<div xmlns="http://www.w3.org/1999/xhtml">Call 988 in a crisis<script>x</script></div>'}}]}},
        {"fullUrl": "urn:uuid:p", "resource": {"resourceType": "Patient", "name": [{"family": "Reyes", "given": ["Jo"]}]}}]}
    f = tmp_path / "doc.json"
    f.write_text(json.dumps(doc))
    out = tmp_path / "doc.html"
    r = runner.invoke(app, ["render", str(f), "--out", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    assert "Discharge instructions" in page and "Call 988 in a crisis" in page
    assert "<script>" not in page


def test_render_refuses_what_is_not_a_document(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"resourceType": "Bundle", "type": "collection", "entry": []}))
    r = runner.invoke(app, ["render", str(f)])
    assert r.exit_code == 1 and "Not a FHIR document" in r.output
