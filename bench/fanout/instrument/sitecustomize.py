"""Bench-only instrumentation of the Tidings server process, loaded by Python at start-up
when this directory is on PYTHONPATH (run.py --gc-log). Nothing happens unless the
variables below are set; src/ is not touched.

BENCH_GC_LOG=path        log cyclic-GC collections of generation >= 1 (or >= 5 ms):
                         monotonic time, generation, duration ms, objects collected
BENCH_GC_SAMPLE=seconds  also log, every so often, the number of GC-tracked objects
                         (len(gc.get_objects()); costs a few ms each: diagnostics only)
BENCH_GC_TYPES=1         with BENCH_GC_SAMPLE: also log the 60 most common tracked types
BENCH_GC_FREEZE=seconds  experiment: gc.freeze() every so often, moving every live object
                         to the permanent generation (what a server could do after start-up
                         / after connections settle); measures how much of the tail is GC
"""

import os

_path = os.environ.get("BENCH_GC_LOG")
if _path:
    import gc
    import threading
    import time

    _fh = open(_path, "a", buffering=1)
    _t0 = [0.0]

    def _cb(phase, info):
        if phase == "start":
            _t0[0] = time.perf_counter()
        else:
            dt = (time.perf_counter() - _t0[0]) * 1000
            if info["generation"] >= 1 or dt >= 5:
                _fh.write(
                    f"{time.monotonic():.3f} gen={info['generation']} ms={dt:.1f} "
                    f"collected={info['collected']}\n"
                )

    gc.callbacks.append(_cb)

    _sample = float(os.environ.get("BENCH_GC_SAMPLE") or 0)
    _freeze = float(os.environ.get("BENCH_GC_FREEZE") or 0)

    def _loop():
        last_s = last_f = time.monotonic()
        while True:
            time.sleep(0.5)
            now = time.monotonic()
            if _sample and now - last_s >= _sample:
                last_s = now
                objs = gc.get_objects()
                _fh.write(
                    f"{now:.3f} tracked={len(objs)} "
                    f"frozen={gc.get_freeze_count()} count={gc.get_count()}\n"
                )
                if os.environ.get("BENCH_GC_TYPES"):
                    import collections
                    import json

                    c = collections.Counter(
                        f"{type(o).__module__}.{type(o).__qualname__}" for o in objs
                    )
                    _fh.write("types " + json.dumps(dict(c.most_common(60))) + "\n")
                del objs
            if _freeze and now - last_f >= _freeze:
                last_f = now
                gc.freeze()
                _fh.write(f"{now:.3f} freeze frozen={gc.get_freeze_count()}\n")

    if _sample or _freeze:
        threading.Thread(target=_loop, name="bench-gc", daemon=True).start()
