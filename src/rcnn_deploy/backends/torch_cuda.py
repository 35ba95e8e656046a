"""The PyTorch deploy model on a CUDA GPU without TensorRT: fp32 / fp16 / bf16 layers, channels_last, and one
CUDA graph per batch size.

``CudaGraphModel(net)`` takes ``[B, 3, H, W]`` uint8 (or float32) images on the GPU and returns the padded
outputs of :data:`rcnn_deploy.glue.pipeline.OUTPUT_NAMES` on the GPU. With ``cuda_graph=True`` the forward runs
inside :func:`rcnn_deploy.glue.sync_free.sync_free` (no host synchronisation: static-shape NMS with a fixed
number of rounds, ROIAlign without ``nonzero``), is captured once per batch size after two warm-up runs, and
replayed. Every replay also computes whether each NMS had converged within its rounds; a batch where one had
not (rare: a suppression chain longer than ``nms_rounds``) is re-run without the round limit, so the outputs
are always greedy NMS's, never an approximation.

Precision follows the rule of the TensorRT fp16 builds: the layers in fp16 / bf16, the glue (normalisation,
box decoding, NMS, ROIAlign) in float32 (:meth:`rcnn_deploy.models.rcnn.DeployRCNN.set_precision`).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

PRECISIONS = ("fp32", "fp16", "bf16")


def torch_dtype(precision: str) -> Any:
    import torch

    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in table:
        raise ValueError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return table[precision]


class _Captured:
    def __init__(self, graph: Any, static_in: Any, static_out: Dict[str, Any], converged: Any) -> None:
        self.graph, self.static_in, self.static_out, self.converged = graph, static_in, static_out, converged


class CudaGraphModel:
    """``net`` (a ``DeployRCNN``) on ``device`` in ``precision``; see the module docstring."""

    def __init__(
        self,
        net: Any,
        device: str = "cuda",
        precision: str = "fp16",
        cuda_graph: bool = True,
        channels_last: bool = True,
        nms_rounds: int = 24,
    ) -> None:
        import torch

        if not str(device).startswith("cuda"):
            raise ValueError(f"CudaGraphModel runs on a CUDA device, not {device!r}")
        self.device = torch.device(device)
        self.precision = precision
        self.net = net.to(self.device).eval()
        if precision != "fp32" or channels_last:
            self.net.set_precision(torch_dtype(precision), channels_last=channels_last)
        self.cuda_graph, self.nms_rounds = cuda_graph, nms_rounds
        self.stream = torch.cuda.Stream(self.device)
        self._graphs: Dict[tuple, _Captured] = {}
        self.fallbacks = 0  # batches re-run because an NMS had not converged within nms_rounds
        self.replays = 0

    @property
    def spec(self) -> Any:
        return self.net.spec

    def _forward(self, x: Any, rounds: Optional[int]) -> Any:
        import torch

        from ..glue.sync_free import sync_free

        with torch.no_grad(), sync_free(rounds) as state:
            out = self.net(x.float() if x.dtype == torch.uint8 else x)
        return out, state.converged

    def _capture(self, x: Any) -> _Captured:
        import torch

        static_in = torch.empty_like(x)
        static_in.copy_(x)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: cuDNN / cuBLAS choices, lazy allocations, cached constants
                self._forward(static_in, self.nms_rounds)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out, converged = self._forward(static_in, self.nms_rounds)
        return _Captured(graph, static_in, out, converged)

    def __call__(self, x: Any) -> Dict[str, Any]:
        """``x [B, 3, H, W]`` uint8 / float32 on the device -> padded outputs on the device. Outputs of a
        captured graph are its static buffers, valid until the next call with the same batch size: copy them
        (``{k: v.cpu() ...}``) before calling again."""
        import torch

        if not self.cuda_graph:
            with torch.no_grad():
                return self.net(x.float() if x.dtype == torch.uint8 else x)
        key = (tuple(x.shape), x.dtype)
        cap = self._graphs.get(key)
        if cap is None:
            cap = self._graphs[key] = self._capture(x)
        else:
            cap.static_in.copy_(x)
        cap.graph.replay()
        self.replays += 1
        if not bool(cap.converged):  # a host sync, once per batch, after the work is queued
            self.fallbacks += 1
            out, _ = self._forward(cap.static_in, None)
            return out
        return cap.static_out

    def run_numpy(self, images: Any) -> Dict[str, Any]:
        """Host ``[B, 3, H, W]`` array in, host arrays out (what ``Detector`` runners take)."""
        import torch

        x = torch.from_numpy(images).to(self.device, non_blocking=False)
        out = self(x)
        return {k: v.cpu().numpy() for k, v in out.items()}
