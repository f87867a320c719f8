"""The workers that drain Redis Streams, each in its consumer group: persistence to the store
(:mod:`~monitor.workers.persist`, with recovery of turns cut off by a dead replica,
:mod:`~monitor.workers.recovery`), signed alert webhooks with retries and a dead letter
(:mod:`~monitor.workers.alerts`, :mod:`~monitor.workers.webhooks`,
:mod:`~monitor.workers.dead_letters`) and shadow-mode scoring of other servers' turns
(:mod:`~monitor.workers.shadow`, which loads the model: import it by its own path)."""

from monitor.webhook_config import WebhookConfig
from monitor.workers.alerts import AlertWorker
from monitor.workers.persist import PersistWorker, StreamWorker, consumer_name

__all__ = ["AlertWorker", "PersistWorker", "StreamWorker", "WebhookConfig", "consumer_name"]
