"""axiswatch's service side. At the top: the engine (turns around a generation backend), sessions,
drift tracking and policy with its one replay, the records, the live-entry format, the HTTP API
(``api``), settings and the wiring (``service``, which ``serve`` and the vLLM plugin both start
through). Subpackages: ``backends`` (who runs the model: the interface, ``hf`` and ``vllm``),
``streams`` (the only code that touches Redis), ``store`` (the only code that touches the database),
``workers`` (persistence, alerts, webhooks, dead letters, shadow mode, recovery) and ``cli`` (the
command line).

Nothing is imported here: the pure modules (``monitor.drift``, ``monitor.replay``, ``monitor.records``,
``monitor.conversation``, ``monitor.live``) load no database, Redis, HTTP or webhook library.
"""
