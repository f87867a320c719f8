"""Load time of the bundled default model: first load (dequantise the GGUF) vs cached safetensors.

    .venv/bin/python bench/bench_load.py
"""

from __future__ import annotations

import tempfile
import time

from probes.models import load_model


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        first = load_model("default", cache_dir=d)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        cached = load_model("default", cache_dir=d)
        t_cached = time.perf_counter() - t0
    assert (first.source, cached.source) == ("gguf", "cache")
    print(f"first load (GGUF dequantise + cache write): {t_first:6.2f} s")
    print(f"cached load (safetensors):                  {t_cached:6.2f} s")
    print(f"ratio first/cached:                         {t_first / t_cached:6.1f}x")


if __name__ == "__main__":
    main()
