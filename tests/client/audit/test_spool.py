"""The audit spool and the sending policy, without a server: the journal's durability rules
(order, acknowledgement, torn lines, size limit, the directory lock), event building, and the
pure retry decisions."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from keel_client.audit import (
    AuditSpool,
    EventActor,
    EventTarget,
    FailureStep,
    Outcome,
    SpoolError,
    SpoolFullError,
    SpoolLockedError,
    build_event,
    encode_event,
    failure_step,
    new_event_id,
    retry_delay,
)
from keel_client.audit._spool import ACK_FILE

CHILD_TIMEOUT = 20.0


def line(number: int) -> bytes:
    return encode_event({"id": f"event-{number}", "action": "app.thing.done", "n": number})


def numbers(lines: list[bytes]) -> list[int]:
    return [json.loads(item)["n"] for item in lines]


def nested_lists(depth: int) -> list[object]:
    value: list[object] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.jsonl"))


class TestJournal:
    def test_appended_lines_are_replayed_in_order_after_reopening(self, tmp_path: Path) -> None:
        with AuditSpool(tmp_path) as spool:
            for number in range(5):
                spool.append(line(number))
            assert spool.pending_count == 5

        with AuditSpool(tmp_path) as spool:
            assert spool.recovered == 5
            assert numbers(spool.peek(100)) == [0, 1, 2, 3, 4]

    def test_acknowledged_lines_are_never_replayed(self, tmp_path: Path) -> None:
        with AuditSpool(tmp_path) as spool:
            for number in range(6):
                spool.append(line(number))
            spool.acknowledge(4)
            assert numbers(spool.peek(100)) == [4, 5]

        with AuditSpool(tmp_path) as spool:
            assert numbers(spool.peek(100)) == [4, 5]
            spool.append(line(6))
            spool.acknowledge(1)

        with AuditSpool(tmp_path) as spool:
            assert numbers(spool.peek(100)) == [5, 6]
            assert (spool.recovered, spool.pending_count) == (2, 2)

    def test_replay_keeps_order_across_many_segments_and_restarts(self, tmp_path: Path) -> None:
        expected: list[int] = []
        number = 0
        for _restart in range(4):
            with AuditSpool(tmp_path, segment_bytes=200) as spool:
                assert numbers(spool.peek(10_000)) == expected
                for _ in range(7):
                    spool.append(line(number))
                    expected.append(number)
                    number += 1
                spool.acknowledge(3)
                expected = expected[3:]
        with AuditSpool(tmp_path, segment_bytes=200) as spool:
            assert numbers(spool.peek(10_000)) == expected == list(range(12, 28))

    def test_fully_acknowledged_segments_are_deleted(self, tmp_path: Path) -> None:
        with AuditSpool(tmp_path, segment_bytes=200) as spool:
            for number in range(20):
                spool.append(line(number))
            assert len(segment_files(tmp_path)) >= 5
            spool.acknowledge(20)
            # Only the segment the mark points into is left.
            assert len(segment_files(tmp_path)) == 1
        with AuditSpool(tmp_path, segment_bytes=200) as spool:
            assert spool.pending_count == 0
            # The open before made a new segment; the old, fully acknowledged one is gone.
            assert len(segment_files(tmp_path)) == 1

    def test_lines_after_a_fully_acknowledged_journal_survive_restarts(
        self, tmp_path: Path
    ) -> None:
        with AuditSpool(tmp_path) as spool:
            spool.append(line(0))
            spool.acknowledge(1)
        with AuditSpool(tmp_path) as spool:
            spool.append(line(1))
        with AuditSpool(tmp_path) as spool:
            assert numbers(spool.peek(100)) == [1]
        with AuditSpool(tmp_path) as spool:
            assert numbers(spool.peek(100)) == [1]

    def test_peek_respects_count_and_byte_limits_but_always_gives_one(self, tmp_path: Path) -> None:
        with AuditSpool(tmp_path) as spool:
            for number in range(10):
                spool.append(line(number))
            size = len(line(0)) + 1
            assert numbers(spool.peek(3)) == [0, 1, 2]
            assert numbers(spool.peek(100, max_bytes=size * 4)) == [0, 1, 2, 3]
            assert numbers(spool.peek(100, max_bytes=1)) == [0]

    def test_torn_last_line_is_dropped_and_cut_from_the_file(self, tmp_path: Path) -> None:
        with AuditSpool(tmp_path) as spool:
            spool.append(line(0))
            spool.append(line(1))
        # A crash in the middle of a write: half a line, no newline.
        last = segment_files(tmp_path)[-1]
        with last.open("ab") as journal:
            journal.write(line(2)[:17])

        with AuditSpool(tmp_path) as spool:
            assert numbers(spool.peek(100)) == [0, 1]
            assert spool.torn_bytes == 17
            assert last.read_bytes().endswith(b"\n")
            spool.append(line(3))
        with AuditSpool(tmp_path) as spool:
            assert numbers(spool.peek(100)) == [0, 1, 3]
            assert spool.torn_bytes == 0

    def test_damaged_line_is_skipped_and_the_rest_replayed(self, tmp_path: Path) -> None:
        with AuditSpool(tmp_path) as spool:
            spool.append(line(0))
        segment = segment_files(tmp_path)[-1]
        with segment.open("ab") as journal:
            journal.write(b"\x00\x00garbage\n")
        with AuditSpool(tmp_path) as spool:
            spool.append(line(1))
        with AuditSpool(tmp_path) as spool:
            assert numbers(spool.peek(100)) == [0, 1]
            assert spool.damaged_lines == 1

    def test_unreadable_mark_replays_everything(self, tmp_path: Path) -> None:
        with AuditSpool(tmp_path) as spool:
            for number in range(3):
                spool.append(line(number))
            spool.acknowledge(2)
        (tmp_path / ACK_FILE).write_text("{not json")
        # Safe: Keel answers an event id it already has with the original receipt.
        with AuditSpool(tmp_path) as spool:
            assert numbers(spool.peek(100)) == [0, 1, 2]

    def test_acknowledgement_mark_is_replaced_atomically(self, tmp_path: Path) -> None:
        with AuditSpool(tmp_path) as spool:
            spool.append(line(0))
            spool.acknowledge(1)
            mark = json.loads((tmp_path / ACK_FILE).read_text())
            assert set(mark) == {"segment", "offset"}
            assert not (tmp_path / (ACK_FILE + ".tmp")).exists()

    def test_acknowledging_more_than_is_pending_is_an_error(self, tmp_path: Path) -> None:
        with AuditSpool(tmp_path) as spool:
            spool.append(line(0))
            with pytest.raises(ValueError, match="only 1"):
                spool.acknowledge(2)

    def test_closed_spool_refuses_lines_and_lines_may_not_hold_newlines(
        self, tmp_path: Path
    ) -> None:
        spool = AuditSpool(tmp_path)
        with pytest.raises(SpoolError, match="not open"):
            spool.append(line(0))
        spool.open()
        with pytest.raises(ValueError, match="newline"):
            spool.append(b'{"a":1}\n{"b":2}')
        spool.close()
        with pytest.raises(SpoolError, match="not open"):
            spool.append(line(0))

    def test_spool_files_are_private_to_the_owner(self, tmp_path: Path) -> None:
        directory = tmp_path / "spool"
        with AuditSpool(directory) as spool:
            spool.append(line(0))
            spool.acknowledge(1)
        assert directory.stat().st_mode & 0o077 == 0
        for path in directory.iterdir():
            assert path.stat().st_mode & 0o077 == 0, path


class TestSizeLimit:
    def test_append_past_the_limit_raises_and_acknowledging_makes_room(
        self, tmp_path: Path
    ) -> None:
        size = len(line(0)) + 1
        with AuditSpool(tmp_path, max_bytes=size * 3) as spool:
            for number in range(3):
                spool.append(line(number))
            with pytest.raises(SpoolFullError, match="max_spool_bytes"):
                spool.append(line(3))
            assert spool.pending_count == 3
            spool.acknowledge(1)
            spool.append(line(3))
            assert numbers(spool.peek(100)) == [1, 2, 3]

    def test_recovered_lines_count_against_the_limit(self, tmp_path: Path) -> None:
        size = len(line(0)) + 1
        with AuditSpool(tmp_path) as spool:
            for number in range(3):
                spool.append(line(number))
        with AuditSpool(tmp_path, max_bytes=size * 2) as spool:
            assert spool.pending_count == 3  # kept, never dropped
            with pytest.raises(SpoolFullError):
                spool.append(line(3))


LOCK_HOLDER = textwrap.dedent(
    """
    import sys, time
    from keel_client.audit import AuditSpool
    spool = AuditSpool(sys.argv[1])
    spool.open()
    print("locked", flush=True)
    time.sleep(60)
    """
)


class TestDirectoryLock:
    def test_second_spool_on_the_same_directory_is_refused(self, tmp_path: Path) -> None:
        with (
            AuditSpool(tmp_path),
            pytest.raises(SpoolLockedError, match=f"pid {os.getpid()}"),
        ):
            AuditSpool(tmp_path).open()
        with AuditSpool(tmp_path):  # released on close
            pass

    def test_spool_held_by_another_process_is_refused_until_that_process_dies(
        self, tmp_path: Path
    ) -> None:
        holder = subprocess.Popen(
            [sys.executable, "-c", LOCK_HOLDER, str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == "locked"
            with pytest.raises(SpoolLockedError, match=f"pid {holder.pid}"):
                AuditSpool(tmp_path).open()
            # SIGKILL: no clean-up ran, yet the kernel released the lock with the process.
            holder.send_signal(signal.SIGKILL)
            holder.wait(CHILD_TIMEOUT)
            with AuditSpool(tmp_path) as spool:
                assert spool.pending_count == 0
        finally:
            if holder.poll() is None:
                holder.kill()
                holder.wait(CHILD_TIMEOUT)

    def test_a_forked_child_cannot_write_to_its_parents_spool(self, tmp_path: Path) -> None:
        with AuditSpool(tmp_path) as spool:
            pid = os.fork()
            if pid == 0:  # the child: same descriptors, same lock
                try:
                    spool.append(line(1))
                except SpoolError as error:
                    os._exit(0 if "after a fork" in str(error) else 2)
                os._exit(1)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            spool.append(line(0))
            assert numbers(spool.peek(10)) == [0]


class TestBuildEvent:
    def test_id_and_time_are_set_when_the_event_is_built(self) -> None:
        before = datetime.now(UTC)
        event = build_event("app.session.login")
        after = datetime.now(UTC)
        assert set(event) == {"id", "time", "action"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", event["time"])
        moment = datetime.strptime(event["time"], "%Y-%m-%dT%H:%M:%S.%f%z")
        assert before <= moment <= after
        assert uuid.UUID(event["id"]).version == 7

    def test_given_fields_are_written_and_absent_ones_left_out(self) -> None:
        moment = datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
        event = build_event(
            "billing.invoice.refund",
            id="evt-1",
            time=moment,
            actor=EventActor("user", "u_1", ip="203.0.113.7"),
            target=EventTarget("invoice", "in_9"),
            outcome="denied",
            reason="over limit",
            sensitivity="confidential",
            data={"amount": 12},
        )
        assert event == {
            "id": "evt-1",
            "time": "2025-03-01T10:00:00.000000Z",
            "action": "billing.invoice.refund",
            "actor": {"type": "user", "id": "u_1", "ip": "203.0.113.7"},
            "target": {"type": "invoice", "id": "in_9"},
            "outcome": "denied",
            "reason": "over limit",
            "sensitivity": "confidential",
            "data": {"amount": 12},
        }

    def test_uuid7_ids_are_unique_and_time_ordered(self) -> None:
        first = new_event_id()
        ids = [new_event_id() for _ in range(2000)]
        assert len(set(ids)) == 2000
        assert all(len(event_id) <= 64 for event_id in ids)
        # The first 48 bits are milliseconds: a later id never sorts before an earlier one's
        # millisecond.
        assert all(event_id[:13] >= first[:13] for event_id in ids)

    @pytest.mark.parametrize(
        ("action", "fields", "error"),
        [
            ("login", {}, ValueError),
            ("App.Session.Login", {}, ValueError),
            ("app.session.login.extra", {}, ValueError),
            ("app.session-x.login", {}, ValueError),
            ("app.session.login", {"outcome": "ok"}, ValueError),
            ("app.session.login", {"sensitivity": "secret"}, ValueError),
            ("app.session.login", {"time": datetime(2025, 1, 1)}, ValueError),
            ("app.session.login", {"id": "x" * 65}, ValueError),
            ("app.session.login", {"id": ""}, ValueError),
            ("app.session.login", {"id": "has space"}, ValueError),
            ("app.session.login", {"reason": "r" * 501}, ValueError),
            ("app.session.login", {"actor": EventActor("user", ip="1" * 65)}, ValueError),
            ("app.session.login", {"target": EventTarget("t" * 61)}, ValueError),
            ("app.session.login", {"data": {"big": 2**53 + 1}}, ValueError),
            ("app.session.login", {"data": {"deep": nested_lists(33)}}, ValueError),
            ("app.session.login", {"data": ["not", "an", "object"]}, TypeError),
            ("app.session.login", {"actor": {"type": "user"}}, TypeError),
            ("app.session.login", {"reason": 42}, TypeError),
        ],
    )
    def test_an_event_keel_would_refuse_fails_when_built(
        self, action: str, fields: dict[str, object], error: type[Exception]
    ) -> None:
        with pytest.raises(error):
            build_event(action, **fields)  # type: ignore[arg-type]

    def test_encoded_event_is_one_line_even_with_newlines_in_its_data(self) -> None:
        event = build_event("app.note.add", data={"text": "two\nlines\r\u2028", "ü": "ß"})
        encoded = encode_event(event)
        assert b"\n" not in encoded
        assert json.loads(encoded) == event

    @pytest.mark.parametrize("value", [float("nan"), object()])
    def test_data_json_cannot_hold_is_refused(self, value: object) -> None:
        with pytest.raises((TypeError, ValueError)):
            encode_event(build_event("app.note.add", data={"value": value}))

    def test_outcome_enum_and_string_are_the_same(self) -> None:
        assert (
            build_event("a.b.c", outcome=Outcome.FAILURE)["outcome"]
            == build_event("a.b.c", outcome="failure")["outcome"]
        )


class TestSendingPolicy:
    @pytest.mark.parametrize("status", [None, 401, 403, 404, 408, 429, 500, 502, 503, 504, 200])
    def test_unavailable_service_or_deployment_problem_keeps_the_events(
        self, status: int | None
    ) -> None:
        assert failure_step(status, 500) is FailureStep.RETRY
        assert failure_step(status, 1) is FailureStep.RETRY

    @pytest.mark.parametrize("status", [400, 409, 413, 422])
    def test_refused_batch_is_split_and_a_refused_single_event_dropped(self, status: int) -> None:
        assert failure_step(status, 500) is FailureStep.ISOLATE
        assert failure_step(status, 2) is FailureStep.ISOLATE
        assert failure_step(status, 1) is FailureStep.REJECT

    def test_retry_delay_is_full_jitter_exponential_and_capped(self) -> None:
        assert retry_delay(1, base=0.5, cap=30.0, random=lambda: 0.999) < 0.5
        assert retry_delay(3, base=0.5, cap=30.0, random=lambda: 0.5) == pytest.approx(1.0)
        assert retry_delay(50, base=0.5, cap=30.0, random=lambda: 1.0) == 30.0
        assert retry_delay(1, base=0.5, cap=30.0, random=lambda: 0.0) == 0.0

    def test_retry_delay_honours_retry_after_up_to_the_cap(self) -> None:
        assert retry_delay(1, base=0.5, cap=30.0, retry_after=7.0, random=lambda: 0.1) == 7.0
        assert retry_delay(1, base=0.5, cap=30.0, retry_after=900.0, random=lambda: 0.1) == 30.0
