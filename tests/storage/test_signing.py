"""Signed URL tokens and presigned POST policies (keel.storage.signing): pure functions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import string
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keel.core.errors import Forbidden
from keel.storage.signing import (
    MAX_POLICY_CHARS,
    MAX_TOKEN_CHARS,
    PolicyConditionFailed,
    PostPolicy,
    SignatureInvalid,
    UrlClaims,
    enforce_content_length,
    form_key,
    sign_post_policy,
    sign_url_token,
    verify_post_policy,
    verify_url_token,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
NOW = 1_750_000_000
BASE64URL_ALPHABET = string.ascii_letters + string.digits + "-_"

CLAIMS = UrlClaims(
    tenant_id="0197a5e0-6c4e-7a51-9f3e-3c2a1b0d9e8f",
    bucket="invoices",
    key="2025/06/invoice #42 ü.pdf",
    method="GET",
    expires_at=NOW + 300,
    version_id="0197a5e0-7000-7000-8000-000000000001",
    content_type="application/pdf",
    max_bytes=None,
    disposition="invoice.pdf",
)


def forge_url_token(payload: bytes, *, version: int = 1, key: bytes = KEY) -> str:
    """A token in the documented layout, for claims sign_url_token would never write."""
    signed = bytes([version]) + payload
    mac = hmac.new(key, b"keel-storage-url-token\x00" + signed, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(signed + mac).rstrip(b"=").decode()


def reason_of(error: pytest.ExceptionInfo[SignatureInvalid]) -> str:
    return error.value.reason


texts = st.text(st.characters(codec="utf-8"), max_size=60)
optional_texts = st.none() | texts
claims_strategy = st.builds(
    UrlClaims,
    tenant_id=texts,
    bucket=texts,
    key=st.text(st.characters(codec="utf-8"), max_size=300),
    method=st.sampled_from(["GET", "PUT"]),
    expires_at=st.integers(min_value=NOW + 1, max_value=2**40),
    version_id=optional_texts,
    content_type=optional_texts,
    max_bytes=st.none() | st.integers(min_value=0, max_value=2**63),
    disposition=optional_texts,
)


class TestSignUrlToken:
    @settings(max_examples=300, deadline=None)
    @given(claims=claims_strategy)
    def test_any_claims_round_trip(self, claims: UrlClaims) -> None:
        token = sign_url_token(KEY, claims)

        assert set(token) <= set(BASE64URL_ALPHABET)
        assert len(token) <= MAX_TOKEN_CHARS
        assert verify_url_token(KEY, token, now=NOW) == claims

    def test_the_token_is_compact(self) -> None:
        token = sign_url_token(KEY, UrlClaims("t1", "b", "k", "GET", NOW))

        # version byte + about 30 bytes of claims + a 32-byte mac, in base64url
        assert len(token) < 90

    def test_claims_too_long_for_a_token_are_refused_when_signing(self) -> None:
        with pytest.raises(ValueError, match="over 4096"):
            sign_url_token(KEY, replace(CLAIMS, key="k" * 1024, disposition="d" * 2000))

    def test_claims_that_are_not_unicode_text_are_refused_when_signing(self) -> None:
        with pytest.raises(ValueError, match="Unicode"):
            sign_url_token(KEY, replace(CLAIMS, key="bad \udc80 key"))

    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"method": "DELETE"}, "GET or PUT"),
            ({"expires_at": 1.5}, "whole numbers"),
            ({"max_bytes": -1}, "whole numbers"),
            ({"expires_at": True}, "whole numbers"),
        ],
    )
    def test_impossible_claims_are_refused_when_signing(
        self, changes: dict[str, object], message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            sign_url_token(KEY, replace(CLAIMS, **changes))  # type: ignore[arg-type]

    def test_a_short_key_is_refused(self) -> None:
        with pytest.raises(ValueError, match="32 bytes"):
            sign_url_token(KEY[:31], CLAIMS)
        with pytest.raises(ValueError, match="32 bytes"):
            verify_url_token(KEY[:31], sign_url_token(KEY, CLAIMS), now=NOW)


class TestVerifyUrlToken:
    def test_every_single_character_change_is_refused(self) -> None:
        token = sign_url_token(KEY, CLAIMS)
        replacements = BASE64URL_ALPHABET + "=.+/ ~é\x00"
        refused = 0
        for position, original in enumerate(token):
            for replacement in replacements:
                if replacement == original:
                    continue
                tampered = token[:position] + replacement + token[position + 1 :]
                with pytest.raises(SignatureInvalid) as error:
                    verify_url_token(KEY, tampered, now=NOW)
                assert reason_of(error) in ("tampered", "malformed")
                refused += 1
        assert refused == len(token) * (len(replacements) - 1)

    def test_a_deleted_or_inserted_character_is_refused(self) -> None:
        token = sign_url_token(KEY, CLAIMS)
        for position in range(len(token) + 1):
            with pytest.raises(SignatureInvalid):
                verify_url_token(KEY, token[:position] + "A" + token[position:], now=NOW)
            if position < len(token):
                with pytest.raises(SignatureInvalid):
                    verify_url_token(KEY, token[:position] + token[position + 1 :], now=NOW)

    def test_every_truncation_is_refused(self) -> None:
        token = sign_url_token(KEY, CLAIMS)
        for length in range(len(token)):
            with pytest.raises(SignatureInvalid):
                verify_url_token(KEY, token[:length], now=NOW)

    def test_the_unused_bits_of_the_last_character_cannot_vary(self) -> None:
        # Claims whose token length leaves spare bits in the last base64 character: the
        # standard decoder ignores them, so two spellings would decode to the same bytes.
        token = next(
            t
            for t in (sign_url_token(KEY, replace(CLAIMS, key="k" * n)) for n in range(3))
            if len(t) % 4
        )
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        variants = [
            token[:-1] + c
            for c in BASE64URL_ALPHABET
            if c != token[-1]
            and base64.urlsafe_b64decode(token[:-1] + c + "=" * (-len(token) % 4)) == raw
        ]
        assert variants  # the decoder alone would accept these
        for variant in variants:
            with pytest.raises(SignatureInvalid) as error:
                verify_url_token(KEY, variant, now=NOW)
            assert reason_of(error) == "malformed"

    def test_another_key_is_refused_as_tampered(self) -> None:
        with pytest.raises(SignatureInvalid) as error:
            verify_url_token(OTHER_KEY, sign_url_token(KEY, CLAIMS), now=NOW)
        assert reason_of(error) == "tampered"

    def test_the_token_is_valid_until_its_expiry(self) -> None:
        token = sign_url_token(KEY, CLAIMS)

        assert verify_url_token(KEY, token, now=CLAIMS.expires_at - 0.001) == CLAIMS
        for now in (CLAIMS.expires_at, CLAIMS.expires_at + 86400):
            with pytest.raises(SignatureInvalid) as error:
                verify_url_token(KEY, token, now=now)
            assert reason_of(error) == "expired"

    def test_the_signature_is_checked_before_the_expiry(self) -> None:
        expired = sign_url_token(KEY, replace(CLAIMS, expires_at=NOW - 1))

        with pytest.raises(SignatureInvalid) as error:
            verify_url_token(OTHER_KEY, expired, now=NOW)
        assert reason_of(error) == "tampered"

    def test_a_token_over_the_cap_is_refused_before_decoding(self) -> None:
        with pytest.raises(SignatureInvalid) as error:
            verify_url_token(KEY, "A" * (MAX_TOKEN_CHARS + 1), now=NOW)
        assert reason_of(error) == "malformed"
        # Even one whose mac would match: the cap comes first.
        long_token = forge_url_token(b"[" + b'"x",' * 800 + b"1]")
        assert len(long_token) > MAX_TOKEN_CHARS
        with pytest.raises(SignatureInvalid) as error:
            verify_url_token(KEY, long_token, now=NOW)
        assert reason_of(error) == "malformed"

    @pytest.mark.parametrize("token", ["", "A", "AAAA", "not a token!", "é" * 10, "A" * 44])
    def test_garbage_is_malformed(self, token: str) -> None:
        with pytest.raises(SignatureInvalid) as error:
            verify_url_token(KEY, token, now=NOW)
        assert reason_of(error) == "malformed"

    def test_an_unknown_version_is_malformed_even_when_signed(self) -> None:
        payload = json.dumps(["t", "b", "k", "GET", NOW + 60, None, None, None, None]).encode()
        assert verify_url_token(KEY, forge_url_token(payload), now=NOW).key == "k"

        with pytest.raises(SignatureInvalid) as error:
            verify_url_token(KEY, forge_url_token(payload, version=2), now=NOW)
        assert reason_of(error) == "malformed"

    @pytest.mark.parametrize(
        "document",
        [
            {"t": "x"},
            ["t", "b", "k", "GET"],
            ["t", "b", "k", "GET", NOW + 60, None, None, None, None, None],
            ["t", "b", "k", "DELETE", NOW + 60, None, None, None, None],
            ["t", "b", "k", "GET", str(NOW + 60), None, None, None, None],
            ["t", "b", "k", "GET", True, None, None, None, None],
            ["t", "b", 7, "GET", NOW + 60, None, None, None, None],
            ["t", "b", "k", "GET", NOW + 60, None, None, -1, None],
            ["t", "b", "k", "GET", NOW + 60, None, None, None, 5],
        ],
    )
    def test_signed_claims_of_the_wrong_shape_are_malformed(self, document: object) -> None:
        token = forge_url_token(json.dumps(document).encode())

        with pytest.raises(SignatureInvalid) as error:
            verify_url_token(KEY, token, now=NOW)
        assert reason_of(error) == "malformed"

    def test_the_error_says_why_and_nothing_else(self) -> None:
        token = sign_url_token(KEY, CLAIMS)
        tampered = token[:-1] + ("A" if token[-1] != "A" else "B")

        with pytest.raises(SignatureInvalid) as error:
            verify_url_token(KEY, tampered, now=NOW)

        problem = f"{error.value} {error.value.detail} {error.value.extensions}"
        assert isinstance(error.value, Forbidden)  # 403 problem+json
        assert error.value.extensions == {"reason": "tampered"}
        for secret in (token, tampered, token[-43:], KEY.hex(), CLAIMS.key, CLAIMS.bucket):
            assert secret not in problem


# -- POST policies ---------------------------------------------------------------------------

POLICY = PostPolicy(
    tenant_id="tenant-1",
    bucket="avatars",
    key_prefix="users/42/",
    key=None,
    content_types=("image/png", "image/jpeg"),
    min_bytes=1,
    max_bytes=1024,
    expires_at=NOW + 600,
)


def form_for(policy: PostPolicy = POLICY, /, **fields: str) -> dict[str, str]:
    """A form as a browser sends it: the signed fields plus key and Content-Type."""
    form = {"key": "users/42/${filename}", "Content-Type": "image/png"}
    form.update(sign_post_policy(KEY, policy))
    form.update(fields)
    return form


def verify(
    form: dict[str, str],
    *,
    tenant_id: str = "tenant-1",
    bucket: str = "avatars",
    filename: str = "me.png",
    now: float = NOW,
    file_content_type: str | None = None,
    key: bytes = KEY,
) -> PostPolicy:
    return verify_post_policy(
        key,
        form,
        tenant_id=tenant_id,
        bucket=bucket,
        filename=filename,
        now=now,
        file_content_type=file_content_type,
    )


policies = st.builds(
    PostPolicy,
    tenant_id=texts,
    bucket=texts,
    key_prefix=texts,
    key=st.none(),
    content_types=st.lists(
        st.sampled_from(["image/png", "image/*", "*/*", "application/pdf", "text/plain"]),
        min_size=1,
        max_size=5,
    ).map(tuple),
    min_bytes=st.integers(0, 2**40),
    max_bytes=st.integers(0, 2**40),
    expires_at=st.integers(NOW + 1, 4_000_000_000),
).filter(lambda policy: policy.min_bytes <= policy.max_bytes)


class TestPostPolicy:
    def test_a_form_within_the_policy_is_accepted(self) -> None:
        form = form_for()

        assert verify(form) == POLICY
        assert form_key(form, "me.png") == "users/42/me.png"

    @settings(max_examples=200, deadline=None)
    @given(policy=policies)
    def test_any_policy_round_trips(self, policy: PostPolicy) -> None:
        form = {
            **sign_post_policy(KEY, policy),
            "key": policy.key_prefix + "${filename}",
            "content-type": policy.content_types[0].replace("*", "x"),
        }

        assert verify(form, tenant_id=policy.tenant_id, bucket=policy.bucket) == policy

    def test_the_fields_look_like_s3s(self) -> None:
        fields = sign_post_policy(KEY, POLICY)
        document = json.loads(base64.b64decode(fields["policy"]))

        assert set(fields) == {"policy", "signature"}
        assert fields["signature"].startswith("v1.")
        assert document["expiration"] == "2025-06-15T15:16:40Z"
        assert ["content-length-range", 1, 1024] in document["conditions"]
        assert ["starts-with", "$key", "users/42/"] in document["conditions"]
        assert {"bucket": "avatars"} in document["conditions"]

    @pytest.mark.parametrize(
        ("tenant_id", "bucket"), [("tenant-2", "avatars"), ("tenant-1", "other")]
    )
    def test_another_tenant_or_bucket_is_refused(self, tenant_id: str, bucket: str) -> None:
        with pytest.raises(PolicyConditionFailed) as error:
            verify(form_for(), tenant_id=tenant_id, bucket=bucket)
        assert error.value.condition == "bucket"

    @pytest.mark.parametrize(
        ("key", "filename"),
        [
            ("users/43/${filename}", "me.png"),
            ("users/42", "me.png"),
            ("USERS/42/x", "me.png"),
            ("${filename}", "users/4"),
            ("users/42/${filename}", ""),
            ("", "me.png"),
        ],
    )
    def test_a_key_outside_the_prefix_is_refused(self, key: str, filename: str) -> None:
        with pytest.raises(PolicyConditionFailed) as error:
            verify(form_for(key=key), filename=filename)
        assert error.value.condition == "key"

    def test_the_prefix_is_checked_after_the_filename_is_put_in(self) -> None:
        # "users/$" is a prefix of the template but not of the key it makes.
        policy = replace(POLICY, key_prefix="users/$")
        form = form_for(policy, key="users/${filename}")

        with pytest.raises(PolicyConditionFailed) as error:
            verify(form, filename="evil")
        assert error.value.condition == "key"

    def test_a_missing_key_field_is_refused(self) -> None:
        form = form_for()
        del form["key"]

        with pytest.raises(PolicyConditionFailed) as error:
            verify(form)
        assert error.value.condition == "key"

    def test_an_exact_key_allows_that_key_only(self) -> None:
        policy = replace(POLICY, key="users/42/avatar.png")

        assert verify(form_for(policy, key="users/42/avatar.png")) == policy
        for other in ("users/42/avatar.png2", "users/42/${filename}", "users/42/other.png"):
            with pytest.raises(PolicyConditionFailed) as error:
                verify(form_for(policy, key=other), filename="avatar.png")
            assert error.value.condition == "key"

    @pytest.mark.parametrize(
        "content_type", ["image/gif", "application/pdf", "image", "", "image/png/x"]
    )
    def test_a_content_type_outside_the_policy_is_refused(self, content_type: str) -> None:
        with pytest.raises(PolicyConditionFailed) as error:
            verify(form_for(**{"Content-Type": content_type}))
        assert error.value.condition == "content-type"

    def test_a_missing_content_type_is_refused_unless_the_file_part_declares_one(self) -> None:
        form = form_for()
        del form["Content-Type"]

        with pytest.raises(PolicyConditionFailed) as error:
            verify(form)
        assert error.value.condition == "content-type"
        assert verify(form, file_content_type="image/jpeg") == POLICY
        with pytest.raises(PolicyConditionFailed):
            verify(form, file_content_type="text/html")

    @pytest.mark.parametrize(
        ("patterns", "declared", "allowed"),
        [
            (("image/*",), "image/webp", True),
            (("image/*",), "IMAGE/PNG; charset=binary", True),
            (("*/*",), "application/x-anything", True),
            (("image/png",), "image/pngx", False),
            (("image/*",), "imagex/png", False),
            (("text/plain",), "text/plain;charset=utf-8", True),
            # As bucket policies: a wildcard never admits active content.
            (("image/*",), "image/svg+xml", False),
            (("image/svg+xml",), "image/svg+xml", True),
        ],
    )
    def test_content_type_patterns(
        self, patterns: tuple[str, ...], declared: str, allowed: bool
    ) -> None:
        form = form_for(replace(POLICY, content_types=patterns), **{"Content-Type": declared})

        if allowed:
            assert verify(form).content_types == patterns
        else:
            with pytest.raises(PolicyConditionFailed):
                verify(form)

    def test_fields_the_policy_does_not_cover_are_refused(self) -> None:
        with pytest.raises(PolicyConditionFailed) as error:
            verify(form_for(acl="public-read"))
        assert error.value.condition == "fields"
        # As in S3, x-ignore- fields are allowed.
        assert verify(form_for(**{"x-ignore-submit": "Upload"})) == POLICY

    def test_field_names_are_compared_without_case(self) -> None:
        form = {k.upper(): v for k, v in form_for().items()}

        assert verify(form) == POLICY
        with pytest.raises(PolicyConditionFailed) as error:
            verify({**form_for(), "KEY": "users/42/other"})
        assert error.value.condition == "fields"

    def test_a_changed_policy_or_signature_is_tampered(self) -> None:
        form = form_for()
        other_policy = sign_post_policy(KEY, replace(POLICY, max_bytes=10**12))["policy"]
        signature_hex = form["signature"][3:]
        flipped = "0" if signature_hex[0] != "0" else "1"
        for changed in (
            {"policy": other_policy},
            {"signature": "v1." + flipped + signature_hex[1:]},
            {"policy": form["policy"][:-4] + "AAA="},
        ):
            with pytest.raises(SignatureInvalid) as error:
                verify({**form, **changed})
            assert reason_of(error) == "tampered"

    def test_another_key_is_tampered(self) -> None:
        with pytest.raises(SignatureInvalid) as error:
            verify(form_for(), key=OTHER_KEY)
        assert reason_of(error) == "tampered"

    def test_an_expired_policy_is_refused_after_its_signature_is_checked(self) -> None:
        form = form_for()

        assert verify(form, now=POLICY.expires_at - 1) == POLICY
        with pytest.raises(SignatureInvalid) as error:
            verify(form, now=POLICY.expires_at)
        assert reason_of(error) == "expired"
        with pytest.raises(SignatureInvalid) as error:
            verify(form, now=POLICY.expires_at, key=OTHER_KEY)
        assert reason_of(error) == "tampered"

    @pytest.mark.parametrize(
        "changes",
        [
            {"policy": None},
            {"signature": None},
            {"signature": "d12c47cf206ca8ba8e38c3df6d64c83ffe6efbb67c3c7832dcc841dd2fef7655"},
            {"signature": "v2.d12c47cf206ca8ba8e38c3df6d64c83ffe6efbb67c3c7832dcc841dd2fef7655"},
            {"signature": "v1.D12C47CF206CA8BA8E38C3DF6D64C83FFE6EFBB67C3C7832DCC841DD2FEF7655"},
            {"signature": "v1.abc"},
            {"signature": "v1.é"},
            {"policy": "é" * 12},
            {"policy": "not base64!"},
            {"policy": "A" * (MAX_POLICY_CHARS + 4)},
        ],
    )
    def test_missing_or_malformed_fields_are_malformed(
        self, changes: dict[str, str | None]
    ) -> None:
        form = form_for()
        for name, value in changes.items():
            if value is None:
                del form[name]
            else:
                form[name] = value

        with pytest.raises(SignatureInvalid) as error:
            verify(form)
        assert reason_of(error) == "malformed"

    def test_a_url_token_mac_does_not_sign_a_policy(self) -> None:
        # The same key signs both; context labels keep one from passing for the other.
        document = base64.b64decode(form_for()["policy"])
        token = forge_url_token(document)
        mac_hex = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))[-32:].hex()

        with pytest.raises(SignatureInvalid) as error:
            verify(form_for(signature="v1." + mac_hex))
        assert reason_of(error) == "tampered"

    @pytest.mark.parametrize(
        ("changes", "message"),
        [
            ({"min_bytes": 5, "max_bytes": 4}, "min_bytes <= max_bytes"),
            ({"min_bytes": -1}, "min_bytes <= max_bytes"),
            ({"content_types": ()}, "at least one"),
            ({"content_types": ("image",)}, "at least one"),
            ({"content_types": ("*/png",)}, "at least one"),
            ({"key_prefix": "k" * MAX_POLICY_CHARS}, "over 8192"),
        ],
    )
    def test_impossible_policies_are_refused_when_signing(
        self, changes: dict[str, object], message: str
    ) -> None:
        with pytest.raises(ValueError, match=message):
            sign_post_policy(KEY, replace(POLICY, **changes))  # type: ignore[arg-type]


async def chunks_of(sizes: list[int], consumed: list[int]) -> AsyncIterator[bytes]:
    for size in sizes:
        consumed.append(size)
        yield b"x" * size


async def collect(chunks: AsyncIterator[bytes], into: list[bytes]) -> None:
    async for chunk in chunks:
        into.append(chunk)


class TestEnforceContentLength:
    async def test_a_file_within_the_range_passes_unchanged(self) -> None:
        consumed: list[int] = []
        passed = [
            c async for c in enforce_content_length(POLICY, chunks_of([1, 1000, 23], consumed))
        ]

        assert [len(c) for c in passed] == [1, 1000, 23]

    async def test_a_file_over_max_bytes_stops_before_the_chunk_that_goes_over(self) -> None:
        consumed: list[int] = []
        passed: list[bytes] = []
        chunks = enforce_content_length(POLICY, chunks_of([1000, 25, 10**6, 10**6], consumed))
        with pytest.raises(PolicyConditionFailed) as error:
            await collect(chunks, passed)

        assert error.value.condition == "content-length-range"
        assert [len(c) for c in passed] == [1000]
        assert consumed == [1000, 25]  # nothing read after the limit was crossed

    @pytest.mark.parametrize("sizes", [[], [0, 0]])
    async def test_a_file_under_min_bytes_is_refused_at_its_end(self, sizes: list[int]) -> None:
        with pytest.raises(PolicyConditionFailed) as error:
            await collect(enforce_content_length(POLICY, chunks_of(sizes, [])), [])
        assert error.value.condition == "content-length-range"
