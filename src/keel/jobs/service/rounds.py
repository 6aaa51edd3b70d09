"""A worker's round in one call to the database: the acks of its finished jobs completed and
its next jobs claimed, on one open queue (:func:`fetch_at_once`). One statement on PostgreSQL,
one hand-over to the connection's thread on SQLite, where the whole transaction runs. What
the round leaves (acks it cannot complete, a paused or limited queue's claim) the caller
settles with :func:`~keel.jobs.service.claims.complete_many` and
:func:`~keel.jobs.service.claims.claim`, in a unit of work."""

from __future__ import annotations

import hmac
import json
import secrets
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Integer, bindparam, text

from keel.core.bulk import Processor, bind_processors, result_processors
from keel.core.db import Database, UTCDateTime, utcnow
from keel.core.sqlite import OneHopConnection
from keel.jobs.models import CLAIMABLE, Job
from keel.jobs.service.claims import (
    PG_NEW_LEASE,
    Ack,
    AckedJob,
    Claim,
    check_lease_seconds,
    claim_of,
)

if TYPE_CHECKING:
    from sqlalchemy import Table

_jobs = cast("Table", Job.__table__)


#: :func:`fetch_at_once`'s statement on PostgreSQL. Five parts of one ``WITH``: the acks (a
#: JSON array of ``{"id", "token", "result"}``), the update completing those whose job is
#: running on the fetch's queue under that token (compared as SHA-256 digests, so the time
#: the equality takes says nothing of the token), the queue's closing configuration if any
#: (paused or limited: such a queue is claimed under its row's lock, in a unit of work), the
#: due jobs (none when the queue is closed) and the claim of them. One row a completed job
#: (``acked``), a claimed one (``claimed``), and one ``closed`` row when the queue is.
_PG_FETCH = (
    text(
        f"""
WITH acks AS (
    SELECT * FROM json_to_recordset(CAST(:acks AS json)) AS a(id varchar, token varchar,
                                                              result json)
), acked AS (
    UPDATE jobs SET state = 'completed', result = acks.result, finished_at = :now,
                    lease_token = NULL, lease_expires_at = NULL
    FROM acks
    WHERE jobs.tenant_id = :tenant_id AND jobs.queue = :queue AND jobs.id = acks.id
      AND jobs.state = 'running'
      AND sha256(convert_to(jobs.lease_token, 'UTF8')) = sha256(convert_to(acks.token, 'UTF8'))
    RETURNING jobs.id, jobs.attempted_at
), closed AS (
    SELECT 1 FROM job_queues
    WHERE tenant_id = :tenant_id AND name = :queue
      AND (paused OR concurrency_limit IS NOT NULL OR rate_limit_per_second IS NOT NULL)
), due AS (
    SELECT id FROM jobs
    WHERE tenant_id = :tenant_id AND queue = :queue AND {CLAIMABLE.text} AND run_at <= :now
      AND NOT EXISTS (SELECT 1 FROM closed)
    ORDER BY priority, run_at, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs SET state = 'running', attempt = jobs.attempt + 1, lease_expires_at = :expires,
                    worker_id = :worker_id, attempted_at = :now, lease_token = {PG_NEW_LEASE}
    FROM due WHERE jobs.id = due.id
    RETURNING jobs.id, jobs.task, jobs.args, jobs.attempt, jobs.max_attempts,
              jobs.timeout_seconds, jobs.progress, jobs.priority, jobs.run_at, jobs.lease_token
)
SELECT 'claimed' AS kind, id, task, args, attempt, max_attempts, timeout_seconds, progress,
       priority, run_at, lease_token, NULL::timestamptz AS attempted_at
FROM claimed
UNION ALL
SELECT 'acked', id, NULL, NULL::json, NULL::int, NULL::int, NULL::int, NULL::json, NULL::int,
       NULL::timestamptz, NULL, attempted_at
FROM acked
UNION ALL
SELECT 'closed', NULL, NULL, NULL::json, NULL::int, NULL::int, NULL::int, NULL::json,
       NULL::int, NULL::timestamptz, NULL, NULL::timestamptz
FROM closed
"""  # noqa: S608 - what is interpolated is this module's constant SQL, never a value
    )
    .bindparams(
        bindparam("now", type_=UTCDateTime()),
        bindparam("expires", type_=UTCDateTime()),
        bindparam("limit", type_=Integer()),
    )
    .columns(run_at=UTCDateTime(), attempted_at=UTCDateTime())
)


@dataclass(frozen=True)
class Fetched:
    """What :func:`fetch_at_once` did: the acks it completed, those it left (the caller
    settles them with :func:`complete_many`, which completes or refuses each), the jobs it
    claimed, and whether the queue is ``closed`` (paused or limited: nothing was claimed,
    and the caller claims through :func:`claim`)."""

    acked: list[AckedJob]
    left: list[Ack]
    claims: list[Claim]
    closed: bool


async def fetch_at_once(
    database: Database,
    tenant_id: str,
    queue: str,
    acks: Sequence[Ack],
    *,
    worker_id: str,
    limit: int,
    lease_seconds: float = 30.0,
) -> Fetched:
    """A worker's round on one queue in one call to the database: complete ``acks`` and
    claim up to ``limit`` jobs, as :func:`complete_many` then :func:`claim` would in a unit
    of work of five round trips (``BEGIN``, the acks' read and update, the queue's
    configuration and the claim, ``COMMIT``). On PostgreSQL that call is one statement
    outside any transaction (its own); on SQLite, one hand-over to the connection's thread
    that runs the whole transaction there, under the write lock (claims take turns).

    The caller must have checked that its principal may work ``queue``: an ack is completed
    here only when its job is running on that queue under the ack's token. Any other ack is
    left untouched for :func:`complete_many` (which refuses a stale token, an unknown job,
    another queue the principal may not work, each alone)."""
    check_lease_seconds(lease_seconds)
    wanted = {ack.job_id: ack for ack in acks}
    now = utcnow()
    expires = now + timedelta(seconds=lease_seconds)
    round_at_once = _pg_round if database.dialect == "postgresql" else _sqlite_round
    acked, claims, closed = await round_at_once(
        database, _Round(tenant_id, queue, wanted, worker_id, max(limit, 0), now, expires)
    )
    done = {job.job_id for job in acked}
    return Fetched(
        acked, [ack for job_id, ack in wanted.items() if job_id not in done], claims, closed
    )


@dataclass(frozen=True)
class _Round:
    """What :func:`fetch_at_once` asks of each database's round."""

    tenant_id: str
    queue: str
    wanted: dict[str, Ack]
    worker_id: str
    limit: int
    now: datetime
    expires: datetime


_RoundDone = tuple[list[AckedJob], list[Claim], bool]


async def _pg_round(database: Database, asked: _Round) -> _RoundDone:
    """:func:`fetch_at_once` on PostgreSQL: :data:`_PG_FETCH`."""
    parameters = {
        "acks": json.dumps(
            [{"id": ack.job_id, "token": ack.lease_token, "result": ack.result} for ack in
             asked.wanted.values()]
        ),
        "tenant_id": asked.tenant_id,
        "queue": asked.queue,
        "now": asked.now,
        "expires": asked.expires,
        "worker_id": asked.worker_id,
        "limit": asked.limit,
    }  # fmt: skip
    async with database.engine.connect() as connection:
        alone = await connection.execution_options(isolation_level="AUTOCOMMIT")
        rows = (await alone.execute(_PG_FETCH, parameters)).all()
    acked = [
        AckedJob(row.id, asked.queue, row.attempted_at, asked.now)
        for row in rows
        if row.kind == "acked"
    ]
    claimed = sorted(
        (row for row in rows if row.kind == "claimed"),
        key=lambda row: (row.priority, row.run_at, row.id),
    )
    claims = [claim_of(row, asked.queue, asked.expires) for row in claimed]
    return acked, claims, any(row.kind == "closed" for row in rows)


#: :func:`fetch_at_once`'s statements on SQLite (sqlite3's ``?`` style), run one after the
#: other on the connection's thread by :func:`_sqlite_round_in_thread`: the acks' jobs
#: running on the fetch's queue (their tokens are compared there, in constant time), the
#: update completing those whose token is current, the queue's closing configuration if any
#: (paused or limited: such a queue is claimed in a unit of work, as on PostgreSQL), the due
#: jobs in claim order and the claim of them. The tenant is in every one.
_SQLITE_RUNNING_ACKED = (
    "SELECT id, lease_token, attempted_at FROM jobs"
    " WHERE tenant_id = ? AND queue = ? AND state = 'running' AND id IN ({marks})"
)
_SQLITE_COMPLETE = (
    "UPDATE jobs SET state = 'completed', result = ?, finished_at = ?, lease_token = NULL,"
    " lease_expires_at = NULL WHERE tenant_id = ? AND id = ?"
)
_SQLITE_CLOSED = (
    "SELECT 1 FROM job_queues WHERE tenant_id = ? AND name = ?"
    " AND (paused OR concurrency_limit IS NOT NULL OR rate_limit_per_second IS NOT NULL)"
)
_SQLITE_DUE = f"""
SELECT id, task, args, attempt, max_attempts, timeout_seconds, progress FROM jobs
WHERE tenant_id = ? AND queue = ? AND {CLAIMABLE.text} AND run_at <= ?
ORDER BY priority, run_at, id LIMIT ?
"""  # noqa: S608 - what is interpolated is a constant of this package, never a value
_SQLITE_CLAIM_ONE = (
    "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_expires_at = ?,"
    " worker_id = ?, attempted_at = ?, lease_token = ? WHERE tenant_id = ? AND id = ?"
)


def _sqlite_round_in_thread(
    connection: sqlite3.Connection,
    tenant_id: str,
    queue: str,
    acks: list[tuple[str, str, Any]],
    now: Any,
    expires: Any,
    worker_id: str,
    limit: int,
) -> tuple[list[tuple[str, Any]], list[tuple[Any, ...]], bool]:
    """:func:`fetch_at_once`'s transaction on SQLite, on the connection's thread (under the
    write lock, which :meth:`~keel.core.sqlite.OneHopConnection.run_in_transaction` holds):
    ``acks`` are ``(job id, token, result)``, the values (``now``, ``expires``, the results)
    bound as SQLAlchemy binds them. Returns the acked ``(id, attempted_at)``, the claimed
    rows with their new token last, and whether the queue is closed, values as read."""
    acked: list[tuple[str, Any]] = []
    if acks:
        tokens = {job_id: (token, result) for job_id, token, result in acks}
        read = _SQLITE_RUNNING_ACKED.format(marks=", ".join("?" * len(tokens)))
        completions = []
        for job_id, current, attempted_at in connection.execute(
            read, (tenant_id, queue, *tokens)
        ).fetchall():
            token, result = tokens[job_id]
            if current is not None and hmac.compare_digest(current.encode(), token.encode()):
                completions.append((result, now, tenant_id, job_id))
                acked.append((job_id, attempted_at))
        if completions:
            connection.executemany(_SQLITE_COMPLETE, completions)
    if connection.execute(_SQLITE_CLOSED, (tenant_id, queue)).fetchone() is not None:
        return acked, [], True
    if limit < 1:
        return acked, [], False
    due = connection.execute(_SQLITE_DUE, (tenant_id, queue, now, limit)).fetchall()
    claimed = [(*row, secrets.token_urlsafe(24)) for row in due]
    if claimed:
        connection.executemany(
            _SQLITE_CLAIM_ONE,
            [(expires, worker_id, now, row[-1], tenant_id, row[0]) for row in claimed],
        )
    return acked, claimed, False


def _or_as_is(process: Processor) -> Callable[[Any], Any]:
    return process if process is not None else _as_is


def _as_is(value: Any) -> Any:
    return value


async def _sqlite_round(database: Database, asked: _Round) -> _RoundDone:
    """:func:`fetch_at_once` on SQLite: :func:`_sqlite_round_in_thread` in one hand-over to
    the connection's thread. Through SQLAlchemy, :func:`complete_many` then :func:`claim`
    made eight hand-overs there and back (``BEGIN IMMEDIATE``, six statements, ``COMMIT``),
    each a thread wake-up and a GIL hand-over: most of a busy fetch's time on the server."""
    dialect = database.engine.dialect
    bind_result, bind_time = map(
        _or_as_is, bind_processors(_jobs, ("result", "finished_at"), dialect)
    )
    read_time, read_args, read_progress = map(
        _or_as_is, result_processors(_jobs, ("attempted_at", "args", "progress"), dialect)
    )
    queue, now, expires = asked.queue, asked.now, asked.expires
    acks = [(ack.job_id, ack.lease_token, bind_result(ack.result)) for ack in asked.wanted.values()]
    async with database.engine.connect() as connection:
        driver = (await connection.get_raw_connection()).driver_connection
        assert isinstance(driver, OneHopConnection)
        acked_rows, claimed, closed = await driver.run_in_transaction(
            _sqlite_round_in_thread,
            asked.tenant_id,
            queue,
            acks,
            bind_time(now),
            bind_time(expires),
            asked.worker_id,
            asked.limit,
        )
    acked = [
        AckedJob(job_id, queue, read_time(attempted_at), now) for job_id, attempted_at in acked_rows
    ]
    claims = [
        Claim(
            job_id,
            queue,
            task,
            read_args(args),
            attempt + 1,
            max_attempts,
            timeout_seconds,
            token,
            expires,
            read_progress(progress),
        )
        for job_id, task, args, attempt, max_attempts, timeout_seconds, progress, token in claimed
    ]
    return acked, claims, closed
