"""Every example of ``README.md`` and ``docs/`` runs, in order, against a Keel that the README's
quick start (``make serve``) started: a page that a new user cannot follow to the end fails here.

How blocks are found and what they see: ``tests/docs/examples.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.docs.examples import (
    REPOSITORY,
    RUNNERS,
    Block,
    DirectiveError,
    blocks_of,
    documented_pages,
    localised,
    parse_directive,
)
from tests.support.keel_process import KeelServer, free_port

VENV = Path(sys.executable).parent.parent
READY_TIMEOUT = 60.0
BLOCK_TIMEOUT = 120.0
ADMIN_KEY = re.compile(r"admin API key \(shown once, store it now\): (\S+)")

BASH_PRELUDE = """\
set -euo pipefail
# A documented curl that gets an HTTP error fails its example, as a reader would notice.
curl() { command curl --fail-with-body "$@"; }
if [ -f "$DOC_STATE" ]; then source "$DOC_STATE"; fi
trap 'export -p > "$DOC_STATE"' EXIT
"""


@dataclass
class DocumentedKeel:
    """The page's Keel, started as the README says, and where the page's examples run."""

    base_url: str
    admin_key: str
    workdir: Path
    log: Path

    def environment(self) -> dict[str, str]:
        env = {name: value for name, value in os.environ.items() if not name.startswith("KEEL_")}
        env.update(reader_settings(self.workdir, self.base_url))
        env["KEEL_URL"] = self.base_url
        env["KEEL_TOKEN"] = self.admin_key
        env["PATH"] = os.pathsep.join([str(VENV / "bin"), env.get("PATH", "")])
        env["XDG_CACHE_HOME"] = str(self.workdir / ".cache")
        env["DOC_STATE"] = str(self.workdir / ".doc-state.sh")
        env.pop("VIRTUAL_ENV", None)
        return env


def reader_settings(workdir: Path, base_url: str) -> dict[str, str]:
    """What makes ``make serve`` (run from the repository) and the examples (run in
    ``workdir``) use the page's own data directory and port."""
    return {
        "KEEL_DATA_DIR": str(workdir / ".keel"),
        "KEEL_PORT": base_url.rsplit(":", 1)[1],
    }


@contextlib.contextmanager
def keel_started_by_make_serve(workdir: Path) -> Iterator[DocumentedKeel]:
    base_url = f"http://127.0.0.1:{free_port()}"
    log = workdir / "make-serve.log"
    env = {name: value for name, value in os.environ.items() if not name.startswith("KEEL_")}
    env.update(reader_settings(workdir, base_url))
    env["VENV"] = str(VENV)
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["make", "--no-print-directory", "-C", str(REPOSITORY), "serve"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # make is the process watched: it ends if keel migrate, init or serve fails.
        KeelServer(process, base_url, log).wait_ready(READY_TIMEOUT)
        found = ADMIN_KEY.search(log.read_text())
        assert found, f"make serve printed no admin API key:\n{log.read_text()}"
        (workdir / ".venv").symlink_to(VENV)
        yield DocumentedKeel(base_url, found[1], workdir, log)
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """End ``process`` and everything it started (make's children are in its session)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def command_for(block: Block, keel: DocumentedKeel) -> list[str]:
    """The process that runs ``block``: bash with the prelude, or Python inside bash so that it
    sees what earlier blocks exported."""
    code = localised(block.code, keel.base_url.removeprefix("http://"))
    name = f"example-{block.line}"
    if block.runner == "bash":
        script = keel.workdir / f".{name}.sh"
        script.write_text(BASH_PRELUDE + code)
        return ["bash", str(script)]
    script = keel.workdir / f".{name}.py"
    script.write_text(code)
    wrapper = 'if [ -f "$DOC_STATE" ]; then source "$DOC_STATE"; fi; exec python "$0"'
    return ["bash", "-c", wrapper, str(script)]


def run_block(
    block: Block, keel: DocumentedKeel, background: list[subprocess.Popen[bytes]]
) -> None:
    if "file" in block.options:
        (keel.workdir / block.options["file"]).write_text(block.code)
        return
    if block.runner is None:
        return
    command = command_for(block, keel)
    if block.is_background:
        with (keel.workdir / f".example-{block.line}.log").open("wb") as output:
            background.append(
                subprocess.Popen(
                    command,
                    cwd=keel.workdir,
                    env=keel.environment(),
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return
    try:
        result = subprocess.run(
            command,
            cwd=keel.workdir,
            env=keel.environment(),
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{block.where}: still running after {BLOCK_TIMEOUT} s") from exc
    if result.returncode != block.expected_exit:
        raise AssertionError(
            f"{block.where}: exit code {result.returncode}, the page expects "
            f"{block.expected_exit}\n--- example ---\n{block.code}--- stdout ---\n"
            f"{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}\n"
            f"--- make serve ---\n{log_tail(keel.log)}"
        )


def pages_with_examples() -> list[Path]:
    return [page for page in documented_pages() if blocks_of(page)]


@pytest.mark.parametrize(
    "page", pages_with_examples(), ids=lambda page: str(page.relative_to(REPOSITORY))
)
def test_every_example_of_the_page_runs(page: Path, tmp_path: Path) -> None:
    blocks = blocks_of(page)
    background: list[subprocess.Popen[bytes]] = []
    with keel_started_by_make_serve(tmp_path) as keel:
        try:
            for block in blocks:
                run_block(block, keel, background)
        finally:
            for process in background:
                stop_group(process)


def test_the_readme_quick_start_is_the_make_serve_these_tests_run() -> None:
    readme = blocks_of(REPOSITORY / "README.md")
    quick_start = next(block for block in readme if "make serve" in block.code)
    assert quick_start.code.lstrip().startswith("make serve")


def test_every_runnable_language_is_run_or_skipped_with_a_reason() -> None:
    for page in documented_pages():
        for block in blocks_of(page):
            if block.language in RUNNERS and block.runner is None:
                assert block.options.get("file") or block.options["skip"].strip(), block.where


def test_a_skip_without_a_reason_or_an_unknown_option_is_refused() -> None:
    with pytest.raises(DirectiveError, match="must say why"):
        parse_directive('skip=""', "page.md:1")
    with pytest.raises(DirectiveError, match="unknown doc-test option"):
        parse_directive("exits=2", "page.md:1")


def test_blocks_are_found_with_their_directives(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- doc-test: exit=2 -->\n```sh\nkeel nope\n```\n\n```json\n{}\n```\n"
    )
    first, second = blocks_of(page)
    assert (first.line, first.language, first.code, first.expected_exit) == (
        4,
        "sh",
        "keel nope\n",
        2,
    )
    assert first.runner == "bash"
    assert (second.language, second.runner) == ("json", None)
