"""The broadcast interface: the same contract in-process and through Redis, plus reconnects."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis.asyncio as redis

from keel.core.broadcast import Broadcast, MessagesLost, Subscription
from keel.core.broadcast_redis import RedisBroadcast
from tests.support.tcpproxy import tcp_proxy

TIMEOUT = 5.0


def new_channel() -> str:
    # Redis pub/sub is server-wide: every test gets channels no other run uses.
    return f"test:{uuid.uuid4().hex}"


async def next_data(subscription: Subscription) -> dict[str, Any]:
    return (await subscription.get(timeout=TIMEOUT)).data


class TestSharedContract:
    """Runs on InMemoryBroadcast and RedisBroadcast alike."""

    async def test_every_subscriber_of_a_channel_receives_each_event(
        self, broadcast: Broadcast
    ) -> None:
        channel = new_channel()
        async with contextlib.AsyncExitStack() as stack:
            subscriptions = [
                await stack.enter_async_context(broadcast.subscribe(channel)) for _ in range(3)
            ]
            await broadcast.publish(channel, {"n": 1})
            for subscription in subscriptions:
                event = await subscription.get(timeout=TIMEOUT)
                assert event.channel == channel
                assert event.data == {"n": 1}

    async def test_subscriber_receives_nothing_published_on_another_channel(
        self, broadcast: Broadcast
    ) -> None:
        mine, other = new_channel(), new_channel()
        async with broadcast.subscribe(mine) as subscription, broadcast.subscribe(other) as peer:
            await broadcast.publish(other, {"for": "other"})
            await broadcast.publish(mine, {"for": "mine"})
            assert await next_data(peer) == {"for": "other"}
            # Had the other channel's event leaked here, it would come first.
            assert await next_data(subscription) == {"for": "mine"}

    async def test_events_arrive_in_publish_order(self, broadcast: Broadcast) -> None:
        channel = new_channel()
        async with broadcast.subscribe(channel) as subscription:
            for n in range(50):
                await broadcast.publish(channel, {"n": n})
            received = [(await next_data(subscription))["n"] for _ in range(50)]
        assert received == list(range(50))

    async def test_unsubscribed_subscriber_receives_no_more_events(
        self, broadcast: Broadcast
    ) -> None:
        channel = new_channel()
        async with broadcast.subscribe(channel) as staying:
            async with broadcast.subscribe(channel) as leaving:
                await broadcast.publish(channel, {"n": 1})
                assert await next_data(leaving) == {"n": 1}
            assert broadcast.subscriber_count == 1
            await broadcast.publish(channel, {"n": 2})
            assert await next_data(staying) == {"n": 1}
            assert await next_data(staying) == {"n": 2}
            # Both subscriptions were fed by the same dispatch: had `leaving` still been
            # registered, event 2 would be in its queue by now.
            with pytest.raises(TimeoutError):
                await leaving.get(timeout=0.05)
        assert broadcast.subscriber_count == 0

    async def test_data_round_trips_as_json(self, broadcast: Broadcast) -> None:
        channel = new_channel()
        data = {
            "flag": "checkout-ü",
            "version": 7,
            "ratio": 0.25,
            "enabled": True,
            "nothing": None,
            "rules": [{"attribute": "country", "in": ["DE", "FR"]}],
        }
        async with broadcast.subscribe(channel) as subscription:
            await broadcast.publish(channel, data)
            data["version"] = 8  # mutating after publish must not reach the subscriber
            received = await next_data(subscription)
        assert received["version"] == 7
        assert received == {**data, "version": 7}

    async def test_data_that_is_not_json_is_refused_at_publish(self, broadcast: Broadcast) -> None:
        with pytest.raises(TypeError):
            await broadcast.publish(new_channel(), {"when": object()})

    async def test_slow_subscriber_gets_messages_lost_then_continues_with_new_events(
        self, broadcast: Broadcast
    ) -> None:
        channel = new_channel()
        async with (
            broadcast.subscribe(channel) as fast,
            broadcast.subscribe(channel, queue_size=2) as slow,
        ):
            for n in range(10):
                await broadcast.publish(channel, {"n": n})
            # The fast subscriber is unaffected by the slow one.
            assert [(await next_data(fast))["n"] for _ in range(10)] == list(range(10))

            with pytest.raises(MessagesLost):
                await slow.get(timeout=TIMEOUT)

            await broadcast.publish(channel, {"n": "after"})
            later = []
            async for event in slow:
                later.append(event.data["n"])
                if event.data["n"] == "after":
                    break
            # After the loss signal: at most some of the newest events, in order, then the new one.
            assert later[-1] == "after"
            kept = later[:-1]
            assert kept == sorted(kept)
            assert set(kept) <= set(range(10))
            assert len(kept) < 2


class TestRedis:
    """What only the Redis broadcast promises: several replicas, and surviving a dropped line."""

    async def test_event_published_on_one_replica_reaches_subscribers_of_another(
        self, redis_url: str
    ) -> None:
        channel = new_channel()
        publisher, subscriber = RedisBroadcast(redis_url), RedisBroadcast(redis_url)
        await publisher.connect()
        await subscriber.connect()
        try:
            async with (
                subscriber.subscribe(channel) as remote,
                publisher.subscribe(channel) as local,
            ):
                await publisher.publish(channel, {"from": "replica-1"})
                assert await next_data(remote) == {"from": "replica-1"}
                assert await next_data(local) == {"from": "replica-1"}
        finally:
            await publisher.disconnect()
            await subscriber.disconnect()

    async def test_event_published_on_another_replica_right_after_subscribe_is_delivered(
        self, redis_url: str
    ) -> None:
        # The subscriber's line goes through a proxy, so its SUBSCRIBE reaches Redis later than
        # the publisher's PUBLISH would if subscribe() returned before Redis confirmed it.
        target = urlsplit(redis_url)
        publisher = RedisBroadcast(redis_url)
        async with tcp_proxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
            subscriber = RedisBroadcast(_via(redis_url, proxy.port))
            await subscriber.connect()
            try:
                for n in range(5):
                    channel = new_channel()
                    async with subscriber.subscribe(channel) as subscription:
                        await publisher.publish(channel, {"n": n})
                        assert await next_data(subscription) == {"n": n}
            finally:
                await subscriber.disconnect()
                await publisher.disconnect()

    async def test_last_unsubscribe_leaves_the_redis_channel(self, redis_url: str) -> None:
        channel = new_channel()
        broadcast = RedisBroadcast(redis_url)
        await broadcast.connect()
        observer = redis.Redis.from_url(redis_url)
        try:
            async with broadcast.subscribe(channel), broadcast.subscribe(channel):
                assert await _redis_subscribers(observer, channel) == 1
            # UNSUBSCRIBE is sent, not confirmed: Redis applies it a moment later, and the
            # observer asks on another connection.
            for _ in range(200):  # up to 2 s
                if await _redis_subscribers(observer, channel) == 0:
                    break
                await asyncio.sleep(0.01)
            assert await _redis_subscribers(observer, channel) == 0
        finally:
            await observer.aclose()
            await broadcast.disconnect()

    async def test_subscribers_get_messages_lost_after_a_cut_then_new_events_again(
        self, redis_url: str
    ) -> None:
        target = urlsplit(redis_url)
        channel = new_channel()
        publisher = RedisBroadcast(redis_url)
        async with tcp_proxy(target.hostname or "127.0.0.1", target.port or 6379) as proxy:
            subscriber = RedisBroadcast(_via(redis_url, proxy.port), reconnect_delay=0.05)
            await subscriber.connect()
            try:
                async with subscriber.subscribe(channel) as subscription:
                    await publisher.publish(channel, {"n": "before"})
                    assert await next_data(subscription) == {"n": "before"}

                    await proxy.cut()
                    with pytest.raises(MessagesLost):
                        await subscription.get(timeout=TIMEOUT)
                    # Published while the line is down: lost, which MessagesLost announced.
                    await publisher.publish(channel, {"n": "during"})
                    # Let several reconnect attempts fail before the line comes back.
                    await asyncio.sleep(0.3)
                    await proxy.restore()

                    received = await _publish_until_received(publisher, channel, subscription)
                    assert received["n"].startswith("after-")
            finally:
                await subscriber.disconnect()
                await publisher.disconnect()


def _via(redis_url: str, port: int) -> str:
    """``redis_url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(redis_url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{port}" if credentials else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def _redis_subscribers(client: redis.Redis, channel: str) -> int:
    counts = await client.pubsub_numsub(RedisBroadcast.PREFIX + channel)
    return int(counts[0][1])


async def _publish_until_received(
    publisher: Broadcast, channel: str, subscription: Subscription
) -> dict[str, Any]:
    """Publish until the subscriber is back on the line; the first event it gets is returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    attempt = 0
    while loop.time() < deadline:
        await publisher.publish(channel, {"n": f"after-{attempt}"})
        attempt += 1
        with contextlib.suppress(TimeoutError):
            return (await subscription.get(timeout=0.2)).data
    raise AssertionError("the subscriber never received an event after the line came back")
