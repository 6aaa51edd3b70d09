"""Bad input, on SQLite and PostgreSQL: every refusal is an ``application/problem+json`` 4xx,
and a refused request leaves nothing behind — no template version, no message, no delivery
job, no email."""

from __future__ import annotations

from typing import Any, cast

import httpx

from tests.notify.conftest import WELCOME, Notify

PROBLEM = "application/problem+json"


def assert_problem(answer: httpx.Response, status: int, case: str) -> dict[str, Any]:
    assert answer.status_code == status, f"{case}: {answer.status_code} {answer.text}"
    assert answer.headers["content-type"].startswith(PROBLEM), case
    problem: dict[str, Any] = answer.json()
    assert problem["status"] == status, case
    assert "Traceback" not in answer.text, case
    return problem


async def assert_nothing_stored(notify: Notify) -> None:
    listed = await notify.call("GET", "/messages")
    assert listed.json()["messages"] == []
    assert await notify.delivery_jobs() == []
    assert await notify.deliver_own() == 0
    assert notify.smtp.messages == []


def welcome_with(**parts: str) -> dict[str, Any]:
    """The fixture's ``welcome`` content with some English parts replaced."""
    locales = cast("dict[str, dict[str, str]]", WELCOME["locales"])
    english = {**locales["en"], **parts}
    return {**WELCOME, "locales": {"en": english}}


async def test_a_template_that_does_not_render_is_refused_at_publish_and_nothing_published(
    notify: Notify,
) -> None:
    refused = {
        "an undefined variable in its sample data": welcome_with(text="Hi {{ nickname }}"),
        "a sandbox escape": welcome_with(text="{{ ''.__class__.__mro__ }}"),
        "a sandbox escape through a method": welcome_with(
            text="{{ name.__class__.__init__.__globals__ }}"
        ),
        "a syntax error": welcome_with(subject="Welcome, {{ name "),
        "an unclosed block": welcome_with(html="{% for x in name %}<p>{{ x }}</p>"),
        "no default locale": {**WELCOME, "default_locale": "fr"},
    }
    for case, content in refused.items():
        answer = await notify.call("POST", "/templates/welcome/versions", json={"content": content})
        problem = assert_problem(answer, 422, case)
        assert "__mro__" not in problem.get("detail", ""), case  # the error names no internals

    template = (await notify.call("GET", "/templates/welcome")).json()
    assert (template["latest_version"], template["published_version"]) == (1, 1)
    assert (await notify.call("GET", "/templates/welcome/versions/2")).status_code == 404

    # A new template that never rendered does not exist at all.
    answer = await notify.call(
        "POST", "/templates/broken/versions", json={"content": welcome_with(text="{{ x.y.z }}")}
    )
    assert_problem(answer, 422, "a new template with an undefined variable")
    assert_problem(await notify.call("GET", "/templates/broken"), 404, "the refused template")


async def test_a_bad_send_is_a_problem_and_nothing_is_stored_or_sent(notify: Notify) -> None:
    await notify.identify("ada", email="ada@example.com")
    welcome = {"template": "welcome", "to": "ada@example.com", "data": {"name": "Ada"}}
    refused: dict[str, tuple[int, dict[str, Any]]] = {
        "data missing a variable": (422, {**welcome, "data": {}}),
        "an invalid email address": (422, {**welcome, "to": "ada@@example"}),
        "an email address without a domain": (422, {**welcome, "to": "ada"}),
        "an invalid phone number": (422, {**welcome, "channel": "sms", "to": "+1 555"}),
        "letters for a phone number": (422, {**welcome, "channel": "sms", "to": "call me"}),
        "an unknown template": (404, {**welcome, "template": "no-such-template"}),
        "a malformed locale": (422, {**welcome, "locale": "en_US!!"}),
        "a locale that is not a tag": (422, {**welcome, "locale": "12"}),
        "a schedule in the past": (422, {**welcome, "send_at": "2020-01-01T00:00:00Z"}),
        "a schedule without an offset": (422, {**welcome, "send_at": "2030-01-01T00:00:00"}),
        "a schedule more than a year ahead": (422, {**welcome, "send_at": "2999-01-01T00:00:00Z"}),
        "both send_at and send_at_local": (
            422,
            {**welcome, "send_at": "2030-01-01T00:00:00Z", "send_at_local": "2030-01-01T09:00"},
        ),
        "oversized data": (413, {**welcome, "data": {"name": "Ada", "blob": "x" * 40_000}}),
        "an unknown channel": (422, {**welcome, "channel": "fax"}),
        "both a recipient and an address": (422, {**welcome, "recipient": "ada"}),
        "neither a recipient nor an address": (422, {"template": "welcome", "data": {}}),
        "an unknown recipient": (404, {**welcome, "to": None, "recipient": "nobody"}),
        "a malformed recipient id": (422, {**welcome, "to": None, "recipient": "a b/c"}),
        "an unknown field": (422, {**welcome, "priority": "high"}),
        "a digest window under a minute": (
            422,
            {**welcome, "digest": {"key": "k", "window_seconds": 1}},
        ),
    }
    for case, (status, body) in refused.items():
        body = {key: value for key, value in body.items() if value is not None}
        assert_problem(await notify.send(**body), status, case)
    await assert_nothing_stored(notify)


async def test_a_well_formed_locale_the_template_lacks_falls_back_to_its_default(
    notify: Notify,
) -> None:
    """Not an error: locales fall back (``fr`` → the default ``en``), as the issue asks."""
    answer = await notify.send(
        template="welcome", to="ada@example.com", data={"name": "Ada"}, locale="fr-CA"
    )
    assert answer.status_code == 202, answer.text
    await notify.deliver()
    [mail] = notify.smtp.messages
    assert b"Subject: Welcome, Ada" in mail.data


async def test_a_batch_with_one_bad_entry_is_refused_whole(notify: Notify) -> None:
    await notify.identify("ada", email="ada@example.com")
    good = [{"to": f"user{n}@example.com", "data": {"name": f"U{n}"}} for n in range(5)]
    refused: dict[str, tuple[int, list[dict[str, Any]]]] = {
        "an unknown recipient": (404, [*good, {"recipient": "nobody", "data": {"name": "X"}}]),
        "an invalid address": (422, [*good, {"to": "not-an-address", "data": {"name": "X"}}]),
        "data missing a variable": (422, [*good, {"to": "x@example.com"}]),
        "an entry with neither recipient nor address": (422, [*good, {"data": {"name": "X"}}]),
    }
    for case, (status, recipients) in refused.items():
        answer = await notify.call(
            "POST", "/messages/batch", json={"template": "welcome", "recipients": recipients}
        )
        problem = assert_problem(answer, status, case)
        assert "Entry 5" in problem["detail"], case  # the caller learns which entry
    assert_problem(
        await notify.call(
            "POST", "/messages/batch", json={"template": "welcome", "recipients": []}
        ),
        422,
        "an empty batch",
    )
    await assert_nothing_stored(notify)


async def test_a_batch_entry_with_oversized_data_is_refused_as_a_single_send_is(
    notify: Notify,
) -> None:
    """The limit on a message's data holds for each message of a batch too: a batch is not
    a way around it."""
    recipients = [
        {"to": "ada@example.com", "data": {"name": "Ada"}},
        {"to": "bob@example.com", "data": {"name": "Bob", "blob": "x" * 40_000}},
    ]
    answer = await notify.call(
        "POST", "/messages/batch", json={"template": "welcome", "recipients": recipients}
    )
    problem = assert_problem(answer, 413, "an entry's oversized data")
    assert "Entry 1" in problem["detail"]
    await assert_nothing_stored(notify)


async def test_a_bad_profile_or_preference_is_a_problem_and_nothing_is_stored(
    notify: Notify,
) -> None:
    refused: dict[str, dict[str, Any]] = {
        "an unknown time zone": {"timezone": "Mars/Olympus_Mons"},
        "a time zone path": {"timezone": "../../etc/passwd"},
        "an empty time zone": {"timezone": ""},
        "quiet hours past midnight's clock": {"quiet_hours": {"start": "25:00", "end": "08:00"}},
        "quiet hours without an end": {"quiet_hours": {"start": "22:00"}},
        "quiet hours of no length": {"quiet_hours": {"start": "08:00", "end": "08:00"}},
        "quiet hours in seconds": {"quiet_hours": {"start": "22:00:00", "end": "08:00"}},
        "an invalid email": {"email": "ada at example.com"},
        "an invalid phone": {"phone": "+999"},
        "a malformed locale": {"locale": "english please"},
        "a push target of no kind": {"push_targets": [{"token": "t"}]},
        "a web push endpoint over http": {
            "push_targets": [
                {"kind": "webpush", "endpoint": "http://push.test/x", "p256dh": "k", "auth": "a"}
            ]
        },
        "an unknown field": {"nickname": "Ada"},
    }
    for case, fields in refused.items():
        assert_problem(await notify.call("PUT", "/recipients/ada", json=fields), 422, case)
    # A NUL in any JSON string is refused before the service sees it (PostgreSQL stores none).
    nul = await notify.call("PUT", "/recipients/ada", json={"timezone": "Asia/Tokyo\x00"})
    assert_problem(nul, 400, "a time zone with a NUL")
    assert_problem(await notify.call("GET", "/recipients/ada"), 404, "the refused profile")
    assert_problem(
        await notify.call("PUT", "/recipients/a%20b", json={"email": "a@example.com"}),
        422,
        "a recipient id with a space",
    )

    await notify.identify("ada", email="ada@example.com")
    choices: dict[str, tuple[int, str, dict[str, Any]]] = {
        "an unknown channel": (422, "ada", {"category": "onboarding", "channel": "fax"}),
        "a malformed category": (422, "ada", {"category": "On Boarding!", "channel": "email"}),
        "an unknown recipient": (404, "nobody", {"category": "onboarding", "channel": "email"}),
    }
    for case, (status, recipient, choice) in choices.items():
        answer = await notify.call(
            "PUT",
            f"/recipients/{recipient}/preferences",
            json={"preferences": [{**choice, "enabled": False}]},
        )
        assert_problem(answer, status, case)
    preferences = await notify.call("GET", "/recipients/ada/preferences")
    assert preferences.json() == {"preferences": []}
