"""Redis, and the only package that touches it: the stream client (:class:`Streams`: keys,
payloads, groups, trimming, lag, the live tail and every other key the service keeps in Redis),
the outbox that buffers records while Redis is down and the embedded ``redis-server`` used when no
``REDIS_URL`` is given. What a live entry holds is :mod:`monitor.live` (pure, no Redis)."""

from monitor.streams.client import REDIS_DOWN, UNREACHABLE, Entry, ResponseError, Streams

__all__ = ["REDIS_DOWN", "UNREACHABLE", "Entry", "ResponseError", "Streams"]
