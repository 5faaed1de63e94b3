"""Property tests: the bulk readers agree with each other; the journal survives any torn write."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cwsctl.core.bulk.journal import Journal
from cwsctl.core.bulk.readers import read_rows
from cwsctl.core.bulk.rows import REQUIRED_FIELDS, PatientValidationError, prepare_patient

COLUMNS = list(REQUIRED_FIELDS)

# Printable text including the characters that break naive CSV and JSON writers.
cell_text = st.text(
    alphabet=st.characters(
        blacklist_categories=("Cc", "Cs"), blacklist_characters="\u2028\u2029\x85"
    ),
    min_size=1,
    max_size=20,
).filter(lambda s: s.strip() == s and s.strip())
dates = st.dates().map(lambda d: d.isoformat())
patients = st.fixed_dictionaries(
    {
        "external_id": cell_text,
        "facility": st.integers(0, 99999),
        "agency": st.integers(0, 2**31 - 1),
        "billing_agency": st.integers(0, 2**31 - 1),
        "fname": cell_text,
        "lname": cell_text | st.just('Name, "Jr"'),
        "dob": dates,
        "sex": st.sampled_from(["M", "F", "U", "x"]),
        "booking_no": cell_text,
        "booking_date": dates,
    }
)


def as_csv(rows) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def outcome(fields):
    try:
        return ("ok", prepare_patient(fields))
    except PatientValidationError as exc:
        return ("invalid", exc.status, exc.field)


@settings(max_examples=60, deadline=None)
@given(st.lists(patients, max_size=8))
def test_csv_json_ndjson_readers_agree(rows):
    encoded = {
        "csv": as_csv(rows),
        "json": json.dumps(rows, ensure_ascii=False).encode(),
        "ndjson": "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode(),
    }
    results = {}
    for fmt, data in encoded.items():
        read = list(read_rows(io.BytesIO(data), fmt))
        assert [r.error for r in read] == [None] * len(rows)
        results[fmt] = [outcome(r.fields) for r in read]
    assert results["csv"] == results["json"] == results["ndjson"]


def _journal_with_history(path: Path) -> dict[str, str]:
    """Write a realistic history; return each key's final outcome."""
    final = {}
    with Journal(path) as journal:
        for i in range(6):
            key = journal.key_for(f"E{i}", "10000")
            journal.record(key, i + 1, "sending")
            if i % 3 != 2:  # every third row dies mid-request: no outcome line
                outcome_name = "created" if i % 3 == 0 else "unknown"
                journal.record(
                    key,
                    i + 1,
                    outcome_name,
                    status=201 if outcome_name == "created" else None,
                    id=i,
                )
                final[key] = outcome_name
            else:
                final[key] = "sending"
    return final


@settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.floats(min_value=0, max_value=1))
def test_journal_survives_truncation_at_any_byte(tmp_path, cut):
    path = tmp_path / f"j-{cut}.journal"
    _journal_with_history(path)
    data = path.read_bytes()
    position = int(len(data) * cut)
    path.write_bytes(data[:position])
    complete = data[:position][: data[:position].rfind(b"\n") + 1]
    torn = position != len(complete)
    with Journal(path) as journal:
        assert journal.torn_lines == (1 if torn else 0)
        assert path.read_bytes() == (complete if complete else path.read_bytes())
        entries = [json.loads(line) for line in complete.splitlines()[1:]]
        latest = {}
        for entry in entries:
            latest[entry["key"]] = entry["outcome"]
        for key, last in latest.items():
            assert journal.is_done(key) == (last == "created")
            assert journal.in_doubt(key) == (last in ("sending", "unknown"))
        journal.record("k" * 32, 99, "created", id=1)  # appending after a torn line stays clean
    with Journal(path) as reopened:
        assert reopened.is_done("k" * 32)
