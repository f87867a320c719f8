"""The service's data side stays free of the model side (the dashboard will read only these)."""

import subprocess
import sys


def test_data_modules_do_not_load_torch():
    code = ("import sys, monitor.store, monitor.streams, monitor.drift, monitor.records, probes.errors; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
