"""ONNX Runtime backend (CPU, or CUDA when onnxruntime-gpu is installed).

A graph listed in a contract.json beside it is checked against the size and sha256 the export recorded (read
in chunks), then ONNX Runtime loads the file itself, and the file must be the same one afterwards (device,
inode, size and modification time as before the check); its inputs and outputs are then compared with the
contract's. A changed, truncated or unreadable graph is a :class:`~rcnn_deploy.errors.UserError` naming the
file, never a protobuf traceback or a run on damaged weights. (A session made from the bytes instead keeps
them: ONNX Runtime's ``InferenceSession`` holds the bytes it was given for as long as it lives, a second copy
of every weight, 177 MB for the project's Mask R-CNN.)

Session settings for the CPU (measured in docs/cpu.md): all graph optimisations (ORT_ENABLE_ALL: constant
folding, Conv/BN/activation fusion, and on AVX2/AVX512 CPUs the NCHWc blocked layout for convolutions),
sequential execution (the graph is one chain of heavy ops: parallel node execution only adds a second thread
pool competing for the same cores), one intra-op thread per *physical* core this process may run on (its CPU
affinity, so a container limited to 2 CPUs does not get a pool sized for the host; hyper-threads share a core's
vector units and slow the GEMMs down), and the CPU memory arena off: the arena grows in power-of-two chunks it
never gives back, so a process kept the high-water mark of one run's tensors, rounded up (with it on, the peak
RSS of one 1344² run was about 400 MiB higher, for about 4 % less CPU time at 1344² and 10 % at 384²: docs/cpu.md,
``benchmarks/results/memory_cpu_*.json``). Without
the arena every tensor goes through malloc, which :func:`~rcnn_deploy.runtime._malloc.fixed_mmap_threshold`
tells to return large freed blocks to the operating system at once. (The CPU graph's data-dependent shapes make
memory patterns inapplicable, so those are left to ONNX Runtime.)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UserError
from .base import Backend, BackendUnavailable

_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise BackendUnavailable("ONNX Runtime is not installed: pip install 'rcnn-deploy[onnx]'") from e
    return onnxruntime


def _load_errors(ort: Any) -> tuple:
    """ONNX Runtime's exceptions for a model it cannot load (all RuntimeError subclasses from pybind11)."""
    state = getattr(getattr(ort, "capi", None), "onnxruntime_pybind11_state", None)
    names = ("Fail", "InvalidArgument", "NoSuchFile", "NoModel", "InvalidProtobuf", "InvalidGraph", "NotImplemented")
    found = tuple(getattr(state, n) for n in names if state is not None and hasattr(state, n))
    return found or (RuntimeError,)


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (its affinity), at least 1. Logical CPUs that are
    hyper-thread siblings of one core count once (Linux sysfs topology; elsewhere every logical CPU counts)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, (os.cpu_count() or 2) // 2)
    cores = set()
    for c in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            cores.add((topo / "physical_package_id").read_text().strip() + ":" + (topo / "core_id").read_text().strip())
        except OSError:
            cores.add(f"cpu{c}")
    return max(1, len(cores))


def session_options(ort: Any, threads: int = 0) -> Any:
    """The CPU session settings described in the module docstring; ``threads``: intra-op threads (0: one per
    physical core, or ``RCNN_DEPLOY_ORT_THREADS``)."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    env = os.environ.get("RCNN_DEPLOY_ORT_THREADS", "").strip()
    if not threads and env:
        if not env.isdigit() or int(env) < 1:
            raise UserError(f"must be a whole number >= 1, got {env!r}", where="RCNN_DEPLOY_ORT_THREADS")
        threads = int(env)
    opts.intra_op_num_threads = threads or physical_cores()
    opts.inter_op_num_threads = 1
    opts.enable_cpu_mem_arena = False
    return opts


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, path: Union[str, Path], providers: Optional[Sequence[str]] = None, threads: int = 0) -> None:
        from ..contract import verify_graph_file
        from ..runtime._malloc import fixed_mmap_threshold

        ort = _ort()
        fixed_mmap_threshold()  # before the session allocates anything
        opts = session_options(ort, threads)
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.path = Path(path)
        before = _identity(self.path)
        entry = verify_graph_file(self.path)  # refuses a graph its contract does not describe
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=list(providers))
        except _load_errors(ort) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            fix = (
                "the file matches its contract's sha256, so this ONNX Runtime cannot run this kind of graph "
                "(a TensorRT-plugin graph needs 'rcnn-deploy build')"
                if entry is not None and entry[2].sha256
                else "the file is damaged or not an ONNX model; re-export it with 'rcnn-deploy export'"
            )
            raise UserError(
                f"ONNX Runtime cannot load this graph ({type(e).__name__}: {first[:300]})", where=self.path, fix=fix
            ) from None
        if entry is not None and _identity(self.path) != before:
            raise UserError(
                "the graph file changed while it was being checked and loaded",
                where=self.path,
                fix="load it again once nothing writes to it",
            )
        self._inputs = [i.name for i in self.session.get_inputs()]
        self._outputs = [o.name for o in self.session.get_outputs()]
        if entry is not None:
            contract, index, graph = entry
            _check_io(self.session, graph, f"{contract.path}: graphs[{index}]")

    def infer(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        outs = self.session.run(self._outputs, {k: feed[k] for k in self._inputs})
        return dict(zip(self._outputs, outs))


def _identity(path: Path) -> Optional[Tuple[int, int, int, int]]:
    """What changes when a file is rewritten or replaced: device, inode, size, modification time (ns)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _check_io(session: Any, graph: Any, where: str) -> None:
    """The session's inputs and outputs against the contract's: the graph passed its checksum, so a difference
    means the contract was edited to describe another graph."""
    for kind, got, want in (
        ("inputs", session.get_inputs(), graph.inputs),
        ("outputs", session.get_outputs(), graph.outputs),
    ):
        names: List[str] = [t.name for t in got]
        if names != [t.name for t in want]:
            raise UserError(
                f"the contract names {[t.name for t in want]}, the graph has {names}",
                where=f"{where}.{kind}",
                fix="the contract was edited; undo the edit or re-export",
            )
        for i, (g, w) in enumerate(zip(got, want)):
            dims = [d if isinstance(d, (int, str)) else None for d in g.shape]
            same = len(dims) == len(w.shape) and all(
                d is None or (isinstance(d, str) and isinstance(e, str)) or d == e for d, e in zip(dims, w.shape)
            )
            if not same:
                raise UserError(
                    f"the contract says {w.shape}, the graph's {g.name!r} is {dims}",
                    where=f"{where}.{kind}[{i}].shape",
                    fix="the contract was edited; undo the edit or re-export",
                )
            dtype = _ORT_TYPES.get(g.type, g.type)
            if dtype != w.dtype:
                raise UserError(
                    f"the contract says {w.dtype}, the graph's {g.name!r} is {dtype}",
                    where=f"{where}.{kind}[{i}].dtype",
                    fix="the contract was edited; undo the edit or re-export",
                )
