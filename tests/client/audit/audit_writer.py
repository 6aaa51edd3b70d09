"""A client process for the crash tests: records events ``first..last-1`` through an AuditClient.

    python audit_writer.py BASE_URL SPOOL_DIR ACTION FIRST LAST MODE

The API key comes from ``KEEL_AUDIT_TEST_API_KEY`` (never the command line). Every event
carries ``data.n``; each recorded one is reported on stdout as ``recorded <n> <id>``.

MODE ``hold``: record ``FIRST..`` up to the half, flush, print ``flushed``, wait for a line on
stdin, record the rest, print ``recorded-all`` and wait to be killed.
MODE ``finish``: print ``started <replayed>``, record everything, print ``recorded-all``, then
flush (up to 45 s), print ``flushed <ok>`` and close; exit 0 only when everything arrived.
"""

from __future__ import annotations

import asyncio
import os
import sys

from keel_client.audit import AuditClient

PACE_EVERY = 100  # yield to the sender now and then, as a real application does
FINISH_FLUSH_TIMEOUT = 45.0


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def record(client: AuditClient, action: str, numbers: range) -> None:
    for n in numbers:
        event_id = client.record(action, data={"n": n})
        say(f"recorded {n} {event_id}")
        if n % PACE_EVERY == PACE_EVERY - 1:
            await asyncio.sleep(0)


async def main(base_url: str, spool_dir: str, action: str, first: int, last: int, mode: str) -> int:
    client = AuditClient(
        base_url,
        auth=os.environ["KEEL_AUDIT_TEST_API_KEY"],
        spool_dir=spool_dir,
        batch_size=500,
        max_batch_delay=0.05,
        backoff_base=0.05,
        backoff_max=0.5,
    )
    await client.start()
    say(f"started {client.stats().replayed}")
    if mode == "hold":
        half = (first + last) // 2
        await record(client, action, range(first, half))
        say(f"flushed {await client.flush(timeout=30.0)}")
        await asyncio.to_thread(sys.stdin.readline)
        await record(client, action, range(half, last))
        say("recorded-all")
        await asyncio.sleep(3600)  # the test kills this process
        return 1
    await record(client, action, range(first, last))
    say("recorded-all")
    flushed = await client.flush(timeout=FINISH_FLUSH_TIMEOUT)
    say(f"flushed {flushed}")
    await client.aclose(timeout=1.0)
    return 0 if flushed else 1


if __name__ == "__main__":
    url, spool, action_name, first_n, last_n, run_mode = sys.argv[1:7]
    sys.exit(asyncio.run(main(url, spool, action_name, int(first_n), int(last_n), run_mode)))
