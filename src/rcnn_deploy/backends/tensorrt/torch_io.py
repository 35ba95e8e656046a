"""A fused TensorRT engine on torch CUDA tensors, for a process that has torch with CUDA beside TensorRT (a
TensorRT 10 user's usual setup): the engine reads its input from, and writes its outputs into, torch tensors on
the GPU (:meth:`TensorRTBackend.infer_device <rcnn_deploy.backends.tensorrt.runtime.TensorRTBackend.infer_device>`,
as the split pipeline runs its engines), so the PyTorch backend's GPU pre- and post-processing serve it unchanged:
:class:`~rcnn_deploy.backends.torch_cuda.GpuLetterbox` (JPEGs decoded and letterboxed on the GPU) before it and
:class:`~rcnn_deploy.glue.gpu_post.GpuPost` (boxes mapped back, masks pasted and RLE-encoded on the GPU) after it,
both driven by :class:`~rcnn_deploy.backends.torch_cuda.GpuBatchModel` (``Detector.from_engine(...,
gpu_post=True)``).

Needs torch (imported on first use); the rest of the TensorRT backend stays torch-free for the CPython 3.9
TensorRT 8.6 process.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from .runtime import DeviceTensor

#: engine I/O dtypes (numpy names) torch has under the same name
_TORCH_DTYPES = ("float32", "float16", "int32", "int64", "int8", "uint8", "bool")


def torch_dtype_of(dtype: Any) -> Any:
    """The torch dtype of a numpy dtype the engine uses for an I/O tensor."""
    import torch

    name = np.dtype(dtype).name
    if name not in _TORCH_DTYPES:
        raise TypeError(f"no torch dtype for the engine's {name} tensors")
    return getattr(torch, name)


class TensorRTTorchModel:
    """``backend`` (a :class:`~rcnn_deploy.backends.tensorrt.runtime.TensorRTBackend` of a fused graph, or anything
    with its ``input_names``, ``tensor_dtype``, ``output_shapes`` and ``infer_device``) as a model from a
    ``[B, 3, H, W]`` batch on ``device`` (uint8 or the engine's input dtype; cast there) to the padded outputs on
    it, renamed by ``rename`` (the fused graph's ``detection_*`` names to the deploy model's).

    ``launch(x)`` queues one batch on the calling thread's current CUDA stream and returns ``finish()``, which
    gives its outputs later, on any thread (:class:`~rcnn_deploy.backends.torch_cuda.GpuBatchModel`'s waiter):
    the batch is copied (and cast) into the engine's own input buffer, after which ``input_copied`` is recorded
    (the caller's buffer may be written again once it has passed), and the engine writes into output tensors of
    this call's own, so a batch's outputs stay valid while the next batches run. The engine's execution context
    is one: launches from several threads are serialised (``_lock``), their work ordered on the stream of the
    thread that launched them. On the CPU (the tests: a stand-in engine reads and writes host memory through the
    pointers) the batch runs when launched."""

    def __init__(self, backend: Any, rename: Callable[[Dict[str, Any]], Dict[str, Any]], device: Any = "cuda") -> None:
        import torch

        self.backend, self.rename = backend, rename
        self.device = torch.device(device)
        names = list(backend.input_names)
        if len(names) != 1:
            raise ValueError(f"a fused engine takes one input (images), this one takes {names}")
        self.input_name = names[0]
        self.input_np_dtype = np.dtype(backend.tensor_dtype(self.input_name))
        self.input_dtype = torch_dtype_of(self.input_np_dtype)
        self._inputs: Dict[Tuple[int, ...], Any] = {}  # the engine's input buffer by shape
        self._lock = threading.Lock()
        self.input_copied: Any = None  # an event after the last launch copied its input (CUDA)

    def launch(self, x: Any) -> Callable[[], Dict[str, Any]]:
        import torch

        cuda = self.device.type == "cuda"
        with self._lock:
            shape = tuple(int(d) for d in x.shape)
            buf = self._inputs.get(shape)
            if buf is None:
                buf = self._inputs[shape] = torch.empty(shape, dtype=self.input_dtype, device=self.device)
            buf.copy_(x)  # uint8 -> the engine's dtype where it takes float32 (the fp32 / fp16 exports' input)
            if cuda:
                self.input_copied = torch.cuda.Event()
                self.input_copied.record()
            shapes = self.backend.output_shapes({self.input_name: shape})
            dtypes = {n: np.dtype(self.backend.tensor_dtype(n)) for n in shapes}
            outs = {n: torch.empty(s, dtype=torch_dtype_of(dtypes[n]), device=self.device) for n, s in shapes.items()}
            stream = torch.cuda.current_stream(self.device).cuda_stream if cuda else 0
            self.backend.infer_device(
                {self.input_name: DeviceTensor(buf.data_ptr(), shape, self.input_np_dtype)},
                {n: DeviceTensor(t.data_ptr(), tuple(t.shape), dtypes[n]) for n, t in outs.items()},
                stream,
            )
            done: Optional[Any] = None
            if cuda:
                done = torch.cuda.Event()
                done.record()

        def finish() -> Dict[str, Any]:
            if done is not None:  # made on the launching stream, used on this one
                here = torch.cuda.current_stream(self.device)
                here.wait_event(done)
                for t in outs.values():
                    t.record_stream(here)
            return self.rename(outs)

        return finish

    def __call__(self, x: Any) -> Dict[str, Any]:
        """One batch now: :meth:`launch` and its ``finish`` (outputs on the device, ordered on the current stream)."""
        return self.launch(x)()
