"""``keel_client.notify``'s public names are exactly the curated list; the blocking face
offers every call of the async client; what a caller builds is checked where it is built."""

from __future__ import annotations

import inspect

import pytest

import keel_client.notify
from keel_client.notify import BatchRecipient, NotifyClient, SyncNotifyClient

EXPECTED = {
    "DEFAULT_PUSH_TEMPLATE", "PUSH_TEMPLATE_CONTENT", "UNSET", "BatchRecipient", "BatchRef",
    "Channel", "Inbox", "InboxItem", "Message", "MessageDetail", "MessageEvent", "MessageRef",
    "MessageStatus", "NotifyClient", "Preference", "Recipient", "SyncNotifyClient",
    "TemplateVersion", "Unset",
}  # fmt: skip


def test_the_public_names_are_the_curated_list() -> None:
    assert set(keel_client.notify.__all__) == EXPECTED
    for name in EXPECTED:
        assert getattr(keel_client.notify, name) is not None


def test_the_blocking_face_has_every_call_of_the_async_client() -> None:
    calls = {
        name
        for name, member in vars(NotifyClient).items()
        if inspect.iscoroutinefunction(member) and not name.startswith("_") and name != "aclose"
    }
    assert calls <= set(vars(SyncNotifyClient))
    assert "send_email" in calls


def test_a_client_needs_a_url_or_a_shared_pool() -> None:
    with pytest.raises(ValueError, match="base_url"):
        NotifyClient()


def test_a_batch_recipient_has_an_id_or_an_address_not_both() -> None:
    with pytest.raises(ValueError, match="one"):
        BatchRecipient(recipient="user-1", to="a@example.com")
    with pytest.raises(ValueError, match="one"):
        BatchRecipient()
    assert BatchRecipient(to="a@example.com", context={"n": 1}).to_wire() == {
        "to": "a@example.com",
        "data": {"n": 1},
    }
