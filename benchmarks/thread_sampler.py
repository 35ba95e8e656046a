"""Where a process's Python threads sit, sampled: a background thread reads ``sys._current_frames()`` every
``interval_s`` and counts each thread's innermost frames (the call a thread is in: a C call that released the
GIL shows as the Python line that made it). A diagnostic for the streaming runner's threads (which one waits, and
in what); the sampler needs the GIL itself, so a thread that holds it in C code is seen only at release points.
Torch-free."""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from typing import Any, Dict, List, Optional


class ThreadSampler:
    def __init__(self, interval_s: float = 0.002, depth: int = 3) -> None:
        self.interval_s, self.depth = interval_s, depth
        self.counts: Dict[str, Counter] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def _frames(self, frame: Any) -> str:
        parts: List[str] = []
        while frame is not None and len(parts) < self.depth:
            code = frame.f_code
            parts.append(f"{code.co_filename.rsplit('/', 1)[-1]}:{code.co_name}:{frame.f_lineno}")
            frame = frame.f_back
        return " < ".join(parts)

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval_s):
            names = {t.ident: t.name for t in threading.enumerate()}
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                name = names.get(ident, "?")
                name = name.split("_")[0] if name.startswith(("rcnn-stream", "ThreadPoolExecutor")) else name
                self.counts.setdefault(name, Counter())[self._frames(frame)] += 1
            self.samples += 1

    def start(self) -> ThreadSampler:
        self._thread = threading.Thread(target=self._run, name="thread-sampler", daemon=True)
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def stop(self, top: int = 12) -> Dict[str, Any]:
        """Per thread name (the runner's pool threads merged by prefix): its ``top`` stacks and their share of the
        samples."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        seconds = time.perf_counter() - self._t0
        out: Dict[str, Any] = {"samples": self.samples, "seconds": round(seconds, 3), "interval_s": self.interval_s}
        threads = {}
        for name, c in sorted(self.counts.items()):
            total = sum(c.values())
            threads[name] = {
                "samples": total,
                "top": [[stack, round(n / max(self.samples, 1), 3)] for stack, n in c.most_common(top)],
            }
        out["threads"] = threads
        return out
