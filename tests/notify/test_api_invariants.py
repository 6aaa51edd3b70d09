"""The notification service's safety invariant, checked against sequences of calls, on SQLite
and PostgreSQL:

    **Nothing non-critical reaches a suppressed address or an opted-out recipient.**

A message is *allowed* when it is delivered if it is critical, or if at that moment its
address is not on the suppression list (for every category, or for the message's) and its
recipient (when it has one) has not turned the category off on email — the most specific
preference winning (category over ``*``, channel over ``*``). A message whose recipient was
erased is never delivered. And, the other way round, a critical message to an address always
arrives at the next delivery.

A seeded random sequence of identify / set preference / suppress / unsuppress / erase / send
/ deliver calls runs through the API against a model of what should hold; after each
deliver, every email the SMTP server received since is checked against the model at that
moment. A send's status at acceptance is checked against the model too. A failure names
the seed and the step.
"""

from __future__ import annotations

import email
import random
from dataclasses import dataclass, field
from email.policy import default

from tests.notify.conftest import Notify

#: A sequence that reaches every outcome (the test's last assertion says so): sends accepted,
#: suppressed and skipped, mail arriving, and mail held back at delivery by a change made
#: after its send was accepted. Another seed is another sequence.
SEED = 2
STEPS = 60
ADDRESSES = [f"user{n}@example.com" for n in range(6)]
RECIPIENTS = ["r0", "r1", "r2"]
EVERY = "*"


@dataclass
class Sent:
    recipient: str | None
    address: str
    critical: bool


@dataclass
class Model:
    """What the invariant says should hold, kept beside the real service."""

    emails: dict[str, str] = field(default_factory=dict)
    preferences: dict[tuple[str, str, str], bool] = field(default_factory=dict)
    #: address → the category it is suppressed for (``None``: every category).
    suppressed: dict[str, str | None] = field(default_factory=dict)
    waiting: dict[str, Sent] = field(default_factory=dict)

    def opted_out(self, recipient: str) -> bool:
        for category in ("marketing", EVERY):
            for channel in ("email", EVERY):
                chosen = self.preferences.get((recipient, category, channel))
                if chosen is not None:
                    return not chosen
        return False

    def allowed(self, message: Sent) -> bool:
        if message.critical:
            return True
        if message.address in self.suppressed and self.suppressed[message.address] in (
            None,
            "marketing",
        ):
            return False
        return not (message.recipient is not None and self.opted_out(message.recipient))


async def setup(notify: Notify) -> None:
    for name, critical in (("marketing", False), ("security", True)):
        answer = await notify.call("PUT", f"/categories/{name}", json={"critical": critical})
        assert answer.status_code == 201, answer.text
    for name, category in (("promo", "marketing"), ("reset", "security")):
        await notify.publish(
            name,
            {
                "default_locale": "en",
                "locales": {"en": {"subject": name, "text": "{{ n }}"}},
                "sample_data": {"n": 0},
            },
            category=category,
        )


async def test_nothing_non_critical_reaches_a_suppressed_address_or_an_opted_out_recipient(
    notify: Notify,
) -> None:
    await setup(notify)
    rng = random.Random(SEED)
    model = Model()
    seen = 0
    explored: set[str] = set()
    for recipient, address in zip(RECIPIENTS, ADDRESSES, strict=False):
        await notify.identify(recipient, email=address)
        model.emails[recipient] = address
    operations = [
        *("identify", "erase", "unsuppress"),
        *("prefer", "suppress", "deliver") * 2,
        *("send",) * 4,
    ]
    for step in range(STEPS):
        operation = "deliver" if step == STEPS - 1 else rng.choice(operations)
        where = f"seed {SEED}, step {step} ({operation})"
        recipient = rng.choice(RECIPIENTS)
        if operation == "identify":
            address = rng.choice(ADDRESSES)
            await notify.identify(recipient, email=address)
            model.emails[recipient] = address
        elif operation == "prefer" and recipient in model.emails:
            category = rng.choice(["marketing", "marketing", EVERY, "security"])
            channel = rng.choice(["email", "email", EVERY, "sms"])
            enabled = rng.random() < 0.4
            answer = await notify.call(
                "PUT",
                f"/recipients/{recipient}/preferences",
                json={
                    "preferences": [{"category": category, "channel": channel, "enabled": enabled}]
                },
            )
            assert answer.status_code == 200, f"{where}: {answer.text}"
            model.preferences[(recipient, category, channel)] = enabled
        elif operation == "suppress":
            address = rng.choice(ADDRESSES)
            scope = rng.choice([None, "marketing", "security"])
            answer = await notify.call(
                "POST", "/suppressions", json={"address": address, "category": scope}
            )
            assert answer.status_code in (200, 201), f"{where}: {answer.text}"
            if address not in model.suppressed or scope is None:
                model.suppressed[address] = scope
        elif operation == "unsuppress" and model.suppressed:
            address = rng.choice(sorted(model.suppressed))
            answer = await notify.call("DELETE", f"/suppressions/email/{address}")
            assert answer.status_code == 204, f"{where}: {answer.text}"
            del model.suppressed[address]
        elif operation == "erase" and recipient in model.emails:
            answer = await notify.call("DELETE", f"/recipients/{recipient}")
            assert answer.status_code == 204, f"{where}: {answer.text}"
            del model.emails[recipient]
            model.preferences = {k: v for k, v in model.preferences.items() if k[0] != recipient}
            # Its waiting messages lost their address and data: none may arrive.
            model.waiting = {
                id_: sent for id_, sent in model.waiting.items() if sent.recipient != recipient
            }
        elif operation == "send":
            critical = rng.random() < 0.25
            by_address = rng.random() < 0.2 or recipient not in model.emails
            target = rng.choice(ADDRESSES) if by_address else model.emails[recipient]
            body = {"template": "reset" if critical else "promo", "data": {"n": step}}
            body |= {"to": target} if by_address else {"recipient": recipient}
            answer = await notify.send(**body)
            assert answer.status_code == 202, f"{where}: {answer.text}"
            sent = Sent(None if by_address else recipient, target, critical)
            status = answer.json()["status"]
            # Checked at acceptance too: a send refused then never waits.
            assert (status == "queued") == model.allowed(sent), f"{where}: {status}"
            explored.add(f"accepted {status}")
            if status == "queued":
                model.waiting[answer.json()["id"]] = sent
        elif operation == "deliver":
            await notify.deliver()
            arrived = notify.smtp.messages[seen:]
            seen = len(notify.smtp.messages)
            arrived_ids = set()
            for mail in arrived:
                message_id = (
                    str(email.message_from_bytes(mail.data, policy=default)["Message-ID"])
                    .strip("<>")
                    .split("@")[0]
                )
                assert message_id in model.waiting, f"{where}: {message_id} was not waiting"
                sent = model.waiting[message_id]
                assert mail.rcpt_tos == (sent.address,), where
                assert model.allowed(sent), f"{where}: {sent} reached {sent.address}"
                arrived_ids.add(message_id)
                explored.add("critical arrived" if sent.critical else "arrived")
            for message_id, sent in model.waiting.items():
                if message_id not in arrived_ids:
                    assert not model.allowed(sent), f"{where}: allowed {sent} did not arrive"
                    explored.add("held at delivery")
            model.waiting = {}
    assert explored >= {
        "accepted queued",
        "accepted suppressed",
        "accepted skipped",
        "arrived",
        "critical arrived",
        "held at delivery",
    }, f"seed {SEED} explored too little: {explored}"
