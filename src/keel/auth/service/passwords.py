"""Password hashing (argon2id) and the password policy."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from functools import cache, cached_property
from importlib.resources import files

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from keel.core.errors import ValidationFailed
from keel.settings import AuthSettings

MAX_PASSWORD_LENGTH = 1024  # argon2 accepts more; nobody types more, and it bounds the work

#: argon2id runs here, off the event loop (argon2-cffi releases the GIL): a hash is ~20 ms of
#: CPU, during which a loop that ran it would answer no other request. One thread a core
#: bounds the memory in use (``argon2_memory_kib`` a hash) and leaves the loop a share.
_HASHING = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="keel-argon2")


class Passwords:
    """Hashes and verifies passwords at the configured argon2id cost."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )

    @cached_property
    def _decoy_hash(self) -> str:
        # Verified against when the account does not exist, so that path costs the same
        # hash work as a real one and timing does not reveal which accounts exist. Made on
        # first use, not at start-up, where it would add a hash to every cold start.
        return self._hasher.hash("keel decoy password, never valid")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        """Constant work whether or not there is a hash to check against."""
        if len(password) > MAX_PASSWORD_LENGTH:
            password = password[:MAX_PASSWORD_LENGTH]
        try:
            return self._hasher.verify(password_hash or self._decoy_hash, password) and (
                password_hash is not None
            )
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def hash_off_loop(self, password: str) -> str:
        """:meth:`hash` on the hashing threads: what a request handler calls."""
        return await asyncio.get_running_loop().run_in_executor(_HASHING, self.hash, password)

    async def verify_off_loop(self, password_hash: str | None, password: str) -> bool:
        """:meth:`verify` on the hashing threads: what a request handler calls."""
        return await asyncio.get_running_loop().run_in_executor(
            _HASHING, self.verify, password_hash, password
        )

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)

    def check_policy(self, password: str, *, username: str, email: str | None = None) -> None:
        """Raise :class:`ValidationFailed` naming the first rule ``password`` breaks."""
        problems = policy_violations(
            password, username=username, email=email, min_length=self.settings.password_min_length
        )
        if problems:
            raise ValidationFailed(problems[0], rule="password-policy")


def policy_violations(
    password: str, *, username: str, email: str | None, min_length: int
) -> list[str]:
    problems = []
    if len(password) < min_length:
        problems.append(f"The password must be at least {min_length} characters long.")
    if len(password) > MAX_PASSWORD_LENGTH:
        problems.append(f"The password must be at most {MAX_PASSWORD_LENGTH} characters long.")
    lowered = password.lower()
    if lowered in common_passwords():
        problems.append("The password is too common.")
    identities = {username.lower()}
    if email:
        identities.add(email.lower().split("@")[0])
    if any(identity and len(identity) >= 4 and identity in lowered for identity in identities):
        problems.append("The password must not contain the username or e-mail name.")
    if len(set(password)) < 4:
        problems.append("The password repeats too few distinct characters.")
    return problems


@cache
def common_passwords() -> frozenset[str]:
    text = files("keel.auth").joinpath("data/common-passwords.txt").read_text()
    return frozenset(
        line.strip().lower() for line in text.splitlines() if line and not line.startswith("#")
    )
