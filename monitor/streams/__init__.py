"""Redis, and the only package that touches it: the stream client (:class:`Streams`: keys,
payloads, groups, trimming, lag, the live tail and every other key the service keeps in Redis),
the outbox that buffers records while Redis is down, the embedded ``redis-server`` used when no
``REDIS_URL`` is given, and the live-entry format that the engine writes and recovery and the
dashboard read."""

from monitor.streams.client import REDIS_DOWN, UNREACHABLE, Entry, ResponseError, Streams

__all__ = ["REDIS_DOWN", "UNREACHABLE", "Entry", "ResponseError", "Streams"]
