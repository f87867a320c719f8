"""axiswatch evaluation suite: drift by domain and capping through the live service,
persona jailbreaks, capability under capping, per-token vs per-turn alerting.

Run everything with ``python -m eval.run`` (``--quick`` for a smoke run); results go to
``eval/results/`` as JSON, PNG and ``summary.md``.
"""
