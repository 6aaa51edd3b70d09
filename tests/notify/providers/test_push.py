"""FCM (with its OAuth token exchange) and Web Push (encrypted, VAPID-signed) against local
servers that check the token, decrypt the payload and verify the signature."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from keel.notify.providers import (
    ErrorKind,
    FcmTarget,
    ProviderConfigError,
    ProviderError,
    PushPayload,
    WebPushTarget,
    build_provider,
)
from tests.support.provider_servers import (
    FcmTestServer,
    WebPushTestServer,
    fcm_server,
    vapid_key_pair,
    webpush_server,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


def fcm_push(token: str = "device-token-1") -> PushPayload:  # noqa: S107 (a device)
    return PushPayload(
        target=FcmTarget(token=token), title="Hi", body="Your order shipped", data={"order": "42"}
    )


# FCM ----------------------------------------------------------------------------------


async def test_fcm_fetches_one_token_for_two_sends_and_sends_the_message(
    fcm: FcmTestServer,
) -> None:
    provider = build_provider("fcm", fcm.settings(), fcm.credentials())
    first = await provider.send(fcm_push("device-a"))
    await provider.send(fcm_push("device-b"))
    await provider.aclose()
    assert fcm.token_requests == 1
    assert fcm.messages[0] == {
        "token": "device-a",
        "notification": {"title": "Hi", "body": "Your order shipped"},
        "data": {"order": "42"},
    }
    assert fcm.messages[1]["token"] == "device-b"
    assert first.provider_message_id == "projects/keel-test/messages/1"


async def test_fcm_fetches_a_new_token_when_the_old_one_is_about_to_expire() -> None:
    async with fcm_server(token_lifetime=30) as fcm:  # under the 60 s safety margin
        provider = build_provider("fcm", fcm.settings(), fcm.credentials())
        await provider.send(fcm_push())
        await provider.send(fcm_push())
        await provider.aclose()
    assert fcm.token_requests == 2
    assert len(fcm.messages) == 2


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (404, "UNREGISTERED", ErrorKind.rejected),
        (400, "INVALID_ARGUMENT", ErrorKind.rejected),
        (429, "QUOTA_EXCEEDED", ErrorKind.throttled),
        (503, "UNAVAILABLE", ErrorKind.retryable),
        (500, None, ErrorKind.retryable),
        (401, "THIRD_PARTY_AUTH_ERROR", ErrorKind.misconfigured),
    ],
)
async def test_fcm_errors_map_to_kinds(
    fcm: FcmTestServer, status: int, code: str | None, kind: ErrorKind
) -> None:
    fcm.fail_next(status=status, code=code, retry_after=5 if status == 429 else None)
    provider = build_provider("fcm", fcm.settings(), fcm.credentials())
    with pytest.raises(ProviderError) as caught:
        await provider.send(fcm_push())
    await provider.aclose()
    assert caught.value.kind is kind
    assert caught.value.retry_after == (5.0 if status == 429 else None)


async def test_fcm_revoked_access_token_is_replaced_on_the_next_send(fcm: FcmTestServer) -> None:
    provider = build_provider("fcm", fcm.settings(), fcm.credentials())
    await provider.send(fcm_push())
    fcm.revoke_tokens()
    with pytest.raises(ProviderError) as caught:
        await provider.send(fcm_push())
    assert (caught.value.kind, caught.value.status) == (ErrorKind.misconfigured, 401)
    await provider.send(fcm_push())
    await provider.aclose()
    assert fcm.token_requests == 2
    assert len(fcm.messages) == 2


async def test_fcm_key_the_token_endpoint_refuses_is_misconfigured(fcm: FcmTestServer) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account = fcm.service_account_json().replace(
        _private_pem(fcm), _pem(other_key).replace("\n", "\\n")
    )
    provider = build_provider("fcm", fcm.settings(), {"service_account_json": account})
    with pytest.raises(ProviderError) as caught:
        await provider.send(fcm_push())
    await provider.aclose()
    assert (caught.value.kind, caught.value.code) == (ErrorKind.misconfigured, "invalid_grant")
    assert fcm.messages == []
    assert "PRIVATE KEY" not in str(caught.value)


async def test_fcm_unreadable_service_account_is_refused_without_echo() -> None:
    with pytest.raises(ProviderConfigError) as caught:
        build_provider("fcm", {}, {"service_account_json": '{"client_email": "x@y", "a": "zz'})
    assert str(caught.value) == "fcm credentials: service_account_json: Value error, is not JSON"


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _private_pem(fcm: FcmTestServer) -> str:
    import json

    return json.dumps(json.loads(fcm.service_account_json())["private_key"])[1:-1]


# Web Push -----------------------------------------------------------------------------

VAPID_PRIVATE, VAPID_PUBLIC = vapid_key_pair()


def web_push(target: WebPushTarget) -> PushPayload:
    return PushPayload(target=target, title="Hi", body="Your order shipped", data={"order": "42"})


async def test_webpush_payload_is_decrypted_by_the_push_service_and_vapid_verified(
    webpush: WebPushTestServer,
) -> None:
    target = webpush.subscribe()
    provider = build_provider(
        "webpush",
        {"subject": "mailto:ops@acme.test", "ttl": 3600, "urgency": "high"},
        {"vapid_private_key": VAPID_PRIVATE},
    )
    sent = await provider.send(web_push(target))
    await provider.aclose()
    [message] = webpush.messages
    assert message.payload == {"title": "Hi", "body": "Your order shipped", "data": {"order": "42"}}
    assert message.vapid_public_key == VAPID_PUBLIC
    assert message.vapid_claims["aud"] == webpush.url
    assert message.vapid_claims["sub"] == "mailto:ops@acme.test"
    assert (message.ttl, message.urgency) == ("3600", "high")
    assert sent.provider_message_id == f"{webpush.url}/messages/1"


async def test_webpush_accepts_a_raw_base64url_vapid_key(webpush: WebPushTestServer) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.private_numbers().private_value.to_bytes(32, "big")
    raw_text = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    provider = build_provider(
        "webpush", {"subject": "https://acme.test"}, {"vapid_private_key": raw_text}
    )
    await provider.send(web_push(webpush.subscribe()))
    await provider.aclose()
    assert len(webpush.messages) == 1


async def test_webpush_gone_subscription_is_rejected(webpush: WebPushTestServer) -> None:
    target = webpush.subscribe()
    webpush.unsubscribe(target)
    provider = build_provider(
        "webpush", {"subject": "mailto:ops@acme.test"}, {"vapid_private_key": VAPID_PRIVATE}
    )
    with pytest.raises(ProviderError) as caught:
        await provider.send(web_push(target))
    await provider.aclose()
    assert (caught.value.kind, caught.value.status) == (ErrorKind.rejected, 410)


@pytest.mark.parametrize(
    ("status", "kind"),
    [(404, ErrorKind.rejected), (429, ErrorKind.throttled), (502, ErrorKind.retryable)],
)
async def test_webpush_errors_map_to_kinds(
    webpush: WebPushTestServer, status: int, kind: ErrorKind
) -> None:
    webpush.fail_next(status=status)
    provider = build_provider(
        "webpush", {"subject": "mailto:ops@acme.test"}, {"vapid_private_key": VAPID_PRIVATE}
    )
    with pytest.raises(ProviderError) as caught:
        await provider.send(web_push(webpush.subscribe()))
    await provider.aclose()
    assert caught.value.kind is kind


async def test_webpush_unusable_subscription_keys_are_rejected(
    webpush: WebPushTestServer,
) -> None:
    target = webpush.subscribe()
    broken = WebPushTarget(endpoint=target.endpoint, p256dh="bm90LWEta2V5", auth=target.auth)
    provider = build_provider(
        "webpush", {"subject": "mailto:ops@acme.test"}, {"vapid_private_key": VAPID_PRIVATE}
    )
    with pytest.raises(ProviderError) as caught:
        await provider.send(web_push(broken))
    await provider.aclose()
    assert (caught.value.kind, caught.value.code) == (ErrorKind.rejected, "invalid_keys")
    assert webpush.requests == []


async def test_webpush_signed_by_a_key_the_subscription_does_not_know_is_misconfigured() -> None:
    _, other_public = vapid_key_pair()
    async with webpush_server(vapid_public_key=other_public) as webpush:
        provider = build_provider(
            "webpush", {"subject": "mailto:ops@acme.test"}, {"vapid_private_key": VAPID_PRIVATE}
        )
        with pytest.raises(ProviderError) as caught:
            await provider.send(web_push(webpush.subscribe()))
        await provider.aclose()
    assert (caught.value.kind, caught.value.status) == (ErrorKind.misconfigured, 401)
    assert webpush.messages == []
    assert "PRIVATE KEY" not in repr(caught.value)


async def test_a_provider_refuses_a_target_of_the_other_push_kind(
    webpush: WebPushTestServer,
) -> None:
    provider = build_provider(
        "webpush", {"subject": "mailto:ops@acme.test"}, {"vapid_private_key": VAPID_PRIVATE}
    )
    with pytest.raises(TypeError):
        await provider.send(fcm_push())
    await provider.aclose()


async def test_webpush_endpoint_that_is_not_http_is_rejected() -> None:
    provider = build_provider(
        "webpush", {"subject": "mailto:ops@acme.test"}, {"vapid_private_key": VAPID_PRIVATE}
    )
    target = WebPushTarget(endpoint="javascript:alert(1)", p256dh="x", auth="y")
    with pytest.raises(ProviderError) as caught:
        await provider.send(web_push(target))
    await provider.aclose()
    assert (caught.value.kind, caught.value.code) == (ErrorKind.rejected, "invalid_endpoint")
