"""The storage service's invariant, over random sequences of uploads (clean, EICAR, a
forbidden type), overwrites, deletes, scans and reads, on SQLite and PostgreSQL, in a
non-versioned and a versioned bucket:

    no reader ever gets bytes of a version that is not clean, and what a reader gets is
    exactly what was uploaded.

A model of each key's versions predicts every answer; after every step each key and every
version id ever seen is read, and the bucket's usage is checked against the model."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.storage.conftest import StorageApi
from tests.support.clamd import EICAR

PDF = b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n"
KEYS = ("a", "dir/b", "dir/c d")
STEPS = 30


@dataclass
class Version:
    id: str
    key: str
    data: bytes
    state: str  # pending | clean | infected
    is_delete_marker: bool = False


@dataclass
class Model:
    versioned: bool
    #: Each key's versions, oldest first.
    keys: dict[str, list[Version]] = field(default_factory=dict)
    #: Every version id ever stored, with the version it was.
    seen: dict[str, Version] = field(default_factory=dict)

    def live(self, version_id: str) -> bool:
        return any(
            version.id == version_id for versions in self.keys.values() for version in versions
        )

    def expected_read(self, key: str) -> tuple[int, Version | None]:
        waiting = refused = False
        for version in reversed(self.keys.get(key, [])):
            if version.is_delete_marker:
                break
            if version.state == "clean":
                return 200, version
            waiting |= version.state == "pending"
            refused |= version.state == "infected"
        if waiting:
            return 409, None
        return (403, None) if refused else (404, None)

    def expected_version_read(self, version_id: str) -> int:
        version = self.seen[version_id]
        if not self.live(version_id) or version.is_delete_marker:
            return 404
        return {"clean": 200, "pending": 409, "infected": 403}[version.state]

    def scanned(self) -> None:
        """What a drained scan queue leaves: verdicts, and (non-versioned) the versions
        older than the newest clean one gone."""
        for versions in self.keys.values():
            for version in versions:
                if version.state == "pending":
                    version.state = "infected" if version.data == EICAR else "clean"
            if not self.versioned:
                clean = [i for i, version in enumerate(versions) if version.state == "clean"]
                if clean:
                    del versions[: clean[-1]]

    def usage(self) -> tuple[int, int]:
        stored = [
            version
            for versions in self.keys.values()
            for version in versions
            if not version.is_delete_marker
        ]
        return sum(len(version.data) for version in stored), len(stored)


async def read(storage: StorageApi, bucket: str, key: str, **kwargs: Any) -> httpx.Response:
    """A reader's GET, asked again after a 503 (SQLite's writers busy on a loaded machine):
    a 503 carries no bytes, so it is a wait, not an answer the invariant is about."""
    for _ in range(3):
        answer = await storage.get(bucket, key, **kwargs)
        if answer.status_code != 503:
            break
        assert answer.headers["content-type"].startswith("application/problem+json")
        await asyncio.sleep(int(answer.headers.get("retry-after", "1")))
    return answer


async def check(storage: StorageApi, bucket: str, model: Model) -> None:
    uploaded = {version.id: version.data for version in model.seen.values()}
    for key in KEYS:
        answer = await read(storage, bucket, key)
        status, version = model.expected_read(key)
        assert answer.status_code == status, (key, answer.text)
        if status == 200:
            assert version is not None
            served = answer.headers["x-keel-version-id"]
            assert served == version.id
            assert model.seen[served].state == "clean"
            assert answer.content == uploaded[served] == version.data
        else:
            assert not any(data and data in answer.content for data in uploaded.values())
    for version_id, version in model.seen.items():
        answer = await read(storage, bucket, version.key, params={"version_id": version_id})
        assert answer.status_code == model.expected_version_read(version_id), answer.text
        if answer.status_code == 200:
            assert answer.content == uploaded[version_id]
        else:
            assert not any(data and data in answer.content for data in uploaded.values())
    assert await storage.usage(bucket) == model.usage()


@pytest.mark.parametrize("versioned", [False, True], ids=["plain", "versioned"])
@pytest.mark.parametrize("seed", [1, 2])
async def test_no_reader_ever_gets_bytes_that_are_not_clean_or_not_as_uploaded(
    storage: StorageApi, versioned: bool, seed: int
) -> None:
    bucket = "random"
    await storage.bucket(
        bucket, versioning=versioned, allowed_types=["text/plain", "image/*"], encrypted=seed == 1
    )
    model = Model(versioned=versioned)
    chance = random.Random(seed * 10 + versioned)
    for _ in range(STEPS):
        key = chance.choice(KEYS)
        action = chance.choices(
            ["clean", "eicar", "forbidden", "scan", "delete", "delete_version"],
            weights=[5, 2, 1, 3, 2, 1 if versioned else 0],
        )[0]
        if action in ("clean", "eicar", "forbidden"):
            data = {
                "clean": f"text {chance.getrandbits(64):x}\n".encode() * chance.randint(1, 50),
                "eicar": EICAR,
                "forbidden": PDF,
            }[action]
            answer = await storage.put(bucket, key, data)
            if action == "forbidden":
                assert answer.status_code == 415, answer.text
            else:
                assert answer.status_code == 201, answer.text
                version = Version(answer.json()["version_id"], key, data, "pending")
                model.keys.setdefault(key, []).append(version)
                model.seen[version.id] = version
        elif action == "scan":
            await storage.scan()
            model.scanned()
        elif action == "delete":
            answer = await storage.call("DELETE", f"/buckets/{bucket}/objects/{quote(key)}")
            versions = model.keys.get(key, [])
            if not versions or (versioned and versions[-1].is_delete_marker):
                assert answer.status_code == 404, answer.text
            elif versioned:
                assert answer.status_code == 204, answer.text
                marker = Version(answer.headers["x-keel-delete-marker"], key, b"", "clean", True)
                versions.append(marker)
                model.seen[marker.id] = marker
            else:
                assert answer.status_code == 204, answer.text
                model.keys[key] = []
        else:  # delete one version of a versioned bucket
            versions = model.keys.get(key, [])
            if not versions:
                continue
            version = chance.choice(versions)
            answer = await storage.call(
                "DELETE",
                f"/buckets/{bucket}/objects/{quote(key)}",
                params={"version_id": version.id},
            )
            assert answer.status_code == 204, answer.text
            versions.remove(version)
        await check(storage, bucket, model)
