"""Push end to end, on SQLite and PostgreSQL: a push message reaches every device of the
recipient through FCM HTTP v1 (a local server speaking it, with its OAuth token endpoint),
carrying the rendered title and body and the sender's data; a device FCM says is gone leaves
the recipient's profile; the provider's credentials come from the secrets service."""

from __future__ import annotations

from tests.notify.conftest import Notify
from tests.support.provider_servers import fcm_server
from tests.support.secrets_api import write

PUSH = {
    "default_locale": "en",
    "locales": {"en": {"push_title": "{{ title }}", "push_body": "{{ body }}"}},
    "sample_data": {"title": "Hello", "body": "World"},
}


async def test_a_push_reaches_each_device_with_its_data_and_a_gone_device_is_forgotten(
    notify: Notify,
) -> None:
    async with fcm_server() as fcm:
        answer = await write(notify.client, notify.admin.api_key, "notify/fcm", fcm.credentials())
        assert answer.status_code == 200, answer.text
        answer = await notify.call(
            "PUT",
            "/providers/fcm",
            json={
                "kind": "fcm",
                "settings": fcm.settings(),
                "credentials_secret": "secret/notify/fcm",
            },
        )
        assert answer.status_code == 201, answer.text
        await notify.publish("push.default", PUSH)
        targets = [{"kind": "fcm", "token": "phone"}, {"kind": "fcm", "token": "old-tablet"}]
        answer = await notify.call("PUT", "/recipients/ada", json={"push_targets": targets})
        assert answer.status_code == 201, answer.text
        fcm.fail_next(1, status=404, code="UNREGISTERED", message="not registered")

        sent = await notify.send(
            channel="push",
            template="push.default",
            recipient="ada",
            data={"title": "Shipped", "body": "It arrives Tuesday"},
            push_data={"order": "A-1"},
        )
        assert sent.status_code == 202, sent.text
        await notify.deliver()

        # The first device's send failed as gone; the second arrived with title, body, data.
        [message] = fcm.messages
        assert message["notification"] == {"title": "Shipped", "body": "It arrives Tuesday"}
        assert message["data"] == {"order": "A-1", "message_id": sent.json()["id"]}
        assert message["token"] == "old-tablet"
        assert fcm.token_requests == 1

    delivered = await notify.message(sent.json()["id"])
    assert delivered["status"] == "sent"
    profile = (await notify.call("GET", "/recipients/ada")).json()
    assert profile["push_targets"] == [{"kind": "fcm", "token": "old-tablet"}]


async def test_push_data_is_refused_on_other_channels_and_cannot_take_the_message_id(
    notify: Notify,
) -> None:
    email = await notify.send(
        template="welcome", to="ada@example.com", data={"name": "Ada"}, push_data={"a": "b"}
    )
    assert email.status_code == 422
    await notify.call(
        "PUT", "/recipients/ada", json={"push_targets": [{"kind": "fcm", "token": "t"}]}
    )
    await notify.publish("push.default", PUSH)
    forged = await notify.send(
        channel="push",
        template="push.default",
        recipient="ada",
        data={"title": "a", "body": "b"},
        push_data={"message_id": "someone-else"},
    )
    assert forged.status_code == 422
    assert "message_id" in forged.json()["detail"]
