"""``python -m keel_client.jobs run myservice.jobs:worker``: run a service's worker.

The worker object is imported from ``module:attribute`` (the current directory is on the
import path, as for uvicorn); Keel's address and token come from ``KEEL_URL`` and
``KEEL_TOKEN`` (or ``KEEL_CLIENT_ID``/``KEEL_CLIENT_SECRET``) unless the worker was given a
client. SIGTERM or SIGINT stops it gracefully (a second one at once); the exit code is 0
after a graceful stop.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from keel_client.jobs._worker import Worker


def load_worker(reference: str) -> Worker:
    """The :class:`Worker` named by ``module:attribute``."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"expected module:attribute (myservice.jobs:worker), not {reference!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    worker = module
    for part in attribute.split("."):
        worker = getattr(worker, part)
    if not isinstance(worker, Worker):
        raise SystemExit(f"{reference} is a {type(worker).__name__}, not a keel_client.jobs.Worker")
    return worker


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``, unless the process has handlers already. httpx logs every
    request at INFO, a line per fetch and ack written out between Keel's answer and the
    job's start: its lines are left to ``DEBUG`` (the worker logs its own failures)."""
    if logging.getLogger().handlers:
        return
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keel_client.jobs")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a worker until SIGTERM or SIGINT")
    run.add_argument("worker", help="module:attribute of a keel_client.jobs.Worker")
    run.add_argument("--queue", action="append", dest="queues", help="overrides the queues")
    run.add_argument("--concurrency", type=int, help="overrides the worker's concurrency")
    run.add_argument("--log-level", default="INFO")
    arguments = parser.parse_args(argv)
    configure_logging(arguments.log_level)
    worker = load_worker(arguments.worker)
    if arguments.queues:
        worker.queues = list(arguments.queues)
    if arguments.concurrency is not None:
        if arguments.concurrency < 1:
            parser.error("--concurrency is at least 1")
        worker.concurrency = arguments.concurrency
    asyncio.run(worker.run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
