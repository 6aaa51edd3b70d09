"""The jobs service: one queue the whole fleet enqueues to and pulls from (issue 18).

So far the engine only (:mod:`keel.jobs.models`, :mod:`keel.jobs.service`); the HTTP
protocol, the SDK worker and the CLI come next.
"""
