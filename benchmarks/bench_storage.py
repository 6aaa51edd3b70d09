"""Storage figures (issue 21): a large object streamed through Keel against the same store
used directly.

For each backend, a real ``keel serve`` (embedded SQLite, as shipped: one worker, log level
info) with two buckets, ``{"scan": false, "encrypted": true}`` and
``{"scan": false, "encrypted": false}``:

- ``storage.<backend>.upload_<encrypted|plain>_mb_s``: one object (1 GiB by default) read
  from a file on disk and sent as a streamed ``PUT`` (httpx, 1 MiB chunks, with its
  ``Content-Length``), timed until Keel's ``201`` (after its store write, fsync and commit).
  The ETag Keel answers must be the file's SHA-256.
- ``storage.<backend>.download_<encrypted|plain>_mb_s``: the same object streamed back into
  a file (``GET``, httpx's chunks written as they arrive); the file's SHA-256 must be the
  upload's. The same download made with Keel's SDK (``StorageClient.download`` to a path,
  which checks the SHA-256 itself) is ``sdk_client_*`` in ``extra``.
- ``storage.<backend>.rss_growth_mb``: the largest growth of the Keel process's RSS over its
  value just before a transfer, sampled every 100 ms during each of the four transfers.

Peers, measured in the same run on the same file:

- local: ``cp`` of the file into a directory on the same filesystem, then an fsync of the copy
  (Keel's local store fsyncs each blob before its rename; ``cp`` alone is in ``extra``), and
  ``cp`` of that copy back out (the download).
- s3: aiobotocore (the library Keel's S3 store uses) straight to the same moto server, a
  multipart upload of Keel's part size (8 MiB, one part at a time, as Keel sends them) and a
  streamed ``GetObject`` into a file.

moto runs as its own process (``python -m moto.server``) so that it shares no interpreter
with the client or with Keel. Every process here shares the machine's CPUs: see
``docs/benchmarks.md`` for how to read the S3 ratios.

``KEEL_BENCH_STORAGE_MB`` (or ``--mb``) sets the object's size in MiB (1024 by default),
``KEEL_BENCH_STORAGE_ROUNDS`` (``--rounds``) the rounds (1: the median is reported);
``--backend local|s3`` runs one backend only. The local transfers are also made with
``curl`` as Keel's client (``curl_client_*`` in ``extra``: Keel's speed when the client is
not Python), over S3 too with ``KEEL_BENCH_STORAGE_CURL=all``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks._figures import Figure, emit, machine
from benchmarks._servers import (
    HOST,
    Server,
    ServerFailed,
    clean_env,
    free_port,
    wait_for_port,
)
from benchmarks.bench_auth import BENCH_MASTER_KEY, _api, _running_keel

MB = 1024 * 1024
CHUNK = 1024 * 1024
TARGET_RATIO = 0.5
TARGET_RSS_GROWTH_MB = 100.0
SAMPLE_SECONDS = 0.1
#: moto accepts any credentials; these only have to be the same on both sides.
S3_ACCESS_KEY = "keel-bench-access-key"
S3_SECRET_KEY = "keel-bench-secret-key"  # noqa: S105 - moto's, not a real credential
S3_REGION = "us-east-1"
S3_BUCKET = "keel-bench-storage"
BUCKETS = {"encrypted": "bench-encrypted", "plain": "bench-plain"}


@dataclass
class Transfer:
    seconds: float
    size: int
    rss_before: int = 0
    rss_peak: int = 0
    server_cpu_s: float = 0.0
    store_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mb_s(self) -> float:
        return self.size / MB / self.seconds

    @property
    def rss_growth_mb(self) -> float:
        return max(0, self.rss_peak - self.rss_before) / MB


# ---------------------------------------------------------------------------------------------
# The object, and measuring a process
# ---------------------------------------------------------------------------------------------


def _make_source(path: Path, size: int) -> str:
    """A file of ``size`` random bytes (incompressible, sniffed as octet-stream); its SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        left = size
        while left:
            block = os.urandom(min(CHUNK, left))
            digest.update(block)
            file.write(block)
            left -= len(block)
        file.flush()
        os.fsync(file.fileno())
    return digest.hexdigest()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(4 * CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _rss(pid: int) -> int:
    """RSS of ``pid`` and its children (``keel serve`` runs one process; the sum is safe)."""
    import psutil

    process = psutil.Process(pid)
    total = 0
    for each in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += each.memory_info().rss
    return total


def _own_cpu() -> float:
    """CPU seconds of this process and of its waited-for children (``cp``, ``curl``)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _cpu(pid: int | None) -> float:
    if pid is None:
        return 0.0
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


@contextlib.contextmanager
def _measured(keel_pid: int, store_pid: int | None, size: int) -> Iterator[Transfer]:
    """Time the block, sample Keel's RSS every 100 ms on a thread meanwhile, and count the
    CPU seconds Keel, the S3 server (when there is one) and this process (the client, and
    the sampler: a few ms) spent."""
    transfer = Transfer(seconds=0.0, size=size)
    transfer.rss_before = transfer.rss_peak = _rss(keel_pid)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(SAMPLE_SECONDS):
            transfer.rss_peak = max(transfer.rss_peak, _rss(keel_pid))

    sampler = threading.Thread(target=sample, daemon=True)
    keel_cpu, store_cpu = _cpu(keel_pid), _cpu(store_pid)
    client_cpu = _own_cpu()
    sampler.start()
    started = time.perf_counter()
    try:
        yield transfer
    finally:
        transfer.seconds = time.perf_counter() - started
        stop.set()
        sampler.join()
        transfer.rss_peak = max(transfer.rss_peak, _rss(keel_pid))
        transfer.server_cpu_s = round(_cpu(keel_pid) - keel_cpu, 2)
        transfer.store_cpu_s = round(_cpu(store_pid) - store_cpu, 2)
        transfer.client_cpu_s = round(_own_cpu() - client_cpu, 2)


# ---------------------------------------------------------------------------------------------
# Through Keel
# ---------------------------------------------------------------------------------------------


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as file:
        while block := file.read(CHUNK):
            yield block


def _keel_upload(
    base: str, admin_key: str, bucket: str, key: str, source: Path, size: int, sha256: str,
    keel_pid: int, store_pid: int | None,
) -> Transfer:  # fmt: skip
    headers = {
        "Authorization": f"Bearer {admin_key}",
        "Content-Type": "application/octet-stream",
        "Content-Length": str(size),
    }
    with (
        httpx.Client(base_url=base, timeout=600.0) as http,
        _measured(keel_pid, store_pid, size) as transfer,
    ):
        answer = http.put(
            f"/storage/v1/buckets/{bucket}/objects/{key}",
            content=_file_chunks(source),
            headers=headers,
        )
    if answer.status_code != 201:
        raise ServerFailed(f"upload answered {answer.status_code}: {answer.text[:2000]}")
    info = answer.json()
    if info["etag"].strip('"') != sha256 or info["size"] != size or info["state"] != "clean":
        raise ServerFailed(f"the stored object is not the file: {info}")
    return transfer


def _keel_download(
    base: str, admin_key: str, bucket: str, key: str, target: Path, size: int, sha256: str,
    keel_pid: int, store_pid: int | None,
) -> Transfer:  # fmt: skip
    headers = {"Authorization": f"Bearer {admin_key}"}
    with (
        httpx.Client(base_url=base, timeout=600.0) as http,
        _measured(keel_pid, store_pid, size) as transfer,
        http.stream("GET", f"/storage/v1/buckets/{bucket}/objects/{key}", headers=headers) as r,
        open(target, "wb") as file,
    ):
        if r.status_code != 200:
            raise ServerFailed(f"download answered {r.status_code}: {r.read()[:2000]!r}")
        # The chunks as httpx reads them (64 KiB): asking it for 1 MiB chunks made it join
        # each into a fresh 1 MiB buffer, page faults included, which doubled the client's
        # CPU a GiB (3.3-3.7 s) and made the client, not Keel, the measure of a download.
        for block in r.iter_raw():
            file.write(block)
    _check_file(target, size, sha256)
    return transfer


def _sdk_download(
    base: str, admin_key: str, bucket: str, key: str, target: Path, size: int, sha256: str,
    keel_pid: int, store_pid: int | None,
) -> Transfer:  # fmt: skip
    """The same download as a user of Keel's SDK makes it: ``StorageClient.download`` to a
    path (which checks the bytes against the object's SHA-256 and renames a partial file)."""
    from keel_client.storage import StorageClient

    async def download() -> None:
        async with StorageClient(base, auth=admin_key) as storage:
            await storage.download(bucket, key, target)

    with _measured(keel_pid, store_pid, size) as transfer:
        asyncio.run(download())
    _check_file(target, size, sha256)
    return transfer


def _check_file(path: Path, size: int, sha256: str) -> None:
    """A wrong benchmark is worse than none: the bytes that came back must be the file's."""
    if path.stat().st_size != size or _sha256_of(path) != sha256:
        raise ServerFailed(f"{path} is not the uploaded file (size {path.stat().st_size})")


def _keel_delete(base: str, admin_key: str, bucket: str, key: str) -> None:
    answer = httpx.delete(
        f"{base}/storage/v1/buckets/{bucket}/objects/{key}",
        headers={"Authorization": f"Bearer {admin_key}"}, timeout=120.0,
    )  # fmt: skip
    if answer.status_code != 204:
        raise ServerFailed(f"delete answered {answer.status_code}: {answer.text[:2000]}")


def _create_buckets(port: int, admin_key: str) -> None:
    for mode, name in BUCKETS.items():
        _api(port, "PUT", f"/storage/v1/buckets/{name}", admin_key,
             {"scan": False, "encrypted": mode == "encrypted"})  # fmt: skip


def _warm_up(base: str, admin_key: str, root: Path) -> None:
    """One small object up and down each bucket: the first use's imports and connections
    (Tink, the store's client) are not what the RSS figure is about."""
    source = root / "warm-up.bin"
    sha256 = _make_source(source, 2 * MB)
    for bucket in BUCKETS.values():
        headers = {"Authorization": f"Bearer {admin_key}"}
        with httpx.Client(base_url=base, timeout=60.0, headers=headers) as http:
            http.put(f"/storage/v1/buckets/{bucket}/objects/warm-up", content=source.read_bytes())
            got = http.get(f"/storage/v1/buckets/{bucket}/objects/warm-up")
            if hashlib.sha256(got.content).hexdigest() != sha256:
                raise ServerFailed(f"warm-up in {bucket}: {got.status_code} {got.text[:500]}")
        _keel_delete(base, admin_key, bucket, "warm-up")
    source.unlink()


def _through_keel(
    server: Server, admin_key: str, source: Path, size: int, sha256: str, work: Path,
    store_pid: int | None, results: dict[str, list[Transfer]], round_: int,
    sdk_results: dict[str, list[Transfer]],
) -> None:  # fmt: skip
    """Upload then download the file through each bucket (with httpx, then with Keel's SDK),
    then delete the object."""
    base = server.url
    target = work / "downloaded.bin"
    for mode, bucket in BUCKETS.items():
        key = f"round-{round_}/object.bin"
        up = _keel_upload(base, admin_key, bucket, key, source, size, sha256, server.pid, store_pid)
        results[f"upload_{mode}"].append(up)
        down = _keel_download(
            base, admin_key, bucket, key, target, size, sha256, server.pid, store_pid
        )
        results[f"download_{mode}"].append(down)
        target.unlink()
        sdk = _sdk_download(
            base, admin_key, bucket, key, target, size, sha256, server.pid, store_pid
        )
        sdk_results[f"download_{mode}"].append(sdk)
        target.unlink()
        _keel_delete(base, admin_key, bucket, key)


# ---------------------------------------------------------------------------------------------
# Peers: cp, and aiobotocore straight to moto
# ---------------------------------------------------------------------------------------------


def _cp_round(source: Path, size: int, sha256: str, work: Path) -> dict[str, Transfer]:
    store = work / "cp-store"
    store.mkdir(exist_ok=True)
    stored, back = store / "object.bin", work / "cp-out.bin"
    cpu_started = _own_cpu()
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(stored)], check=True)
    copied = time.perf_counter()
    fd = os.open(stored, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    synced = time.perf_counter()
    cpu_synced = _own_cpu()
    subprocess.run(["cp", str(stored), str(back)], check=True)
    read_back = time.perf_counter()
    cpu_read_back = _own_cpu()
    _check_file(back, size, sha256)
    stored.unlink()
    back.unlink()
    upload = Transfer(synced - started, size, extra={"cp_only_s": round(copied - started, 3)})
    upload.client_cpu_s = round(cpu_synced - cpu_started, 2)
    download = Transfer(read_back - synced, size)
    download.client_cpu_s = round(cpu_read_back - cpu_synced, 2)
    return {"upload": upload, "download": download}


def _curl_round(
    base: str, admin_key: str, source: Path, size: int, sha256: str, work: Path, keel_pid: int,
    results: dict[str, list[Transfer]], round_: int,
) -> None:  # fmt: skip
    """The same transfers with curl as the client (C, no Python on the client's side): what
    Keel itself can do when the client is not the limit."""
    import json

    headers = work / "curl-headers"
    # The credential goes in a file only this user reads, not on a command line.
    headers.touch(mode=0o600)
    headers.write_text(
        f"Authorization: Bearer {admin_key}\nContent-Type: application/octet-stream\nExpect:\n"
    )
    answer, target = work / "curl-answer.json", work / "curl-out.bin"
    for mode, bucket in BUCKETS.items():
        url = f"{base}/storage/v1/buckets/{bucket}/objects/round-{round_}/curl.bin"
        curl = ["curl", "--silent", "--show-error", "--fail", "-H", f"@{headers}"]
        with _measured(keel_pid, None, size) as up:
            subprocess.run([*curl, "-T", str(source), "-o", str(answer), url], check=True)
        info = json.loads(answer.read_text())
        if info["etag"].strip('"') != sha256 or info["size"] != size:
            raise ServerFailed(f"the stored object is not the file: {info}")
        with _measured(keel_pid, None, size) as down:
            subprocess.run([*curl, "-o", str(target), url], check=True)
        _check_file(target, size, sha256)
        target.unlink()
        results[f"curl_upload_{mode}"].append(up)
        results[f"curl_download_{mode}"].append(down)
        _keel_delete(base, admin_key, bucket, f"round-{round_}/curl.bin")


def _s3_client_context(endpoint: str) -> Any:
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    config = AioConfig(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"mode": "standard", "total_max_attempts": 2},
        read_timeout=600,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return get_session().create_client(
        "s3", region_name=S3_REGION, endpoint_url=endpoint, aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY, config=config,
    )  # fmt: skip


async def _s3_round(
    endpoint: str, source: Path, size: int, sha256: str, work: Path, moto_pid: int,
    keel_pid: int,
) -> dict[str, Transfer]:  # fmt: skip
    """aiobotocore to moto: Keel's part size, one part at a time (as Keel's store sends
    them), then a streamed ``GetObject`` into a file. The RSS sampled is Keel's (idle here):
    only so that the transfer is timed the same way."""
    from keel.storage.backends.s3 import PART_BYTES

    key = "peer/object.bin"
    target = work / "s3-out.bin"
    # The file is read and written in this one task, blocking (from and to the page cache):
    # a thread hop per part would only add to the peer's cost.
    async with _s3_client_context(endpoint) as client:
        with _measured(keel_pid, moto_pid, size) as up:
            created = await client.create_multipart_upload(Bucket=S3_BUCKET, Key=key)
            upload_id = created["UploadId"]
            parts: list[dict[str, Any]] = []
            with open(source, "rb") as file:  # noqa: ASYNC230
                while body := file.read(PART_BYTES):
                    answer = await client.upload_part(
                        Bucket=S3_BUCKET, Key=key, UploadId=upload_id,
                        PartNumber=len(parts) + 1, Body=body,
                    )  # fmt: skip
                    parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"]})
            await client.complete_multipart_upload(
                Bucket=S3_BUCKET, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        with _measured(keel_pid, moto_pid, size) as down, open(target, "wb") as file:  # noqa: ASYNC230
            response = await client.get_object(Bucket=S3_BUCKET, Key=key)
            async with response["Body"] as body:
                while block := await body.read(CHUNK):
                    file.write(block)
        await client.delete_object(Bucket=S3_BUCKET, Key=key)
    _check_file(target, size, sha256)
    target.unlink()
    return {"upload": up, "download": down}


async def _create_s3_bucket(endpoint: str) -> None:
    async with _s3_client_context(endpoint) as client:
        await client.create_bucket(Bucket=S3_BUCKET)


@contextlib.contextmanager
def _moto(work: Path) -> Iterator[Server]:
    """moto's S3 server as its own process, with the bucket both Keel and the peer use."""
    port = free_port()
    command = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)]
    env = {**clean_env(), "PYTHONWARNINGS": "ignore"}
    # moto logs each request (werkzeug) to the log file, never to a pipe nobody reads.
    with Server(command, port=port, cwd=work / "moto", env=env) as server:
        wait_for_port(port, timeout=60.0)
        asyncio.run(_create_s3_bucket(server.url))
        yield server


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _median(transfers: list[Transfer]) -> Transfer:
    ordered = sorted(transfers, key=lambda transfer: transfer.mb_s)
    return ordered[len(ordered) // 2]


def _backend(
    backend: str, root: Path, source: Path, size: int, sha256: str, rounds: int
) -> list[Figure]:
    work = root / backend
    work.mkdir()
    env_common = {
        "KEEL_MASTER_KEY": BENCH_MASTER_KEY,
        "KEEL_STORAGE__MAX_OBJECT_BYTES": str(size + 64 * MB),
    }
    keel_runs: dict[str, list[Transfer]] = {
        f"{direction}_{mode}": [] for direction in ("upload", "download") for mode in BUCKETS
    }
    peer_runs: dict[str, list[Transfer]] = {"upload": [], "download": []}
    #: curl as Keel's client too: on the local backend (over S3 moto's upload is the limit,
    #: so only when ``KEEL_BENCH_STORAGE_CURL=all``).
    with_curl = shutil.which("curl") is not None and (
        backend == "local" or os.environ.get("KEEL_BENCH_STORAGE_CURL") == "all"
    )
    curl_runs: dict[str, list[Transfer]] = {f"curl_{name}": [] for name in keel_runs}
    sdk_runs: dict[str, list[Transfer]] = {f"download_{mode}": [] for mode in BUCKETS}
    with contextlib.ExitStack() as stack:
        moto: Server | None = None
        if backend == "s3":
            moto = stack.enter_context(_moto(work))
            env_common.update(
                {
                    "KEEL_STORAGE__BACKEND": "s3",
                    "KEEL_STORAGE__S3__ENDPOINT_URL": moto.url,
                    "KEEL_STORAGE__S3__BUCKET": S3_BUCKET,
                    "KEEL_STORAGE__S3__REGION": S3_REGION,
                    "KEEL_STORAGE__S3__ACCESS_KEY_ID": S3_ACCESS_KEY,
                    "KEEL_STORAGE__S3__SECRET_ACCESS_KEY": S3_SECRET_KEY,
                    "KEEL_STORAGE__S3__PREFIX": "keel",
                }
            )
        server, admin_key = stack.enter_context(
            _running_keel(work / "keel", clean_env(**env_common))
        )
        _create_buckets(server.port, admin_key)
        _warm_up(server.url, admin_key, work)
        rss_idle = _rss(server.pid)
        store_pid = moto.pid if moto is not None else None
        for round_ in range(rounds):
            # Peer and Keel alternate first, so neither always meets a warmer page cache.
            order = ["peer", "keel"] if round_ % 2 == 0 else ["keel", "peer"]
            for who in order:
                if who == "keel":
                    _through_keel(
                        server, admin_key, source, size, sha256, work, store_pid, keel_runs,
                        round_, sdk_runs,
                    )  # fmt: skip
                    if with_curl:
                        _curl_round(
                            server.url, admin_key, source, size, sha256, work, server.pid,
                            curl_runs, round_,
                        )  # fmt: skip
                elif moto is not None:
                    s3_round = asyncio.run(
                        _s3_round(moto.url, source, size, sha256, work, moto.pid, server.pid)
                    )
                    for direction, transfer in s3_round.items():
                        peer_runs[direction].append(transfer)
                else:
                    for direction, transfer in _cp_round(source, size, sha256, work).items():
                        peer_runs[direction].append(transfer)

    if backend == "local":
        peer_name = {"upload": "cp + fsync", "download": "cp"}
    else:
        peer_name = {
            "upload": "aiobotocore to moto (multipart, 8 MiB parts)",
            "download": "aiobotocore GetObject from moto",
        }
    common = {
        "backend": backend,
        "object_mb": size / MB,
        "rounds": rounds,
        "server": "keel serve, 1 worker, SQLite, log level info (as shipped)",
        "client": "httpx.Client, streamed: uploads in 1 MiB chunks, downloads as read",
        "machine": machine(),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }
    figures = []
    for name, transfers in keel_runs.items():
        direction, mode = name.split("_")
        keel = _median(transfers)
        peer = _median(peer_runs[direction])
        ratio = keel.mb_s / peer.mb_s
        extra: dict[str, Any] = {
            **common,
            "encrypted": mode == "encrypted",
            "runs_mb_s": [round(t.mb_s, 1) for t in transfers],
            "seconds": round(keel.seconds, 3),
            "peer_mb_s": round(peer.mb_s, 1),
            "peer_runs_mb_s": [round(t.mb_s, 1) for t in peer_runs[direction]],
            "keel_cpu_s": keel.server_cpu_s,
            "client_cpu_s": keel.client_cpu_s,
            "peer_client_cpu_s": peer.client_cpu_s,
            "rss_growth_mb": round(keel.rss_growth_mb, 1),
            "target_ratio": TARGET_RATIO,
            "met": ratio >= TARGET_RATIO,
        }
        if backend == "s3":
            extra["moto_cpu_s"] = keel.store_cpu_s
            extra["peer_moto_cpu_s"] = peer.store_cpu_s
        if name in sdk_runs:
            sdk = _median(sdk_runs[name])
            extra["sdk_client_mb_s"] = round(sdk.mb_s, 1)
            extra["sdk_client_runs_mb_s"] = [round(t.mb_s, 1) for t in sdk_runs[name]]
            extra["sdk_client_ratio"] = round(sdk.mb_s / peer.mb_s, 3)
            extra["sdk_client_cpu_s"] = sdk.client_cpu_s
            extra["sdk_client_keel_cpu_s"] = sdk.server_cpu_s
        if curl_runs[f"curl_{name}"]:
            curl = _median(curl_runs[f"curl_{name}"])
            extra["curl_client_mb_s"] = round(curl.mb_s, 1)
            extra["curl_client_runs_mb_s"] = [round(t.mb_s, 1) for t in curl_runs[f"curl_{name}"]]
            extra["curl_client_ratio"] = round(curl.mb_s / peer.mb_s, 3)
            extra["curl_client_keel_cpu_s"] = curl.server_cpu_s
            extra["curl_client_rss_growth_mb"] = round(curl.rss_growth_mb, 1)
        if "cp_only_s" in peer.extra:
            cp_only = size / MB / peer.extra["cp_only_s"]
            extra["cp_only_mb_s"] = round(cp_only, 1)
            extra["ratio_to_cp_only"] = round(keel.mb_s / cp_only, 3)
        figures.append(
            emit(
                Figure(
                    f"storage.{backend}.{name}_mb_s", round(keel.mb_s, 1), "MB/s",
                    peer_name[direction], round(ratio, 3), extra,
                )
            )
        )  # fmt: skip
    every = [
        transfer
        for runs in (keel_runs, curl_runs, sdk_runs)
        for transfers in runs.values()
        for transfer in transfers
    ]
    growth = max(transfer.rss_growth_mb for transfer in every)
    figures.append(
        emit(
            Figure(
                f"storage.{backend}.rss_growth_mb", round(growth, 1), "MB", None, None,
                {
                    **common,
                    "per_transfer_mb": {
                        name: [round(t.rss_growth_mb, 1) for t in transfers]
                        for name, transfers in {
                            **keel_runs, **curl_runs,
                            **{f"sdk_{name}": runs for name, runs in sdk_runs.items()},
                        }.items()
                        if transfers
                    },
                    "rss_idle_mb": round(rss_idle / MB, 1),
                    "rss_peak_mb": round(max(t.rss_peak for t in every) / MB, 1),
                    "sampled_every_s": SAMPLE_SECONDS,
                    "target_mb": TARGET_RSS_GROWTH_MB,
                    "met": growth < TARGET_RSS_GROWTH_MB,
                },
            )
        )
    )  # fmt: skip
    return figures


def main(
    size_mb: int | None = None,
    rounds: int | None = None,
    backends: tuple[str, ...] = ("local", "s3"),
) -> list[Figure]:
    size = (size_mb or int(os.environ.get("KEEL_BENCH_STORAGE_MB", "1024"))) * MB
    rounds = rounds or int(os.environ.get("KEEL_BENCH_STORAGE_ROUNDS", "1"))
    root = Path(tempfile.mkdtemp(prefix="keel-bench-storage-"))
    figures: list[Figure] = []
    try:
        source = root / "source.bin"
        sha256 = _make_source(source, size)
        for backend in backends:
            figures += _backend(backend, root, source, size, sha256, rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_storage")
    parser.add_argument("--mb", type=int, default=None, help="object size in MiB (1024)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--backend", choices=["local", "s3"], action="append")
    arguments = parser.parse_args()
    main(arguments.mb, arguments.rounds, tuple(arguments.backend or ("local", "s3")))
