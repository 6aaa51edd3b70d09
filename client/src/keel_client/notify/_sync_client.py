"""``SyncNotifyClient``: the blocking face of ``NotifyClient``, on an event loop in a thread.

Each call is :class:`NotifyClient`'s own, run on the face's loop thread:
:func:`~keel_client._service.blocking` turns an async method into a blocking one with the same
parameters (for type checkers too), so the face holds no logic and cannot drift from the
async client; :class:`~keel_client._service.SyncFace` gives the thread, ``with`` and
``close``.
"""

from __future__ import annotations

from keel_client._service import SyncFace, blocking
from keel_client.notify._client import NotifyClient

__all__ = ["SyncNotifyClient"]


class SyncNotifyClient(SyncFace[NotifyClient]):
    """A :class:`NotifyClient` for code without an event loop (Flask, Django, a script):
    the same calls, each blocking until it returns.

    Example::

        with SyncNotifyClient(NotifyClient.from_env()) as notify:
            ref = notify.send_email(to="user@example.com", template="welcome",
                                    context={"name": "John"})
            print(notify.message(ref.id).status)

    ``SyncKeel.notify`` is one on the ``SyncKeel``'s thread and pool.
    """

    thread_name = "keel-notify"

    send = blocking(NotifyClient.send)
    send_email = blocking(NotifyClient.send_email)
    send_sms = blocking(NotifyClient.send_sms)
    send_push = blocking(NotifyClient.send_push)
    send_batch = blocking(NotifyClient.send_batch)
    message = blocking(NotifyClient.message)
    messages = blocking(NotifyClient.messages)
    subscribe = blocking(NotifyClient.subscribe)
    unsubscribe = blocking(NotifyClient.unsubscribe)
    identify = blocking(NotifyClient.identify)
    recipient = blocking(NotifyClient.recipient)
    preferences = blocking(NotifyClient.preferences)
    set_preferences = blocking(NotifyClient.set_preferences)
    inbox = blocking(NotifyClient.inbox)
    mark_read = blocking(NotifyClient.mark_read)
    erase = blocking(NotifyClient.erase)
    publish_template = blocking(NotifyClient.publish_template)
