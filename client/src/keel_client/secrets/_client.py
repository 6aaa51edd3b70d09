"""``SecretsClient`` (async) and ``SyncSecretsClient``: Keel's Vault KV v2 API from a service.

Both faces share paths, parsing, error translation and the cache through ``_SecretsCore``;
a face only sends. A read::

    get(path, key) ── cache hit? ──────────────────────────────▶ copy of the cached value
                        └─ miss ── same read in flight? join it (async face)
                                     └─ GET /secrets/v1/<mount>/data/<path> (retries, breaker)
                                          ├─ 200 ─▶ cache the data, return it (or its key)
                                          ├─ 404 ─▶ SecretNotFound    403 ─▶ SecretPermissionDenied
                                          └─ else ▶ the base client's error

Paths are relative to a mount: ``apps/billing/db`` on the client's ``mount`` (``secret`` unless
told), or on the ``mount=`` a call passes.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import re
import time
import types
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, Self, Unpack
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from keel_client._env import ENV_TOKEN, ENV_URL, check_api_alone, env_settings
from keel_client._env import as_auth as _as_auth
from keel_client.http import (
    BaseAPIClient,
    ClientError,
    KeelHTTPError,
    RequestOptions,
    ResponseValidationError,
    SyncBaseAPIClient,
)
from keel_client.secrets._cache import MISSING, CacheKey, SecretCache
from keel_client.secrets._dynamic import DynamicCredential, parse_lease
from keel_client.secrets._exceptions import (
    CheckAndSetConflict,
    SecretNotFound,
    SecretPermissionDenied,
    SecretsError,
)

__all__ = [
    "DEFAULT_CACHE_SIZE",
    "DEFAULT_CACHE_TTL",
    "DEFAULT_MOUNT",
    "ENV_TOKEN",
    "ENV_URL",
    "SecretsClient",
    "SyncSecretsClient",
]

DEFAULT_MOUNT = "secret"
DEFAULT_DATABASE_MOUNT = "database"
#: Seconds a read is served from memory: long enough to spare Keel a read per request,
#: short enough that a rotated value reaches every replica within a few seconds.
DEFAULT_CACHE_TTL = 5.0
DEFAULT_CACHE_SIZE = 1024
#: Reads ``get_many`` sends at once.
DEFAULT_MAX_CONCURRENCY = 16
API_PREFIX = "/secrets/v1"

_MOUNT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def check_mount(mount: str) -> str:
    """``mount`` if it is a valid Keel mount name; ``ValueError`` otherwise."""
    if not _MOUNT.fullmatch(mount):
        raise ValueError(f"invalid mount {mount!r}: lowercase letters, digits, - and _")
    return mount


@functools.lru_cache(maxsize=4096)
def check_path(path: str) -> str:
    """``path`` without surrounding slashes; ``ValueError`` for an empty path, an empty
    segment or a ``.``/``..`` segment (which a URL would resolve to another endpoint).

    Memoised: a service reads the same few paths again and again, and the check was a
    third of a cached read."""
    stripped = path.strip("/")
    if not stripped:
        raise ValueError("a secret path is not empty")
    for segment in stripped.split("/"):
        if segment in ("", ".", ".."):
            raise ValueError(f"invalid secret path {path!r}: empty, '.' or '..' segment")
    return stripped


def _reveal(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _vault_errors(response: httpx.Response) -> list[str]:
    """Vault's ``{"errors": [...]}`` strings of an error answer (empty when there are none)."""
    try:
        body = response.json()
    except ValueError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    return [str(item) for item in errors] if isinstance(errors, list) else []


def _error_fields(error: KeelHTTPError) -> dict[str, Any]:
    return {
        "status": error.status,
        "request_id": error.request_id,
        "method": error.method,
        "url": error.url,
    }


class _SecretsCore:
    """What both faces share: defaults, the cache, URLs, parsing and error translation."""

    def __init__(
        self, *, mount: str, cache_ttl: float, cache_size: int, clock: Callable[[], float]
    ) -> None:
        self.mount = check_mount(mount)
        self.cache = SecretCache(ttl=cache_ttl, max_entries=cache_size, clock=clock)

    def key(self, path: str, mount: str | None) -> CacheKey:
        return (self.mount if mount is None else check_mount(mount), check_path(path))

    @staticmethod
    def data_url(key: CacheKey) -> str:
        mount, path = key
        return f"{API_PREFIX}/{mount}/data/{quote(path, safe='/')}"

    @staticmethod
    def parse_read(response: httpx.Response, key: CacheKey) -> dict[str, Any]:
        try:
            body = response.json()
            data = body["data"]["data"]
        except (ValueError, KeyError, TypeError) as error:
            raise _invalid(response, key, "the read answer has no data.data object") from error
        if not isinstance(data, dict):
            raise _invalid(response, key, "the read answer's data.data is not an object")
        return data

    @staticmethod
    def parse_version(response: httpx.Response, key: CacheKey) -> int:
        try:
            version = response.json()["data"]["version"]
        except (ValueError, KeyError, TypeError) as error:
            raise _invalid(response, key, "the write answer has no data.version") from error
        if not isinstance(version, int):
            raise _invalid(response, key, "the write answer's data.version is not a number")
        return version

    @staticmethod
    def pick(data: dict[str, Any], key: CacheKey, name: str | None) -> Any:
        if name is None:
            return data
        if name not in data:
            _raise_missing_key(key, name)
        return data[name]

    @staticmethod
    def write_body(data: Mapping[str, Any], cas: int | None) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise TypeError("a secret's data is a mapping of keys to values")
        body: dict[str, Any] = {"data": {str(k): _reveal(v) for k, v in data.items()}}
        if cas is not None:
            if isinstance(cas, bool) or not isinstance(cas, int) or cas < 0:
                raise ValueError("cas is a non-negative integer")
            body["options"] = {"cas": cas}
        return body

    @staticmethod
    def translate(
        error: ClientError,
        key: CacheKey,
        *,
        action: str,
        cas: int | None = None,
        noun: str = "secret",
    ) -> NoReturn:
        """Raise the secrets error for a 4xx answer about ``key``."""
        mount, path = key
        where = f"{noun} {mount}/{path}"
        fields = {"mount": mount, "path": path, **_error_fields(error)}
        messages = _vault_errors(error.response)
        if error.status == 404:
            reason = "its latest version is deleted" if _has_data(error.response) else "not found"
            raise SecretNotFound(f"{where}: {reason}", **fields) from error
        if error.status == 403:
            raise SecretPermissionDenied(
                f"permission denied to {action} {where} (no policy grants it, or the "
                "token is invalid)",
                **fields,
            ) from error
        if error.status == 400 and any("check-and-set" in message for message in messages):
            raise CheckAndSetConflict(
                f"check-and-set failed writing {where}: {'; '.join(messages)}",
                cas=cas,
                **fields,
            ) from error
        detail = "; ".join(messages) or (error.title or "refused")
        raise SecretsError(f"{action} {where} refused: {detail}", **fields) from error


def _has_data(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("data"), dict)


def _raise_missing_key(key: CacheKey, name: str) -> NoReturn:
    mount, path = key
    raise SecretNotFound(
        f"secret {mount}/{path} has no key {name!r}", mount=mount, path=path, key=name
    )


def _invalid(response: httpx.Response, key: CacheKey, message: str) -> ResponseValidationError:
    return ResponseValidationError(
        f"secret {key[0]}/{key[1]}: {message}",
        errors=[],
        status=response.status_code,
        request_id=response.headers.get("x-request-id"),
    )


class SecretsClient:
    """Reads and writes secrets in Keel from an async service, with a short in-memory cache.

    Example::

        async with SecretsClient("https://keel.internal", auth=api_key) as secrets:
            db = await secrets.get("apps/billing/db")                # {"user": …, "password": …}
            password = await secrets.get("apps/billing/db", "password")
            both = await secrets.get_many(["apps/billing/db", "apps/billing/stripe"])
            version = await secrets.set("apps/billing/db", {"password": new}, cas=3)
            creds = await secrets.get_dynamic("billing-readonly")    # renewed in the background

        secrets = SecretsClient.from_env()     # KEEL_URL and KEEL_TOKEN

    ``auth`` is an API key or access token (sent as ``Authorization: Bearer``) or any
    ``httpx.Auth`` (e.g. ``keel_client.auth.ServiceCredentials``); or pass ``api=`` (a
    ``BaseAPIClient`` for Keel, e.g. the one ``keel_client.Keel`` shares between its
    sub-clients) instead of ``base_url``, ``auth`` and the HTTP options: the client then
    leaves it open. Paths are relative to ``mount``; each call may name another with
    ``mount=``. The calls that reach Keel take per-call ``RequestOptions`` (``timeout``,
    ``deadline``, ``max_retries``, ``idempotency_key``...) over the client's defaults.

    Reads are cached per secret for ``cache_ttl`` seconds (0 turns the cache off), at most
    ``cache_size`` secrets, least recently used out first; ``set`` drops the secret it wrote,
    and concurrent reads of one uncached secret share one request. Values come back as
    copies: changing what ``get`` returned changes nothing cached. ``clock`` (monotonic
    seconds) is injectable for tests.

    Errors: :class:`SecretNotFound`, :class:`SecretPermissionDenied`,
    :class:`CheckAndSetConflict` (all :class:`SecretsError`), or the base client's errors for
    transport failures and 5xx answers. No message holds a value. Every other keyword
    argument is a ``BaseAPIClient`` option (timeouts, retries, ``transport``...); the
    resilient client itself is :attr:`api` (its ``health()``, its metrics).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        auth: str | SecretStr | httpx.Auth | None = None,
        api: BaseAPIClient | None = None,
        mount: str = DEFAULT_MOUNT,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        clock: Callable[[], float] = time.monotonic,
        **options: Any,
    ) -> None:
        self._secrets = _SecretsCore(
            mount=mount, cache_ttl=cache_ttl, cache_size=cache_size, clock=clock
        )
        if max_concurrency < 1:
            raise ValueError("max_concurrency is at least 1")
        self.max_concurrency = max_concurrency
        self._in_flight: dict[CacheKey, asyncio.Future[dict[str, Any]]] = {}
        self._leases: set[DynamicCredential] = set()
        self._owns_api = api is None
        if api is None:
            options.setdefault("name", "SecretsClient")
            api = BaseAPIClient(base_url, auth=_as_auth(auth), **options)
        else:
            check_api_alone(base_url, auth, options)
        #: The resilient HTTP client the calls go through (retries, breaker, metrics).
        self.api = api

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        await self.aclose()

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> SecretsClient:
        """A client for ``KEEL_URL`` authenticated with ``KEEL_TOKEN`` (an API key or token)."""
        url, token = env_settings(environ)
        options.setdefault("auth", token)
        return cls(url, **options)

    @property
    def cache(self) -> SecretCache:
        """The client's cache (``len``, ``invalidate``, ``clear``)."""
        return self._secrets.cache

    async def get(
        self,
        path: str,
        key: str | None = None,
        *,
        mount: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> Any:
        """The secret's data as a dict, or with ``key`` that key's value.

        Raises :class:`SecretNotFound` when there is no secret at ``path`` (or its latest
        version is deleted, or it has no ``key``), :class:`SecretPermissionDenied` on 403.
        ``options`` apply to the read a cache miss sends (a read already in flight for the
        same secret is joined as it is).
        """
        cache_key = self._secrets.key(path, mount)
        cache = self._secrets.cache
        if key is not None:
            hit, value = cache.get_value(cache_key, key)
            if hit:
                if value is MISSING:
                    _raise_missing_key(cache_key, key)
                return value
        else:
            cached = cache.get(cache_key)
            if cached is not None:
                return cached
        data = await self._read(cache_key, options)
        return self._secrets.pick(data, cache_key, key)

    async def get_many(
        self, paths: Iterable[str], *, mount: str | None = None, **options: Unpack[RequestOptions]
    ) -> dict[str, dict[str, Any]]:
        """Several secrets at once, fetched concurrently (at most ``max_concurrency`` at a
        time): ``{path: data}`` keyed by the paths as given. The first failure, in the order
        of ``paths``, is raised once every read has ended."""
        wanted = list(dict.fromkeys(paths))
        limit = asyncio.Semaphore(self.max_concurrency)

        async def one(path: str) -> dict[str, Any]:
            async with limit:
                data: dict[str, Any] = await self.get(path, mount=mount, **options)
                return data

        results = await asyncio.gather(*(one(path) for path in wanted), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return dict(zip(wanted, results, strict=True))  # type: ignore[arg-type]

    async def set(
        self,
        path: str,
        data: Mapping[str, Any],
        *,
        cas: int | None = None,
        mount: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> int:
        """Write a new version of the secret (values may be ``SecretStr``); return its number.

        ``cas=0`` writes only a new secret, ``cas=n`` only over version ``n``; a mismatch
        raises :class:`CheckAndSetConflict`. The cached copy of the secret is dropped. A write
        is retried only with ``idempotent=True`` or an ``idempotency_key``.
        """
        cache_key = self._secrets.key(path, mount)
        body = self._secrets.write_body(data, cas)
        self._forget(cache_key)
        try:
            response = await self.api.post(self._secrets.data_url(cache_key), json=body, **options)
        except ClientError as error:
            self._secrets.translate(error, cache_key, action="write", cas=cas)
        finally:
            # Dropped again: a read that began before the write answered may have cached.
            self._forget(cache_key)
        return self._secrets.parse_version(response, cache_key)

    def invalidate(self, path: str, *, mount: str | None = None) -> None:
        """Drop one secret from the cache (e.g. on hearing it was rotated)."""
        self._forget(self._secrets.key(path, mount))

    def clear_cache(self) -> None:
        self._in_flight.clear()
        self._secrets.cache.clear()

    async def get_dynamic(
        self,
        role: str,
        *,
        mount: str = DEFAULT_DATABASE_MOUNT,
        renew: bool = True,
        increment: float | None = None,
        **options: Unpack[RequestOptions],
    ) -> DynamicCredential:
        """New database credentials from a dynamic-secrets role, as a lease renewed in the
        background at two thirds of its TTL until its max TTL or :meth:`DynamicCredential.close`.

        Example::

            creds = await secrets.get_dynamic("billing-readonly")
            engine = create_async_engine(url, username=creds.username,
                                         password=creds.password.get_secret_value())
            ...
            await creds.revoke()
        """
        role_path = check_path(role)
        mount = check_mount(mount)
        where = (mount, role_path)
        requested_at = time.monotonic()
        try:
            response = await self.api.get(
                f"{API_PREFIX}/{mount}/creds/{quote(role_path, safe='/')}", **options
            )
        except ClientError as error:
            self._secrets.translate(error, where, action="issue credentials from", noun="role")
        credential = DynamicCredential(
            self.api,
            parse_lease(response, where),
            renew=renew,
            increment=increment,
            requested_at=requested_at,
            on_close=self._leases.discard,
        )
        self._leases.add(credential)
        credential.start()
        return credential

    async def aclose(self) -> None:
        """Stop renewing every lease this client handed out (leases are not revoked), then
        close pooled connections (not those of an ``api=`` it was given)."""
        for credential in list(self._leases):
            await credential.close()
        if self._owns_api:
            await self.api.aclose()

    def _forget(self, key: CacheKey) -> None:
        self._in_flight.pop(key, None)
        self._secrets.cache.invalidate(key)

    async def _read(self, key: CacheKey, options: RequestOptions) -> dict[str, Any]:
        future = self._in_flight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._fetch(key, options))
            self._in_flight[key] = future

            def done(finished: asyncio.Future[dict[str, Any]]) -> None:
                if self._in_flight.get(key) is finished:
                    del self._in_flight[key]

            future.add_done_callback(done)
        # Shielded: one caller giving up must not cancel the read the others wait for.
        data = await asyncio.shield(future)
        return copy.deepcopy(data)

    async def _fetch(self, key: CacheKey, options: RequestOptions) -> dict[str, Any]:
        epoch = self._secrets.cache.epoch
        try:
            response = await self.api.get(self._secrets.data_url(key), **options)
        except ClientError as error:
            self._secrets.translate(error, key, action="read")
        data = self._secrets.parse_read(response, key)
        self._secrets.cache.put(key, data, epoch=epoch)
        return data


class SyncSecretsClient:
    """The blocking face of :class:`SecretsClient`: same cache, paths and errors.

    What a settings class uses at start-up (see ``KeelSecretsSettingsSource``); for a
    service that does not run an event loop.

    Example::

        with SyncSecretsClient("https://keel.internal", auth=api_key) as secrets:
            password = secrets.get("apps/billing/db", "password")
            secrets.set("apps/billing/db", {"password": new})

    Dynamic credentials, whose lease is renewed by a background task, are on the async
    :class:`SecretsClient` only. ``api=`` (a ``SyncBaseAPIClient``) and per-call options as
    :class:`SecretsClient` takes them.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        auth: str | SecretStr | httpx.Auth | None = None,
        api: SyncBaseAPIClient | None = None,
        mount: str = DEFAULT_MOUNT,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        cache_size: int = DEFAULT_CACHE_SIZE,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        clock: Callable[[], float] = time.monotonic,
        **options: Any,
    ) -> None:
        self._secrets = _SecretsCore(
            mount=mount, cache_ttl=cache_ttl, cache_size=cache_size, clock=clock
        )
        if max_concurrency < 1:
            raise ValueError("max_concurrency is at least 1")
        self.max_concurrency = max_concurrency
        self._owns_api = api is None
        if api is None:
            options.setdefault("name", "SyncSecretsClient")
            api = SyncBaseAPIClient(base_url, auth=_as_auth(auth), **options)
        else:
            check_api_alone(base_url, auth, options)
        #: The resilient HTTP client the calls go through (retries, breaker, metrics).
        self.api = api

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close pooled connections (not those of an ``api=`` it was given)."""
        if self._owns_api:
            self.api.close()

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **options: Any
    ) -> SyncSecretsClient:
        """A client for ``KEEL_URL`` authenticated with ``KEEL_TOKEN`` (an API key or token)."""
        url, token = env_settings(environ)
        options.setdefault("auth", token)
        return cls(url, **options)

    @property
    def cache(self) -> SecretCache:
        return self._secrets.cache

    def get(
        self,
        path: str,
        key: str | None = None,
        *,
        mount: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> Any:
        """The secret's data as a dict, or with ``key`` that key's value."""
        cache_key = self._secrets.key(path, mount)
        cache = self._secrets.cache
        if key is not None:
            hit, value = cache.get_value(cache_key, key)
            if hit:
                if value is MISSING:
                    _raise_missing_key(cache_key, key)
                return value
        else:
            cached = cache.get(cache_key)
            if cached is not None:
                return cached
        return self._secrets.pick(self._fetch(cache_key, options), cache_key, key)

    def get_many(
        self, paths: Iterable[str], *, mount: str | None = None, **options: Unpack[RequestOptions]
    ) -> dict[str, dict[str, Any]]:
        """Several secrets at once, fetched concurrently on threads; see
        :meth:`SecretsClient.get_many`."""
        wanted = list(dict.fromkeys(paths))
        if len(wanted) <= 1:
            return {path: self.get(path, mount=mount, **options) for path in wanted}
        workers = min(self.max_concurrency, len(wanted))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="keel-secrets") as pool:
            futures = [pool.submit(self.get, path, mount=mount, **options) for path in wanted]
            # In order: the first failure in the order of ``paths`` is the one raised.
            return {path: future.result() for path, future in zip(wanted, futures, strict=True)}

    def set(
        self,
        path: str,
        data: Mapping[str, Any],
        *,
        cas: int | None = None,
        mount: str | None = None,
        **options: Unpack[RequestOptions],
    ) -> int:
        """Write a new version of the secret; see :meth:`SecretsClient.set`."""
        cache_key = self._secrets.key(path, mount)
        body = self._secrets.write_body(data, cas)
        self._secrets.cache.invalidate(cache_key)
        try:
            response = self.api.post(self._secrets.data_url(cache_key), json=body, **options)
        except ClientError as error:
            self._secrets.translate(error, cache_key, action="write", cas=cas)
        finally:
            self._secrets.cache.invalidate(cache_key)
        return self._secrets.parse_version(response, cache_key)

    def invalidate(self, path: str, *, mount: str | None = None) -> None:
        self._secrets.cache.invalidate(self._secrets.key(path, mount))

    def clear_cache(self) -> None:
        self._secrets.cache.clear()

    def _fetch(self, key: CacheKey, options: RequestOptions) -> dict[str, Any]:
        epoch = self._secrets.cache.epoch
        try:
            response = self.api.get(self._secrets.data_url(key), **options)
        except ClientError as error:
            self._secrets.translate(error, key, action="read")
        data = self._secrets.parse_read(response, key)
        self._secrets.cache.put(key, data, epoch=epoch)
        return data
