"""The local blob store: one file per blob under a root directory (the embedded default,
``<data_dir>/storage``).

A write streams into a temporary file beside its target (``.<name>.<random>.tmp``, in the
same directory so the final rename never crosses a file system), fsyncs it, renames it over
the target with :func:`os.replace` and fsyncs the directory: a reader sees the old blob or
the whole new one, never a part, and a crash leaves at most a temporary file. File I/O runs
in worker threads (:func:`asyncio.to_thread`), so the event loop never waits on the disk;
small incoming chunks are gathered up to :data:`CHUNK_BYTES` before each hop, which bounds
both the memory a write holds and the number of hops.

On Linux the kernel is asked to start writing each :data:`WRITEBACK_BYTES` to disk as soon
as they are written (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait): the
disk works while the rest of the body arrives, and the fsync before the rename only waits
for the tail. Without it the whole blob sat in the page cache until that fsync, which then
took most of a second per 512 MiB on its own. The fsync stays the only durability point.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import os
import stat
import sys
import tempfile
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterator,
)
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, TypeVar

from keel.storage.backends.base import (
    CHUNK_BYTES,
    LIST_PAGE,
    BackendUnavailable,
    BlobNotFound,
    ListedBlob,
    check_range,
    locator_segments,
    prefix_segments,
)

_T = TypeVar("_T")

_TEMP_SUFFIX = ".tmp"

#: Bytes written between two requests to the kernel to start writing them back to disk.
WRITEBACK_BYTES = 8 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of the range's dirty pages

#: What an ``open``/``stat``/``unlink`` of a missing blob raises: ``a/b`` when ``a`` is a
#: blob is as missing as ``a/b`` when ``a`` is not there at all.
_MISSING = (FileNotFoundError, NotADirectoryError, IsADirectoryError)


class LocalBlobStore:
    """Blobs as files under ``root`` (created on the first write)::

    store = LocalBlobStore(data_dir / "storage")
    await store.write("t1/b1/o1", chunks)
    async with contextlib.aclosing(store.read("t1/b1/o1", 0, 100)) as body:
        async for chunk in body: ...
    """

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, locator: str) -> Path:
        """The file that holds the blob at ``locator`` (:class:`ValueError` if unsafe)."""
        return self.root.joinpath(*locator_segments(locator))

    async def write(self, locator: str, chunks: AsyncIterable[bytes]) -> int:
        target = self.path(locator)
        with _unavailable("write"):
            file, temp = await _in_thread(_open_temp, target)
        written = 0
        written_back = 0  # where the last writeback request ended
        committing = False
        try:
            pending: list[bytes] = []
            pending_bytes = 0
            async for chunk in chunks:
                if not chunk:
                    continue
                pending.append(chunk)
                pending_bytes += len(chunk)
                written += len(chunk)
                if pending_bytes >= CHUNK_BYTES:
                    with _unavailable("write"):
                        written_back = await _in_thread(_write, file, pending, written_back)
                    pending, pending_bytes = [], 0
            with _unavailable("write"):
                await _in_thread(_flush_and_close, file, pending)
                committing = True
                await _in_thread(_commit, temp, target)
        except BaseException:
            # The iterator failed, the disk refused, or the task was cancelled: remove the
            # partial write. ``_in_thread`` waited for its thread, so nothing lands after this.
            _discard(file, temp)
            if committing:
                # The failure came during the rename itself (a cancellation, or the
                # directory's fsync): the caller is told the write failed, so the new blob
                # must not stay behind as an orphan.
                with contextlib.suppress(OSError):
                    target.unlink()
            raise
        return written

    async def read(
        self, locator: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        check_range(start, end)
        path = self.path(locator)
        try:
            file = await _in_thread(_open_regular_file, path)
        except _MISSING:
            raise BlobNotFound(locator) from None
        except OSError as error:
            raise _unavailable_error("read", error) from error
        try:
            with _unavailable("read"):
                if start:
                    await _in_thread(file.seek, start)
                remaining = None if end is None else end - start
                while remaining is None or remaining > 0:
                    want = CHUNK_BYTES if remaining is None else min(CHUNK_BYTES, remaining)
                    chunk = await _in_thread(file.read, want)
                    if not chunk:
                        break
                    if remaining is not None:
                        remaining -= len(chunk)
                    yield chunk
        finally:
            file.close()

    async def size(self, locator: str) -> int | None:
        path = self.path(locator)
        with _unavailable("stat"):
            return await _in_thread(_regular_file_size, path)

    async def delete(self, locator: str) -> None:
        path = self.path(locator)
        with _unavailable("delete"):
            await _in_thread(_unlink_blob, path)

    async def delete_prefix(self, prefix: str) -> int:
        top = self.root.joinpath(*prefix_segments(prefix))
        with _unavailable("delete"):
            return await _in_thread(_remove_tree, top)

    async def list_blobs(self, prefix: str) -> AsyncGenerator[ListedBlob, None]:
        # An unfinished write's temporary file is listed too: its time moves while the
        # write goes on, and one a crash left behind is a blob nobody will ever name.
        top = self.root.joinpath(*prefix_segments(prefix))
        walk = _walk_files(self.root, top)
        try:
            while True:
                with _unavailable("list"):
                    page = await _in_thread(_next_page, walk)
                if not page:
                    return
                for blob in page:
                    yield blob
        finally:
            walk.close()

    async def aclose(self) -> None:
        return None


async def _in_thread(function: Callable[..., _T], *args: object) -> _T:
    """``function(*args)`` in a worker thread. A cancellation waits for the thread to finish
    before it propagates (a thread cannot be stopped), so the caller's clean-up never races
    a write still under way."""
    future = asyncio.ensure_future(asyncio.to_thread(function, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await future
        raise


@contextlib.contextmanager
def _unavailable(action: str) -> Iterator[None]:
    """An :class:`OSError` of the disk as :class:`BackendUnavailable` (the cause kept)."""
    try:
        yield
    except OSError as error:
        raise _unavailable_error(action, error) from error


def _unavailable_error(action: str, error: OSError) -> BackendUnavailable:
    return BackendUnavailable(f"local storage: {action} failed: {error.strerror or error}")


def _open_temp(target: Path) -> tuple[BinaryIO, Path]:
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=_TEMP_SUFFIX
    )
    return os.fdopen(descriptor, "wb"), Path(name)


def _write(file: BinaryIO, pending: list[bytes], written_back: int) -> int:
    """Write ``pending``; once :data:`WRITEBACK_BYTES` have been written since
    ``written_back``, ask the kernel to start writing them to disk. Where the requests now
    end."""
    file.writelines(pending)
    start_writeback = _sync_file_range()
    if start_writeback is None:
        return written_back
    file.flush()
    end = file.tell()
    if end - written_back < WRITEBACK_BYTES:
        return written_back
    # Only a hint: the fsync before the rename is what makes the blob durable, and reports
    # any error of the disk.
    start_writeback(file.fileno(), written_back, end - written_back, _SYNC_FILE_RANGE_WRITE)
    return end


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's ``sync_file_range(2)`` (not in :mod:`os`), or ``None`` elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (AttributeError, OSError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _flush_and_close(file: BinaryIO, pending: list[bytes]) -> None:
    file.writelines(pending)
    file.flush()
    os.fsync(file.fileno())
    file.close()


def _commit(temp: Path, target: Path) -> None:
    os.replace(temp, target)
    # The rename is durable only once the directory's entry is on disk.
    directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _discard(file: BinaryIO, temp: Path) -> None:
    with contextlib.suppress(OSError):
        file.close()
    with contextlib.suppress(OSError):
        temp.unlink()


def _open_regular_file(path: Path) -> BinaryIO:
    file = path.open("rb")
    if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
        file.close()
        raise IsADirectoryError(f"not a regular file: {path.name}")
    return file


def _regular_file_size(path: Path) -> int | None:
    try:
        status = path.stat()
    except _MISSING:
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


def _unlink_blob(path: Path) -> None:
    with contextlib.suppress(*_MISSING):
        path.unlink()


def _is_temp_file(name: str) -> bool:
    return name.startswith(".") and name.endswith(_TEMP_SUFFIX)


def _remove_tree(top: Path) -> int:
    """Remove every file under ``top`` and the directories left empty; the number of blobs
    removed (an unfinished write's temporary file is removed but not counted: that write
    then fails)."""
    if not top.is_dir() or top.is_symlink():
        return 0
    removed = 0
    for directory, subdirectories, files in os.walk(top, topdown=False):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
                removed += not _is_temp_file(name)
        for name in subdirectories:
            # A symbolic link to a directory is listed here: unlink the link, never follow it.
            path = os.path.join(directory, name)
            with contextlib.suppress(OSError):
                if os.path.islink(path):
                    os.unlink(path)
                else:
                    os.rmdir(path)  # fails when a concurrent write has just put a file there
    with contextlib.suppress(OSError):
        top.rmdir()
    return removed


def _walk_files(root: Path, top: Path) -> Generator[ListedBlob, None, None]:
    """Every regular file under ``top``, depth first, each directory read an entry at a time
    (:func:`os.scandir` never loads one whole: memory is one open directory per level);
    symbolic links are not followed."""
    if not top.is_dir() or top.is_symlink():
        return
    with contextlib.ExitStack() as open_directories:
        levels = [open_directories.enter_context(os.scandir(top))]
        while levels:
            entry = next(levels[-1], None)
            if entry is None:
                levels.pop().close()
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    levels.append(open_directories.enter_context(os.scandir(entry.path)))
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                status = entry.stat(follow_symlinks=False)
            except _MISSING:
                continue  # removed since its directory was read
            yield ListedBlob(
                locator=Path(entry.path).relative_to(root).as_posix(),
                size=status.st_size,
                modified_at=datetime.fromtimestamp(status.st_mtime, UTC),
            )


def _next_page(walk: Iterator[ListedBlob]) -> list[ListedBlob]:
    return list(itertools.islice(walk, LIST_PAGE))
