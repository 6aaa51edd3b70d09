"""Template versions through the API, on SQLite and PostgreSQL: the published version is the
one sends use, a rollback chooses an earlier one, versions never change, and a preview
renders any version with its sample data or the caller's."""

from __future__ import annotations

import email
from email.policy import default
from typing import Any

from tests.notify.conftest import Notify


def version(subject: str, sample_name: str = "Ada") -> dict[str, Any]:
    return {
        "default_locale": "en",
        "locales": {
            "en": {"subject": subject, "text": "Hi {{ name }}", "html": "<p>{{ name }}</p>"}
        },
        "sample_data": {"name": sample_name},
    }


async def delivered_subject(notify: Notify, name: str) -> tuple[str, int]:
    """Send ``notify`` to one address, deliver, and read the subject that arrived, with the
    version the message recorded."""
    answer = await notify.send(template="news", to="ada@example.com", data={"name": name})
    assert answer.status_code == 202, answer.text
    await notify.deliver()
    mail = email.message_from_bytes(notify.smtp.messages[-1].data, policy=default)
    return str(mail["Subject"]), answer.json()["template_version"]


async def test_sends_use_the_published_version_and_a_rollback_chooses_an_earlier_one(
    notify: Notify,
) -> None:
    first = await notify.publish("news", version("v1 for {{ name }}"), note="first")
    second = await notify.publish("news", version("v2 for {{ name }}"), note="second")
    assert (first["number"], second["number"]) == (1, 2)

    assert await delivered_subject(notify, "Ada") == ("v2 for Ada", 2)

    answer = await notify.call("POST", "/templates/news/rollback", json={"version": 1})
    assert answer.status_code == 200, answer.text
    template = answer.json()
    assert (template["published_version"], template["latest_version"]) == (1, 2)
    assert await delivered_subject(notify, "Bob") == ("v1 for Bob", 1)

    # A new publish after a rollback is version 3, and published at once.
    await notify.publish("news", version("v3 for {{ name }}"))
    assert await delivered_subject(notify, "Cy") == ("v3 for Cy", 3)

    missing = await notify.call("POST", "/templates/news/rollback", json={"version": 9})
    assert missing.status_code == 404
    assert (await notify.call("GET", "/templates/news")).json()["published_version"] == 3


async def test_versions_are_immutable(notify: Notify) -> None:
    published = await notify.publish("news", version("v1 for {{ name }}"), note="first")
    await notify.publish("news", version("v2 for {{ name }}", sample_name="Bob"), note="second")
    await notify.call("POST", "/templates/news/rollback", json={"version": 1})

    answer = await notify.call("GET", "/templates/news/versions/1")
    assert answer.status_code == 200
    assert answer.json() == published
    assert answer.json()["content"]["locales"]["en"]["subject"] == "v1 for {{ name }}"
    # There is no way to write a version: only publish (a new number) and rollback.
    for method in ("PUT", "PATCH", "DELETE"):
        changed = await notify.call(method, "/templates/news/versions/1", json=version("edited"))
        assert changed.status_code == 405, method
    assert (await notify.call("GET", "/templates/news/versions/1")).json() == published


async def test_a_preview_renders_sample_data_or_given_data_of_any_version(notify: Notify) -> None:
    await notify.publish("news", version("v1 for {{ name }}", sample_name="Sample"))
    await notify.publish("news", version("v2 for {{ name }}", sample_name="Sample"))

    async def preview(**body: Any) -> dict[str, Any]:
        answer = await notify.call("POST", "/templates/news/preview", json=body)
        assert answer.status_code == 200, answer.text
        document: dict[str, Any] = answer.json()
        return document

    sample = await preview()
    assert (sample["subject"], sample["text"], sample["locale"]) == (
        "v2 for Sample",
        "Hi Sample",
        "en",
    )
    given = await preview(data={"name": "<b>Ada</b>"})
    assert given["subject"] == "v2 for <b>Ada</b>"
    assert "<p>&lt;b&gt;Ada&lt;/b&gt;</p>" in given["html"]  # autoescaped
    assert "<b>" not in given["html"]
    assert (await preview(version=1, data={"name": "Ada"}))["subject"] == "v1 for Ada"
    japanese = await notify.call("POST", "/templates/welcome/preview", json={"locale": "ja"})
    assert japanese.json()["subject"] == "ようこそ Ada"

    # A preview whose data lacks a variable is a 422, not a half-rendered message.
    answer = await notify.call("POST", "/templates/news/preview", json={"data": {}})
    assert answer.status_code == 422
    assert answer.headers["content-type"].startswith("application/problem+json")
    # A preview sends nothing.
    assert await notify.deliver_own() == 0
    assert notify.smtp.messages == []


async def test_a_partial_that_would_break_a_published_message_is_refused_at_publish(
    notify: Notify,
) -> None:
    """A partial renders inside the messages that include it, so its publish is checked the
        way theirs was: each published message that uses it, with its sample data. A partial
        that no longer renders in them is refused (as is a rollback to one), rather than failing
    their sends."""
    for html in ("<p>{{ signature }}</p>", "<p>Bye {{ name }}</p>"):  # versions 1 and 2
        answer = await notify.call(
            "POST",
            "/templates/footer/versions",
            json={"kind": "partial", "content": {"html": html}},
        )
        assert answer.status_code == 201, answer.text
    news = version("News for {{ name }}")
    news["locales"]["en"]["html"] = '<p>{{ name }}</p>{% include "partials/footer" %}'
    await notify.publish("news", news)

    for broken in ("<p>{{ unsubscribe_link }}</p>", "{{ ''.__class__.__mro__ }}"):
        answer = await notify.call(
            "POST",
            "/templates/footer/versions",
            json={"kind": "partial", "content": {"html": broken}},
        )
        assert answer.status_code == 422, broken
        assert "news" in answer.json()["detail"]
    # A rollback of the partial to a version news does not render with is refused too.
    answer = await notify.call("POST", "/templates/footer/rollback", json={"version": 1})
    assert answer.status_code == 422, answer.text
    footer = (await notify.call("GET", "/templates/footer")).json()
    assert (footer["latest_version"], footer["published_version"]) == (2, 2)

    sent = await notify.send(template="news", to="ada@example.com", data={"name": "Ada"})
    assert sent.status_code == 202, sent.text
    await notify.deliver()
    mail = email.message_from_bytes(notify.smtp.messages[0].data, policy=default)
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert "<p>Bye Ada</p>" in html
