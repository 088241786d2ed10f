from __future__ import annotations

import io
import json
import logging

import pytest

from amagi_plugin.logsetup import PHI_FILTER, REDACTED, PhiFilter, setup_logging


@pytest.fixture
def stream():
    buf = io.StringIO()
    yield buf
    setup_logging("warning", "text", io.StringIO())


def test_json_lines_with_extra_fields(stream) -> None:
    setup_logging("info", "json", stream)
    logging.getLogger("amagi_plugin.test").info("job %s done", "42", extra={"sop_instance_uid": "1.2.3"})
    record = json.loads(stream.getvalue().strip())
    assert record["message"] == "job 42 done"
    assert record["level"] == "info" and record["logger"] == "amagi_plugin.test"
    assert record["sop_instance_uid"] == "1.2.3"


def test_text_format_is_human_readable(stream) -> None:
    setup_logging("info", "text", stream)
    logging.getLogger("x").warning("hello")
    assert stream.getvalue().rstrip().endswith("WARNING x: hello")
    logging.getLogger("x").debug("hidden")
    assert "hidden" not in stream.getvalue()


def test_patient_identifiers_are_redacted(stream) -> None:
    setup_logging("info", "text", stream)
    with PHI_FILTER.open_scope() as phi:
        phi.register("Doe^Jane", "PID-778899")
        logging.getLogger("x").info("received %s for %s", "PID-778899", "Doe^Jane (Jane Doe)")
    out = stream.getvalue()
    assert "778899" not in out and "Jane" not in out and "Doe" not in out
    assert out.count(REDACTED) >= 2
    assert PHI_FILTER.scrub("nothing to hide") == "nothing to hide"


def test_one_services_values_do_not_outlive_it() -> None:
    """Each service masks through its own scope: a value is masked while its scope is open
    (in every log line, whoever logs it) and forgotten once it closes, so a later service
    does not carry what an earlier one received."""
    f = PhiFilter()
    first = f.open_scope()
    first.register("Doe^Jane")
    second = f.open_scope()
    second.register("Roe^Rick")
    assert f.scrub("Doe Roe") == f"{REDACTED} {REDACTED}"
    first.close()
    assert f.scrub("Doe^Jane Roe") == f"Doe^Jane {REDACTED}"
    first.close()  # closing twice changes nothing
    second.close()
    assert f.scrub("Doe^Jane Roe^Rick") == "Doe^Jane Roe^Rick"
    with f.open_scope() as later:
        assert len(later) == 0 and f.scrub("Jane Rick") == "Jane Rick"


def test_a_scope_is_bounded() -> None:
    f = PhiFilter(capacity=4)
    with f.open_scope() as phi:
        phi.register("AAA111", "BBB222", "CCC333", "DDD444", "EEE555")
        assert len(phi) == 4
        assert f.scrub("AAA111 EEE555") == f"AAA111 {REDACTED}"


def test_a_pdf_report_adds_no_font_chatter_at_info(stream) -> None:
    """Writing report.pdf subsets its TrueType font with fontTools, which logs a hundred
    lines at info; a user's ``amagi process`` shows our lines, not those."""
    import matplotlib
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    setup_logging("info", "text", stream)
    fig = Figure()
    fig.text(0.1, 0.5, "Bleeding events: 0")
    with matplotlib.rc_context({"pdf.fonttype": 42}), PdfPages(io.BytesIO()) as pdf:
        pdf.savefig(fig)
    assert "fontTools" not in stream.getvalue()
    logging.getLogger("amagi_plugin.test").info("ours")
    assert "ours" in stream.getvalue()
