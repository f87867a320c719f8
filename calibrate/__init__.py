"""axiswatch's offline work: everything that fits, calibrates or evaluates an axis, and that nothing
serving a model ever imports (``tests/test_imports.py`` checks).

- ``roles``, ``pipeline``, ``rollouts``: ``compute-axis``, the paper's pipeline (the role set and
  questions, batched rollouts and the mean residual stream over each answer, the axis, PCA and report);
- ``judge``, ``judge_model``: the role-adherence judges (offline boosted trees, lexical, OpenAI);
- ``capability``, ``capping``, ``capping_report``: ``calibrate-capping``, the sweep of capping settings
  on persona adoption and a capability suite graded by code;
- ``conversations``, ``thresholds``, ``alerts``: ``calibrate-alerts``, alert thresholds from benign
  conversations the model answers (``thresholds`` is pure);
- ``steering``: ``evaluate-steering``; ``stats``, ``report``: statistics and plots;
- ``data/``: the role set, questions, hand labels, capability suite, held-out personas and the alert
  calibration conversations.

It builds on the runtime (``probes``: models, hooks, generation, artifacts) and the drift tracker
(``monitor.drift``, ``monitor.replay``), never the other way round.
"""
