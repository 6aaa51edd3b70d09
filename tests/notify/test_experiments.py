"""A/B tests of a template through a flags experiment, on SQLite and PostgreSQL: each recipient
receives the version the flag serves them, always the same one; the flags service's
experiment results count the exposures per variation and the first open and click of each
message as conversions (``notify.open``, ``notify.click``) of the right variation; a flag
whose variations are not the template's versions is refused; an experiment that is off,
stopped or bypassed (a test send) sends the published version and counts nothing."""

from __future__ import annotations

import email
from collections import Counter
from email.message import EmailMessage
from email.policy import default
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select

from keel.core.tenancy import bind_tenant
from keel.flags.models import ExperimentEvent
from tests.notify.conftest import WELCOME, Notify
from tests.support.flags_api import API as FLAGS
from tests.support.flags_api import new_environment, new_flag, put_state

FLAG = "welcome-subject"
#: Version 2 of ``welcome`` greets differently: the subject tells the versions apart.
WELCOME_V2 = {
    **WELCOME,
    "locales": {
        "en": {
            "subject": "Hello there, {{ name }}",
            "html": "<html><body><p>Hello {{ name }}</p>"
            '<p><a href="https://acme.example/tour">Tour</a></p></body></html>',
            "text": "Hello {{ name }}",
        }
    },
}
SUBJECT_OF = {"Welcome, ": 1, "Hello there, ": 2}
VARIATIONS = [{"id": "v1", "value": 1}, {"id": "v2", "value": 2}]
FIFTY_FIFTY = {
    "rollout": {
        "variations": [
            {"variation": "v1", "weight": 50_000},
            {"variation": "v2", "weight": 50_000},
        ]
    }
}


def version_of_subject(subject: str) -> int:
    [number] = [number for prefix, number in SUBJECT_OF.items() if subject.startswith(prefix)]
    return number


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=default)
    assert isinstance(message, EmailMessage)
    return message


def links(message: EmailMessage) -> tuple[str, str]:
    """The open pixel's and the first tracked link's paths."""
    html = {part.get_content_type(): part.get_content() for part in message.iter_parts()}[
        "text/html"
    ]
    pixel = html.split('<img src="')[1].split('"')[0].replace("&amp;", "&")
    click = html.split('<a href="')[1].split('"')[0].replace("&amp;", "&")
    return path_of(pixel), path_of(click)


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def experiment(notify: Notify, state: dict[str, Any] | None = None) -> str:
    """Versions 1 and 2 of ``welcome``, a 50/50 experiment flag serving them, set on it."""
    await notify.publish("welcome", WELCOME_V2, note="the friendlier subject")
    env = await new_environment(notify.client, notify.headers)
    await new_flag(
        notify.client, notify.headers, FLAG, type="number", variations=VARIATIONS, experiment=True
    )
    written = await put_state(
        notify.client, notify.headers, env, FLAG, state or {"on": True, "fallthrough": FIFTY_FIFTY}
    )
    assert written.status_code == 200, written.text
    answer = await notify.call(
        "PUT", "/templates/welcome/experiment", json={"flag": FLAG, "environment": env}
    )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["experiment_flag"], answer.json()["experiment_environment"]) == (
        FLAG,
        env,
    )
    return env


async def flag_assigns(notify: Notify, env: str, keys: list[str]) -> dict[str, str]:
    """The variation the flags service's own evaluation serves each key."""
    answer = await notify.client.post(
        f"{FLAGS}/evaluate",
        headers=notify.headers,
        json={"environment": env, "contexts": [{"key": key} for key in keys], "flags": [FLAG]},
    )
    assert answer.status_code == 200, answer.text
    return {
        key: result[FLAG]["variation"]
        for key, result in zip(keys, answer.json()["results"], strict=True)
    }


async def results(notify: Notify, env: str, event: str) -> dict[str, tuple[int, int]]:
    answer = await notify.client.get(
        f"{FLAGS}/envs/{env}/flags/{FLAG}/results", params={"event": event}, headers=notify.headers
    )
    assert answer.status_code == 200, answer.text
    return {
        row["variation"]: (row["exposures"], row["conversions"])
        for row in answer.json()["variations"]
    }


async def tracked_events(notify: Notify, name: str) -> int:
    async with notify.context.database.session() as session:
        bind_tenant(session, notify.admin.tenant_id)
        count = await session.scalar(
            select(func.count())
            .select_from(ExperimentEvent)
            .where(ExperimentEvent.kind == "track", ExperimentEvent.event_name == name)
        )
    return int(count or 0)


async def test_each_recipient_receives_the_version_the_flag_serves_and_opens_and_clicks_convert(
    notify: Notify,
) -> None:
    env = await experiment(notify)
    people = [f"user-{number}" for number in range(40)]
    for person in people:
        await notify.identify(person, email=f"{person}@example.com")
    assigned = await flag_assigns(notify, env, people)
    assert set(assigned.values()) == {"v1", "v2"}

    batch = await notify.call(
        "POST",
        "/messages/batch",
        json={
            "template": "welcome",
            "recipients": [{"recipient": person} for person in people],
            "data": {"name": "Ada"},
        },
    )
    assert batch.status_code == 202, batch.text
    await notify.deliver()
    assert len(notify.smtp.messages) == 40
    received: dict[str, EmailMessage] = {}
    for mail in notify.smtp.messages:
        [address] = mail.rcpt_tos
        received[address.split("@")[0]] = parse(mail.data)
    for person in people:
        served = version_of_subject(str(received[person]["Subject"]))
        assert f"v{served}" == assigned[person], person
    listed = await notify.call("GET", "/messages", params={"batch_id": batch.json()["batch_id"]})
    for message in listed.json()["messages"]:
        assert message["variation"] == f"v{message['template_version']}"

    # Sticky: a later single send to each of a few gives them the same version again.
    for person in people[:6]:
        again = await notify.send(template="welcome", recipient=person, data={"name": "Ada"})
        assert again.status_code == 202, again.text
        assert again.json()["variation"] == assigned[person]
        assert again.json()["template_version"] == int(assigned[person][1:])
    await notify.deliver()
    resent = [parse(mail.data) for mail in notify.smtp.messages[40:]]
    assert [f"v{version_of_subject(str(mail['Subject']))}" for mail in resent] == [
        assigned[str(mail["To"]).split("@")[0]] for mail in resent
    ]

    # Exposures: each recipient once, in their variation (a second send exposes nobody new).
    exposed = Counter(assigned.values())
    counted = await results(notify, env, "x")
    exposures = {variation: pair[0] for variation, pair in counted.items()}
    assert exposures == {"v1": exposed["v1"], "v2": exposed["v2"]}

    # The first ten open their mail (some load the pixel three times); four of them click.
    openers, clickers = people[:10], people[:4]
    for person in openers:
        pixel, _ = links(received[person])
        for _ in range(3 if person in clickers else 1):
            loaded = await notify.client.get(pixel)
            assert loaded.status_code == 200
    for person in clickers:
        _, click = links(received[person])
        for _ in range(2):
            followed = await notify.client.get(click)
            assert followed.status_code == 302

    opened = Counter(assigned[person] for person in openers)
    clicked = Counter(assigned[person] for person in clickers)
    assert await results(notify, env, "notify.open") == {
        "v1": (exposed["v1"], opened["v1"]),
        "v2": (exposed["v2"], opened["v2"]),
    }
    assert await results(notify, env, "notify.click") == {
        "v1": (exposed["v1"], clicked["v1"]),
        "v2": (exposed["v2"], clicked["v2"]),
    }
    # Each message's first open and first click only: reloads and second clicks add nothing.
    assert await tracked_events(notify, "notify.open") == len(openers)
    assert await tracked_events(notify, "notify.click") == len(clickers)


async def test_a_flag_whose_variations_are_not_the_templates_versions_is_refused(
    notify: Notify,
) -> None:
    await notify.publish("welcome", WELCOME_V2)
    env = await new_environment(notify.client, notify.headers)
    await new_flag(
        notify.client,
        notify.headers,
        "three-versions",
        type="number",
        variations=[*VARIATIONS, {"id": "v3", "value": 3}],
        experiment=True,
    )
    await new_flag(
        notify.client,
        notify.headers,
        "halves",
        type="number",
        variations=[{"id": "a", "value": 1}, {"id": "b", "value": 1.5}],
        experiment=True,
    )
    await new_flag(notify.client, notify.headers, "plain", type="number", variations=VARIATIONS)
    await notify.publish("frame", {"html": "<div>{{ content }}</div>"}, kind="layout")

    async def put(name: str, body: dict[str, Any]) -> Any:
        return await notify.call("PUT", f"/templates/{name}/experiment", json=body)

    no_version_3 = await put("welcome", {"flag": "three-versions", "environment": env})
    assert no_version_3.status_code == 422
    assert no_version_3.headers["content-type"].startswith("application/problem+json")
    assert "v3" in no_version_3.json()["detail"]
    assert (await put("welcome", {"flag": "halves", "environment": env})).status_code == 422
    assert (await put("welcome", {"flag": "plain", "environment": env})).status_code == 422
    assert (await put("welcome", {"flag": "ghost", "environment": env})).status_code == 422
    assert (await put("welcome", {"flag": "halves", "environment": "nowhere"})).status_code == 422
    assert (await put("frame", {"flag": "three-versions", "environment": env})).status_code == 422
    assert (await put("welcome", {"flag": "", "environment": env})).status_code == 422
    assert (await put("welcome", {"flag": "x", "environment": env, "y": 1})).status_code == 422
    assert (await put("unknown", {"flag": "plain", "environment": env})).status_code == 404

    template = (await notify.call("GET", "/templates/welcome")).json()
    assert (template["experiment_flag"], template["experiment_environment"]) == (None, None)


async def test_off_stopped_and_test_sends_use_the_published_version_and_count_nothing(
    notify: Notify,
) -> None:
    env = await experiment(notify, {"on": False, "off_variation": "v1", "fallthrough": FIFTY_FIFTY})
    await notify.identify("ada", email="ada@example.com")
    off = await notify.send(template="welcome", recipient="ada", data={"name": "Ada"})
    assert (off.json()["template_version"], off.json()["variation"]) == (2, None)

    # On, but the flag serves ada version 1 by a fixed rule: sent, not an exposure.
    pinned = await put_state(
        notify.client,
        notify.headers,
        env,
        FLAG,
        {
            "on": True,
            "targets": [{"variation": "v1", "values": ["ada"]}],
            "fallthrough": FIFTY_FIFTY,
        },
    )
    assert pinned.status_code == 200, pinned.text
    targeted = await notify.send(template="welcome", recipient="ada", data={"name": "Ada"})
    assert (targeted.json()["template_version"], targeted.json()["variation"]) == (1, "v1")

    test_send = await notify.call(
        "POST", "/templates/welcome/test-send", json={"to": "qa@example.com"}
    )
    assert test_send.status_code == 202, test_send.text
    assert (test_send.json()["template_version"], test_send.json()["variation"]) == (2, None)

    stopped = await notify.call("DELETE", "/templates/welcome/experiment")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["experiment_flag"] is None
    after = await notify.send(template="welcome", to="bob@example.com", data={"name": "Bob"})
    assert (after.json()["template_version"], after.json()["variation"]) == (2, None)

    assert await results(notify, env, "notify.open") == {"v1": (0, 0), "v2": (0, 0)}
