"""RFC 9421 HTTP Message Signatures with ``hmac-sha256``, both sides.

The sender uses ``HTTPSignatureAuth``; the receiver uses ``SignatureVerifier``. The signature
base, Structured Fields and Content-Digest (RFC 9530) come from the ``http-message-signatures``
library; this module only chooses what to cover and what to require.

Covered by default: ``@method``, ``@authority``, ``@target-uri`` (so the query too), and when
present ``content-type``, ``idempotency-key`` and ``x-request-id``; a body adds
``content-digest``. Each signature has ``created`` and ``expires`` (``created`` + 5 minutes).
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from http_message_signatures import (
    HTTPMessageSignaturesException,
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    algorithms,
)
from pydantic import SecretStr

from keel_client.http._exceptions import SignatureVerificationError

__all__ = ["HTTPSignatureAuth", "KeyResolver", "SignatureVerifier", "VerifiedSignature"]

#: ``resolve(key_id)`` returns the shared secret for a key ID, or ``None`` if unknown.
KeyResolver = Callable[[str], bytes | None]

DEFAULT_COMPONENTS = ("@method", "@authority", "@target-uri")
DEFAULT_HEADERS = ("content-type", "idempotency-key", "x-request-id")
_SIGNATURE_HEADERS = ("signature", "signature-input", "content-digest")


class _Keys(HTTPSignatureKeyResolver):
    def __init__(self, resolve: KeyResolver) -> None:
        self._resolve = resolve

    def resolve_public_key(self, key_id: str) -> bytes | None:
        return self._resolve(key_id)

    def resolve_private_key(self, key_id: str) -> bytes:
        secret = self._resolve(key_id)
        if secret is None:
            raise HTTPMessageSignaturesException(f"no key {key_id!r}")
        return secret


def _resolver(keys: Mapping[str, bytes] | KeyResolver) -> KeyResolver:
    if callable(keys):
        return keys
    table = dict(keys)
    return table.get


class HTTPSignatureAuth(httpx.Auth):
    """Signs every request (every retry too, with a fresh ``created``) per RFC 9421.

    Example::

        api = PartnerAPI(auth=HTTPSignatureAuth(key_id="keel-2024", secret=shared_secret))

    To sign a request without sending it (for a queue, or a test)::

        request = httpx.Request("POST", url, json=body)
        HTTPSignatureAuth(key_id="k1", secret=b"...").sign(request)
    """

    requires_request_body = True

    def __init__(
        self,
        *,
        key_id: str,
        secret: bytes | SecretStr,
        covered_components: Sequence[str] = DEFAULT_COMPONENTS,
        covered_headers: Sequence[str] = DEFAULT_HEADERS,
        expires_in: float = 300.0,
        label: str = "sig1",
        tag: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        raw = secret.get_secret_value().encode() if isinstance(secret, SecretStr) else secret
        self.key_id = key_id
        self.covered_components = tuple(covered_components)
        self.covered_headers = tuple(header.lower() for header in covered_headers)
        self.expires_in = expires_in
        self.label = label
        self.tag = tag
        self._clock = clock
        self._signer = HTTPMessageSigner(
            signature_algorithm=algorithms.HMAC_SHA256,
            key_resolver=_Keys({key_id: raw}.get),
        )

    def sign(self, request: httpx.Request) -> None:
        """Add ``Signature``, ``Signature-Input`` (and ``Content-Digest``) to ``request``."""
        for name in _SIGNATURE_HEADERS:
            # A retry re-signs: the previous attempt's headers would be stale.
            request.headers.pop(name, None)
        components = [
            *self.covered_components,
            *(name for name in self.covered_headers if name in request.headers),
        ]
        body = request.content
        created = datetime.datetime.fromtimestamp(self._clock(), tz=datetime.UTC)
        self._signer.sign(
            request,
            key_id=self.key_id,
            created=created,
            expires=created + datetime.timedelta(seconds=self.expires_in),
            label=self.label,
            tag=self.tag,
            covered_component_ids=components,
            body=body if body else None,
        )

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.sign(request)
        yield request


@dataclass(frozen=True, slots=True)
class VerifiedSignature:
    """What a verified signature vouches for.

    Example::

        verified = verifier.verify(method=..., url=..., headers=..., body=...)
        partner = partners_by_key[verified.key_id]
    """

    key_id: str
    label: str
    created: datetime.datetime
    expires: datetime.datetime | None
    covered_components: tuple[str, ...]
    #: The signed body (``None`` when the request had none).
    body: bytes | None


@dataclass(frozen=True, slots=True)
class _Message:
    """The request shape the library reads: method, absolute URL, header field lines."""

    method: str
    url: str
    headers: httpx.Headers


class SignatureVerifier:
    """Verifies RFC 9421 ``hmac-sha256`` request signatures on the receiving side.

    Checks, in order: the headers parse; the signature names a known key; ``created`` is not
    in the future and not older than ``max_age``; ``expires`` has not passed (both with
    ``clock_skew`` of tolerance); the HMAC matches; the signature covers every
    ``required_components``; and, for a request with a body, that a covered ``Content-Digest``
    matches the body. Any failure raises ``SignatureVerificationError`` (answer 401).

    Example (any framework; here Starlette)::

        verifier = SignatureVerifier({"keel-2024": shared_secret})

        async def webhook(request: Request) -> Response:
            verified = verifier.verify(
                method=request.method, url=str(request.url),
                headers=request.headers.items(), body=await request.body(),
            )
            ...  # verified.key_id says who sent it
    """

    def __init__(
        self,
        keys: Mapping[str, bytes] | KeyResolver,
        *,
        max_age: float = 300.0,
        clock_skew: float = 5.0,
        required_components: Sequence[str] = DEFAULT_COMPONENTS,
        tag: str | None = None,
    ) -> None:
        self._verifier = HTTPMessageVerifier(
            signature_algorithm=algorithms.HMAC_SHA256,
            key_resolver=_Keys(_resolver(keys)),
        )
        self._verifier.max_clock_skew = datetime.timedelta(seconds=clock_skew)
        self.max_age = datetime.timedelta(seconds=max_age)
        self.required_components = tuple(required_components)
        self.tag = tag

    def verify(
        self,
        *,
        method: str,
        url: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | httpx.Headers,
        body: bytes = b"",
    ) -> VerifiedSignature:
        """Verify a received request; return what the signature covers or raise."""
        fields = headers if isinstance(headers, Mapping | httpx.Headers) else list(headers)
        message = _Message(method=method.upper(), url=url, headers=httpx.Headers(fields))
        try:
            results = self._verifier.verify(
                message,
                max_age=self.max_age,
                expect_tag=self.tag,
                require_components=self.required_components,
                body=body,
            )
        except HTTPMessageSignaturesException as error:
            raise SignatureVerificationError(
                f"signature rejected: {error}", status=401, detail=str(error)
            ) from error
        result = results[0]
        parameters: dict[str, Any] = dict(result.parameters)
        expires = parameters.get("expires")
        return VerifiedSignature(
            key_id=str(parameters["keyid"]),
            label=result.label,
            created=datetime.datetime.fromtimestamp(int(parameters["created"]), tz=datetime.UTC),
            expires=(
                datetime.datetime.fromtimestamp(int(expires), tz=datetime.UTC)
                if expires is not None
                else None
            ),
            covered_components=tuple(
                name for name in result.covered_components if name != '"@signature-params"'
            ),
            body=result.body,
        )
