"""CPU seconds by thread of this process (and of given worker processes) over a stretch of code, from /proc
(Linux): which of a stream's threads use the calling process's cores.

    cpu = ThreadCPU(pids=det_worker_pids)   # snapshot
    ...                                      # the pass
    cpu.stop()  # {"rcnn-gpu-pre": 3.1, "MainThread": 1.2, ..., "ended threads": 0.4, "worker processes": 9.8}

Python threads are named by ``threading`` (a pool's ``prefix_N`` grouped under ``prefix``); others (the CUDA
driver's, a library's own) by their kernel name (``/proc/.../comm``). Threads that end before ``stop`` are counted
together as ``ended threads`` (the process's total less the live threads'): call ``stop`` while the threads of
interest still run (e2e_trt.py does it at the pass's last result, before the stream shuts its pools down).
"""

from __future__ import annotations

import os
import re
import threading
from typing import Dict, Iterable, Tuple

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_s(stat_path: str) -> float:
    """utime + stime of a /proc stat file, in seconds."""
    with open(stat_path) as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": field 3 (state) onwards
    return (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15: utime, stime


def _group(name: str) -> str:
    """``rcnn-stream_3`` -> ``rcnn-stream``, ``ThreadPoolExecutor-0_1`` -> ``ThreadPoolExecutor``."""
    return re.sub(r"(-\d+)?_\d+$", "", name)


class ThreadCPU:
    def __init__(self, pids: Iterable[int] = ()) -> None:
        self.pids = [int(p) for p in pids]
        self.start = self._snapshot()

    def _snapshot(self) -> Tuple[float, Dict[Tuple[str, int], Tuple[str, float]]]:
        names = {t.native_id: t.name for t in threading.enumerate()}
        out: Dict[Tuple[str, int], Tuple[str, float]] = {}
        for tid_text in os.listdir("/proc/self/task"):
            tid = int(tid_text)
            try:
                cpu = _cpu_s(f"/proc/self/task/{tid}/stat")
                with open(f"/proc/self/task/{tid}/comm") as f:
                    comm = f.read().strip()
            except OSError:  # ended meanwhile
                continue
            out[("thread", tid)] = (_group(names.get(tid) or comm), cpu)
        for pid in self.pids:
            try:
                out[("process", pid)] = ("worker processes", _cpu_s(f"/proc/{pid}/stat"))
            except OSError:
                continue
        return _cpu_s("/proc/self/stat"), out

    def stop(self) -> Dict[str, float]:
        """CPU seconds since the snapshot, by thread group, largest first (groups under 1 ms left out)."""
        total0, before = self.start
        total1, after = self._snapshot()
        grouped: Dict[str, float] = {}
        live = 0.0
        for key, (name, cpu) in after.items():
            d = cpu - before.get(key, (name, 0.0))[1]
            grouped[name] = grouped.get(name, 0.0) + d
            live += d if key[0] == "thread" else 0.0
        grouped["ended threads"] = max(0.0, (total1 - total0) - live)
        return {k: round(v, 3) for k, v in sorted(grouped.items(), key=lambda kv: -kv[1]) if v >= 0.001}
