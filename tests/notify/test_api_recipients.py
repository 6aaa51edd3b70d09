"""Recipients' choices and their erasure, on SQLite and PostgreSQL: a category turned off is
not sent (checked when the send is accepted and again at delivery); a critical category is
sent regardless and carries no unsubscribe; erasing a recipient keeps their messages' status
history and nothing else, while the suppression list keeps their address."""

from __future__ import annotations

import email
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.policy import default
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select

from keel.core.tenancy import bind_tenant
from keel.notify.models import NotifyMessage
from tests.notify.conftest import Notify


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=default)
    assert isinstance(message, EmailMessage)
    return message


async def setup_categories(notify: Notify) -> None:
    """``marketing`` (recipients may turn it off) and ``security`` (critical)."""
    for name, critical in (("marketing", False), ("security", True)):
        answer = await notify.call("PUT", f"/categories/{name}", json={"critical": critical})
        assert answer.status_code == 201, answer.text
    for name, category, text in (
        ("promo", "marketing", "Sale, {{ name }}!"),
        ("password-reset", "security", "Your code, {{ name }}: 4711"),
    ):
        await notify.publish(
            name,
            {
                "default_locale": "en",
                "locales": {"en": {"subject": name, "text": text}},
                "sample_data": {"name": "Ada"},
            },
            category=category,
        )


async def set_preference(notify: Notify, recipient: str, **choice: Any) -> None:
    answer = await notify.call(
        "PUT", f"/recipients/{recipient}/preferences", json={"preferences": [choice]}
    )
    assert answer.status_code == 200, answer.text


async def send(notify: Notify, **body: Any) -> dict[str, Any]:
    answer = await notify.send(**body)
    assert answer.status_code == 202, answer.text
    document: dict[str, Any] = answer.json()
    return document


async def test_a_category_turned_off_on_email_is_skipped_and_nothing_is_delivered(
    notify: Notify,
) -> None:
    await setup_categories(notify)
    await notify.identify("ada", email="ada@example.com")
    await set_preference(notify, "ada", category="marketing", channel="email", enabled=False)

    skipped = await send(notify, template="promo", recipient="ada", data={"name": "Ada"})

    assert skipped["status"] == "skipped"
    assert await notify.deliver_own() == 0
    assert notify.smtp.messages == []
    history = (await notify.message(skipped["id"]))["events"]
    assert [(e["status"], e["detail"].get("reason")) for e in history] == [
        ("skipped", "the recipient turned this category off")
    ]
    # Another category still reaches them.
    await send(notify, template="welcome", recipient="ada", data={"name": "Ada"})
    assert await notify.deliver_own() == 1
    assert len(notify.smtp.messages) == 1


async def test_a_critical_category_ignores_opt_outs_and_suppressions_and_has_no_unsubscribe(
    notify: Notify,
) -> None:
    await setup_categories(notify)
    await notify.identify("ada", email="ada@example.com")

    # Everything off ("*" on both), then marketing email back on: the specific choice wins.
    await set_preference(notify, "ada", category="*", channel="*", enabled=False)
    off = await send(notify, template="promo", recipient="ada", data={"name": "Ada"})
    assert off["status"] == "skipped"
    await set_preference(notify, "ada", category="marketing", channel="email", enabled=True)
    on = await send(notify, template="promo", recipient="ada", data={"name": "Ada"})
    assert on["status"] == "queued"

    # The address is then suppressed: the waiting promo is not sent, the critical reset is.
    answer = await notify.call(
        "POST", "/suppressions", json={"address": "ada@example.com", "reason": "unsubscribe"}
    )
    assert answer.status_code == 201, answer.text
    reset = await send(notify, template="password-reset", recipient="ada", data={"name": "Ada"})
    assert (reset["status"], reset["critical"]) == ("queued", True)
    assert await notify.deliver_own() == 2

    assert (await notify.message(on["id"]))["status"] == "suppressed"
    [mail] = notify.smtp.messages
    message = parse(mail.data)
    assert message["Subject"] == "password-reset"
    assert message["List-Unsubscribe"] is None
    assert message["List-Unsubscribe-Post"] is None
    text = message.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "unsubscribe" not in text.lower()
    assert (await notify.message(reset["id"]))["status"] == "sent"


async def test_a_preference_changed_after_the_send_was_accepted_is_honoured_at_delivery(
    notify: Notify,
) -> None:
    await setup_categories(notify)
    await notify.identify("ada", email="ada@example.com")
    accepted = await send(notify, template="promo", recipient="ada", data={"name": "Ada"})
    assert accepted["status"] == "queued"

    await set_preference(notify, "ada", category="marketing", channel="email", enabled=False)
    assert await notify.deliver_own() == 1

    assert notify.smtp.messages == []
    final = await notify.message(accepted["id"])
    assert final["status"] == "skipped"
    assert final["events"][-1]["detail"] == {"reason": "opted out"}
    # A later change back does not resurrect it: a skipped message stays skipped.
    await set_preference(notify, "ada", category="marketing", channel="email", enabled=True)
    assert await notify.deliver_own() == 0
    assert notify.smtp.messages == []


async def stored(notify: Notify, message_id: str) -> tuple[str | None, Any]:
    async with notify.context.database.session() as session:
        bind_tenant(session, notify.admin.tenant_id)
        row = (
            await session.execute(
                select(NotifyMessage.address, NotifyMessage.data).where(
                    NotifyMessage.id == message_id
                )
            )
        ).one()
        return row.address, row.data


async def test_erasure_keeps_status_history_and_the_suppression_but_no_personal_data(
    notify: Notify,
) -> None:
    await notify.identify("ada", email="ada@example.com", traits={"plan": "pro"})
    await set_preference(notify, "ada", category="onboarding", channel="sms", enabled=False)
    sent = await send(notify, template="welcome", recipient="ada", data={"name": "Ada"})
    await notify.deliver()
    later = await send(
        notify,
        template="welcome",
        recipient="ada",
        data={"name": "Ada"},
        send_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    )
    # Ada unsubscribes with the link of the email she received.
    [mail] = notify.smtp.messages
    url = urlsplit(str(parse(mail.data)["List-Unsubscribe"]).strip().strip("<>"))
    answer = await notify.client.post(url.path, content=b"List-Unsubscribe=One-Click")
    assert answer.status_code == 200

    assert (await notify.call("DELETE", "/recipients/ada")).status_code == 204

    assert (await notify.call("GET", "/recipients/ada")).status_code == 404
    assert (await notify.call("GET", "/recipients/ada/preferences")).status_code == 404
    assert (await notify.call("GET", "/messages", params={"recipient": "ada"})).json() == {
        "messages": []
    }
    # The message keeps its status history (what happened, when), not who it went to.
    history = await notify.message(sent["id"])
    assert [event["status"] for event in history["events"]] == ["queued", "sent", "unsubscribed"]
    assert "ada@example.com" not in str(history)
    assert await stored(notify, sent["id"]) == (None, None)
    assert await stored(notify, later["id"]) == (None, None)

    # The message that was still waiting is never sent: its data is gone.
    await notify.let_time_pass(until=datetime.now(UTC) + timedelta(hours=2))
    await notify.deliver()
    assert len(notify.smtp.messages) == 1
    assert (await notify.message(later["id"]))["status"] == "failed"

    # The suppression outlives the profile: an unsubscribe is the address owner's standing
    # instruction (and the law's, for email), and an erasure request must not undo it — the
    # next service that identifies the same address would otherwise mail it again.
    [suppressed] = (await notify.call("GET", "/suppressions")).json()["suppressions"]
    assert (suppressed["address"], suppressed["reason"]) == ("ada@example.com", "unsubscribe")
    await notify.identify("ada", email="ada@example.com")
    again = await send(notify, template="welcome", recipient="ada", data={"name": "Ada"})
    assert again["status"] == "suppressed"
    assert (await notify.call("DELETE", "/recipients/nobody")).status_code == 404


async def test_a_suppressed_address_is_suppressed_whatever_the_case_of_its_letters(
    notify: Notify,
) -> None:
    """Mailbox providers treat ``Ada@example.com`` and ``ada@example.com`` as one inbox, so a
    suppression of one must hold for the other: erring towards not sending is the safe side
    of the invariant."""
    answer = await notify.call("POST", "/suppressions", json={"address": "Ada@Example.com"})
    assert answer.status_code == 201, answer.text
    for address in ("ada@example.com", "ADA@example.com", "Ada@EXAMPLE.COM"):
        sent = await send(notify, template="welcome", to=address, data={"name": "Ada"})
        assert sent["status"] == "suppressed", address
    await notify.identify("ada", email="aDa@example.com")
    assert (await send(notify, template="welcome", recipient="ada", data={"name": "A"}))[
        "status"
    ] == "suppressed"
    assert await notify.deliver_own() == 0
    assert notify.smtp.messages == []

    # Removing the suppression, in any case, lets mail through again.
    answer = await notify.call("DELETE", "/suppressions/email/ADA@example.com")
    assert answer.status_code == 204, answer.text
    await send(notify, template="welcome", to="Ada@example.com", data={"name": "Ada"})
    assert await notify.deliver_own() == 1
    assert len(notify.smtp.messages) == 1
