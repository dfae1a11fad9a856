"""The addon for the benchmark's mitmdump processes: `-s benchmarks/addon_entry.py`.

The same addon object as `mitmdump -s exporter/addon.py`, imported as a module. mitmdump watches a
script file and reloads it when it changes; loading it through this file keeps an edit of
exporter/addon.py during a run from restarting the addon (and its counters) halfway.
"""

from exporter.addon import addons

__all__ = ["addons"]
