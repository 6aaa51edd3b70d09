"""What the services' CLI commands share (:mod:`keel.core.commands`): datetimes printed as
the API writes them."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import TypeAdapter

from keel.core.commands import format_datetime, print_json

#: The API's JSON for a datetime: what FastAPI's response models write.
API_DATETIME = TypeAdapter(datetime)


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (datetime(2026, 12, 6, 3, 33, 50, 686426, tzinfo=UTC), "2026-12-06T03:33:50.686426Z"),
        (datetime(2026, 12, 6, 3, 33, 50, tzinfo=UTC), "2026-12-06T03:33:50Z"),
    ],
)
def test_a_datetime_prints_as_the_api_writes_it(
    moment: datetime, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert format_datetime(moment) == text
    assert API_DATETIME.dump_json(moment).decode() == f'"{text}"'

    print_json({"updated_at": moment, "count": 1})
    assert json.loads(capsys.readouterr().out) == {"updated_at": text, "count": 1}
