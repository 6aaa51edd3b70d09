"""The notification service's logic, one module per concept. Plain arguments in, plain objects
out; functions take the caller's session and never commit.

- :mod:`.templates`: templates, immutable versions, publish (checked to render), rollback,
  preview;
- :mod:`.recipients`: profiles, preferences, categories, topics, the suppression list,
  erasure;
- :mod:`.providers`: a tenant's providers per channel and email senders;
- :mod:`.messages`: accepting a send or a batch (rows and delivery jobs in one transaction);
- :mod:`.delivery`: the ``notify.deliver`` task on the jobs engine;
- :mod:`.tracking`: unsubscribe tokens, open and click links, the status history;
- :mod:`.policy`: quiet hours, retry backoff, the parts a channel uses.
"""
