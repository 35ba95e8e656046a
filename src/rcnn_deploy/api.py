"""The Python API: ``Detector.load(path)`` -> ``detector(images)`` -> detections in original image coordinates.

    from rcnn_deploy.api import Detector
    det = Detector.load("out/")                      # an export directory (contract.json): ONNX Runtime
    det = Detector.load("model.pth", model="torchvision-maskrcnn", input_hw=(800, 800))   # PyTorch
    results = det(["a.jpg", "b.png"])                # list of Detections (boxes, scores, classes, masks)

Backends: ``torch`` (the deploy model), ``onnxruntime`` (fused graph, or split graphs with the glue in torch),
``tensorrt`` (a fused engine file built by ``rcnn-deploy build``; TensorRT 8.6/10 or TensorRT-RTX).
Images are letterboxed to the model's input size; boxes are mapped back and masks pasted into the original
image exactly as the model's framework does it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Generator, Iterable, List, Optional, Sequence, Tuple, Union, cast

import numpy as np

from .config import ModelSpec
from .errors import UserError
from .runtime.detections import Detections
from .runtime.masks import PastedMasks
from .runtime.preprocess import Letterbox, letterbox, load_rgb, probe_gpu_jpeg, rgb_fill
from .runtime.sources import Item, SourceLike, open_source
from .runtime.stream import (
    BatchModel,
    DropMasksAfter,
    Prepared,
    ReplicatedModel,
    StreamResult,
    StreamStats,
    SubmitModel,
    WorkerPool,
    check_finite,
    default_processes,
    non_finite_error,
    run_stream,
    submit_batch,
)

ImageLike = Union[str, Path, np.ndarray]
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
Runner = Callable[[np.ndarray], Dict[str, np.ndarray]]


#: Worker processes a GPU-decode stream starts at most by default (machines with 8 cores or more): run 24
#: on the H200's 16 cores streamed the batch-8 engine at 351-354 img/s with 2-4 processes against 296 with 14 (329
#: with threads) without per-image work, and at 280-286 img/s with 3-8 against 249 with 14 (run 23) with the COCO
#: RLE writer; more processes slowed the decode threads (their batch steps' p50 19.5 ms against 14-15 ms). With
#: the writer's lighter caller side (session 17), run 25's writer streams ran at 275.2 img/s with 4 processes and
#: 321.1 with 8 in one probe process, 291.8 / 303.4 / 288.4 with 6 / 8 / 12 in another, and e2e_trt.py at 257.7 with
#: 4 and 266.3 with 8 (trt_runner_probe_run25a.json, e2e_trt_run25a_b8*.json): 8 (half the H200's cores, the
#: general default there) since session 18. 8 without per-image work was not measured. Since session 19 PyTorch's
#: GPU decoding without GPU post-processing takes the same default (run 26c: 209.5 img/s at batch 8 with 8; it used
#: threads only before).
GPU_DECODE_PROCESSES = 8


class Detector:
    def __init__(self, spec: ModelSpec, input_hw: Tuple[int, int], run: Runner, backend: str, batch: int = 1):
        self.spec, self._run, self.backend, self.batch = spec, run, backend, batch
        self.input_hw = cast(Tuple[int, int], tuple(input_hw))
        self.fill = rgb_fill(spec.pixel_mean, spec.channel_order)
        self.engine: Optional[object] = None  # the TensorRTBackend of a fused engine; SplitPieces of split ones
        self.module: Optional[object] = None  # the torch module when running the PyTorch deploy model
        self.cuda_model: Optional[Any] = None  # the CudaGraphModel of the PyTorch backend on a GPU
        self.input_dtype: np.dtype = np.dtype(np.float32)  # what the graph takes: float32 (0-255 RGB) or uint8
        self.max_pixels: Optional[int] = None  # decode limit for image files (None: the loader's default)
        self.workers: Optional[int] = None  # decode / postprocess threads of stream() (None: by CPU count)
        self.batch_model: Optional[SubmitModel] = None  # an asynchronous model for stream() (set by backends)
        self.gpu_decode = False  # JPEG files go to the model as bytes (decoded on the GPU)
        self.gpu_max_hw: Optional[Tuple[int, int]] = None  # the largest JPEG decoded there

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def load(
        cls,
        path: Union[str, Path],
        *,
        model: Optional[str] = None,
        input_hw: Optional[Tuple[int, int]] = None,
        backend: Optional[str] = None,
        batch: int = 1,
        device: str = "cpu",
        precision: str = "fp32",
        cuda_graph: bool = True,
        gpu_decode: bool = False,
        gpu_post: bool = False,
        replicas: int = 1,
        compile: Optional[str] = None,
        gpu_decoder: str = "auto",
        **spec_overrides: Any,
    ) -> Detector:
        """``path``: an export directory / a file in one (uses its contract.json), or a checkpoint (``.pth``,
        ``.pkl``, a torchvision enum name) with ``model=`` and ``input_hw=`` for the PyTorch backend.
        ``device="cuda"``, ``precision`` (fp32 / fp16 / bf16), ``cuda_graph``, ``gpu_decode`` (JPEGs decoded and
        letterboxed on the GPU; ``gpu_decoder`` picks the decoder, see :meth:`from_module`) and ``gpu_post`` (boxes
        mapped back, masks pasted and RLE-encoded on the GPU): the PyTorch backend on a GPU
        (:class:`rcnn_deploy.backends.torch_cuda`); ``gpu_decode`` and ``gpu_post`` also for a fused TensorRT engine
        (``gpu_post`` with torch in the process: :meth:`from_engine`). ``replicas``: ONNX Runtime on
        a fused export only, that many sessions sharing the cores, run side by side by :meth:`stream`."""
        p = Path(path)
        directory = p if p.is_dir() else p.parent
        is_engine = p.suffix.lower() in ENGINE_SUFFIXES
        if (precision != "fp32" or ((gpu_decode or gpu_post) and not is_engine)) and (
            is_engine or (directory / "contract.json").is_file()
        ):
            raise UserError(
                "precision is an option of the PyTorch backend, and so are GPU decoding and GPU post-processing but "
                "for a fused TensorRT engine; an export or engine runs at the precision it was built with",
                where=path,
                fix="pass the checkpoint instead (CLI: --device cuda --precision fp16), or drop --precision "
                "(--gpu-decode, --gpu-post: pass the .engine file)",
            )
        onnxruntime_export = (directory / "contract.json").is_file() and backend in (None, "onnxruntime")
        if replicas != 1 and not (onnxruntime_export and p.suffix.lower() not in ENGINE_SUFFIXES):
            raise UserError(
                "replicas are sessions of ONNX Runtime on an export; engines and the PyTorch backend batch instead",
                where=path,
                fix="pass an export directory (onnxruntime), or drop --replicas and raise --batch",
            )
        if is_engine and backend in (None, "tensorrt"):
            return cls.from_engine(
                p, gpu_decode=gpu_decode, cuda_graph=cuda_graph, gpu_post=gpu_post, gpu_decoder=gpu_decoder
            )
        if (directory / "contract.json").is_file() and backend == "tensorrt":
            return cls.from_split_engines(directory, device=device if device.startswith("cuda") else "cuda")
        if onnxruntime_export:
            return cls._from_export(directory, batch, replicas)
        if model is None and p.is_file():
            from .models.checkpoint import checkpoint_model_name

            model = checkpoint_model_name(p)  # rcnn-deploy checkpoints name their model
        if model is None:
            what = "does not exist" if not p.exists() else "is not an export directory (no contract.json)"
            raise UserError(
                what,
                where=path,
                fix="pass an export directory, an engine, or a checkpoint with its model name "
                "(CLI: --model torchvision-maskrcnn; Python: model='torchvision-maskrcnn')",
            )
        if backend not in (None, "torch"):
            raise UserError(
                f"backend {backend} needs an export directory; a checkpoint runs on the PyTorch backend",
                where=path,
                fix="use --backend torch (or leave --backend out), or export it first with rcnn-deploy export",
            )
        return cls.from_torch(
            model,
            str(path),
            input_hw,
            batch,
            device,
            precision,
            cuda_graph,
            gpu_decode,
            gpu_post,
            compile,
            gpu_decoder,
            **spec_overrides,
        )

    @classmethod
    def from_torch(
        cls,
        model: str,
        weights: Optional[str],
        input_hw: Optional[Tuple[int, int]] = None,
        batch: int = 1,
        device: str = "cpu",
        precision: str = "fp32",
        cuda_graph: bool = True,
        gpu_decode: bool = False,
        gpu_post: bool = False,
        compile: Optional[str] = None,
        gpu_decoder: str = "auto",
        **spec_overrides: Any,
    ) -> Detector:
        """The PyTorch deploy model. ``input_hw`` defaults to the size an rcnn-deploy checkpoint was trained
        at, else 800 x 800."""
        from .models.build import build_model

        net = build_model(model, weights, **spec_overrides)
        return cls.from_module(
            net, input_hw, batch, device, precision, cuda_graph, gpu_decode, gpu_post, compile, gpu_decoder
        )

    @classmethod
    def from_module(
        cls,
        net: Any,
        input_hw: Optional[Tuple[int, int]] = None,
        batch: int = 1,
        device: str = "cpu",
        precision: str = "fp32",
        cuda_graph: bool = True,
        gpu_decode: bool = False,
        gpu_post: bool = False,
        compile: Optional[str] = None,
        gpu_decoder: str = "auto",
    ) -> Detector:
        """A deploy-form model already in memory (``DeployRCNN``), run on ``device``. ``input_hw`` defaults to
        the size its checkpoint recorded, else 800 x 800. On a CUDA device the model is a
        :class:`~rcnn_deploy.backends.torch_cuda.CudaGraphModel` (``precision``, ``cuda_graph``) taking uint8
        images (``gpu_decode``: JPEG files decoded and letterboxed on the GPU, :class:`GpuLetterbox
        <rcnn_deploy.backends.torch_cuda.GpuLetterbox>`, with ``gpu_decoder``, one of its ``GPU_DECODERS``:
        nvImageCodec when installed, else torchvision's ``decode_jpeg``; ``gpu_post``: boxes mapped back to the
        original image, masks pasted, thresholded and RLE-encoded on the GPU, :mod:`rcnn_deploy.glue.gpu_post`,
        so only compact results come back to the host); on the CPU it runs eagerly in fp32 (and ``gpu_post`` is
        refused)."""
        import torch

        from .backends.torch_cuda import PRECISIONS, CudaGraphModel, GpuBatchModel, GpuLetterbox
        from .config import InputSize

        if precision not in PRECISIONS:
            raise UserError(f"unknown precision {precision!r}", where="--precision", fix=f"use {', '.join(PRECISIONS)}")
        input_hw = tuple(input_hw or getattr(net, "checkpoint_input_hw", None) or (800, 800))
        InputSize(*input_hw)
        if str(device).startswith("cuda"):
            gpu = CudaGraphModel(net, device, precision, cuda_graph, compile=compile)
            # every call padded to `batch`: one captured graph, whatever the last batch of a folder holds
            det = cls(net.spec, input_hw, _fixed_batch(gpu.run_numpy, batch, batch), "torch", batch)
            det.input_dtype = np.dtype(np.uint8)  # a quarter of float32's upload; the graph casts on the GPU
            det.module, det.cuda_model = gpu.net, gpu
            from .glue.gpu_post import GpuPost

            # the runner's model: each batch uploaded (host-letterboxed arrays; JPEG bytes with gpu_decode) and
            # letterboxed on a stream of its own and the graph launched without waiting, its outputs copied back
            # (or post-processed, gpu_post) in the runner's waiter thread while the next batch uploads and runs
            lb = GpuLetterbox(
                input_hw,
                det.fill,
                net.spec.resize,
                device,
                det.max_pixels,
                gpu_decoder if gpu_decode else "torchvision",
            )
            post = GpuPost(net.spec.mask_paste, net.spec.mask_threshold) if gpu_post else None
            det.batch_model = GpuBatchModel(gpu, lb, batch, post)
            det.gpu_decode = gpu_decode
            return det
        if gpu_decode:
            raise UserError("GPU decoding needs a CUDA device", where="--gpu-decode", fix="pass --device cuda")
        if gpu_post:
            raise UserError(
                "post-processing on the GPU needs a CUDA device", where="gpu_post", fix="pass device='cuda'"
            )
        if precision != "fp32":
            raise UserError(
                f"precision {precision} needs a CUDA device; the CPU runs the PyTorch model in fp32",
                where="--precision",
                fix="pass --device cuda, or drop --precision",
            )
        net = net.to(device).eval()

        def run(images: np.ndarray) -> Dict[str, np.ndarray]:
            with torch.no_grad():
                out = net(torch.from_numpy(images).to(device))
            return {k: v.cpu().numpy() for k, v in out.items()}

        det = cls(net.spec, input_hw, run, "torch", batch)
        det.module = net
        return det

    @classmethod
    def from_engine(
        cls,
        path: Union[str, Path],
        pipelined: bool = True,
        gpu_decode: bool = False,
        gpu_decode_backend: str = "default",
        slots: Optional[int] = None,
        cuda_graph: bool = True,
        blocking_wait: bool = False,
        gpu_post: Union[bool, str] = False,
        gpu_decoder: str = "auto",
    ) -> Detector:
        """A fused TensorRT / TensorRT-RTX engine built by ``rcnn-deploy build`` into its export directory (the
        contract.json beside it gives the model spec). ``detector.engine`` is the TensorRTBackend. ``pipelined``:
        :meth:`stream` runs it double-buffered (two contexts and streams, pinned host buffers). ``gpu_decode``:
        JPEG files are decoded by nvImageCodec and letterboxed by a small TensorRT engine on the GPU, no torch
        needed (:mod:`rcnn_deploy.backends.tensorrt.gpu_pre`); ``gpu_decode_backend``: which of nvImageCodec's
        decoders (``gpu_pre.DECODE_BACKENDS``). ``slots``: batches in flight (default 3 with ``gpu_decode``, each
        decoded in a thread of its own; else 2). ``cuda_graph``: each slot replays the engine run from a CUDA graph
        (captured on its second run of a batch size); ``blocking_wait``: threads waiting for a batch sleep on a
        blocking-sync event instead of spinning in ``cudaStreamSynchronize`` (both:
        :mod:`rcnn_deploy.backends.tensorrt.pipelined`). ``gpu_post`` (needs torch with CUDA in this process): the
        engine runs on torch CUDA tensors between the PyTorch backend's GPU pre- and post-processing
        (:mod:`rcnn_deploy.backends.tensorrt.torch_io`): host-letterboxed batches uploaded as uint8, or with
        ``gpu_decode`` JPEGs decoded and letterboxed by :class:`~rcnn_deploy.backends.torch_cuda.GpuLetterbox`
        (``gpu_decoder``), and boxes, masks and RLE made on the GPU; ``pipelined``, ``gpu_decode_backend``,
        ``slots``, ``cuda_graph`` and ``blocking_wait`` are the torch-free paths' and do not apply. Without torch
        (CUDA) in the process, or with ``gpu_post="kernel"``, ``gpu_post`` keeps the torch-free path and pastes the
        masks there with a CUDA kernel compiled by NVRTC (:mod:`rcnn_deploy.backends.tensorrt.paste`; boxes are
        mapped back and the RLE strings made on the host)."""
        from .backends.tensorrt.runtime import TensorRTBackend
        from .contract import Contract
        from .runtime.split import fused_outputs

        path = Path(path)
        if gpu_post not in (False, True, "torch", "kernel"):
            raise ValueError(
                f"gpu_post={gpu_post!r}: use False, True (torch when it has CUDA here), 'torch' or 'kernel'"
            )
        kernel_post = gpu_post == "kernel" or (gpu_post is True and not _torch_cuda_here())
        if gpu_post == "torch":  # before anything is read: the option cannot work in this process
            _need_torch_cuda("post-processing a TensorRT engine's outputs on the GPU", "--gpu-post")
        if kernel_post:
            from .backends.cuda_rtc import find_nvrtc

            if find_nvrtc() is None:
                raise UserError(
                    "pasting masks on the GPU without torch needs NVRTC (libnvrtc.so), which was not found",
                    where="--gpu-post",
                    fix="pip install nvidia-cuda-nvrtc (CUDA 13) or nvidia-cuda-nvrtc-cu12, set RCNN_DEPLOY_NVRTC to "
                    "libnvrtc.so's path, or drop --gpu-post",
                )
        if not (path.parent / "contract.json").is_file():
            raise ValueError(
                f"no contract.json beside {path}: build the engine into its export directory "
                "(rcnn-deploy build out/model.onnx -o out/model.engine) or copy contract.json there"
            )
        c = Contract.load(path.parent)
        if c.graph != "fused":
            raise ValueError(
                f"{path.parent} holds a split export; a single engine runs a fused graph (export --graph fused)"
            )
        be = TensorRTBackend(path)
        prof = be.meta.get("build_config", {}).get("batch") or [1, 1, 1]
        lo, hi = int(prof[0]), int(prof[-1])
        run = _fixed_batch(lambda images: fused_outputs(be.infer({"images": images})), lo, hi)
        det = cls(c.spec, c.input_hw, run, "tensorrt", lo)
        det.engine = be
        det.input_dtype = be.tensor_dtype(be.input_names[0])
        post = None
        if kernel_post and "detection_masks" in be.output_names:
            from .backends.tensorrt.paste import KernelPaste

            post = KernelPaste(be.cuda.wrapper().handle, c.spec.mask_paste, c.spec.mask_threshold)
        elif gpu_post and not kernel_post:
            det.batch_model = engine_on_torch(be, c.spec, c.input_hw, det.fill, det.max_pixels, hi, gpu_decode,
                                              gpu_decoder, "cuda")  # fmt: skip
            det.input_dtype = np.dtype(np.uint8)  # host-letterboxed images upload as uint8, cast on the GPU
            det.gpu_decode = gpu_decode
            return det
        if gpu_decode:
            from .backends.tensorrt.gpu_pre import LETTERBOX_MAX_HW, TensorRTGpuDecodeModel, ensure_letterbox_engine

            if c.spec.resize != "torchvision":
                raise UserError(
                    f"GPU decoding with TensorRT letterboxes with the 'torchvision' resize; this model's is "
                    f"{c.spec.resize!r} (Pillow's antialiased resize)",
                    where="--gpu-decode",
                    fix="run without --gpu-decode",
                )
            pre = ensure_letterbox_engine(path.parent, hi, LETTERBOX_MAX_HW, be.trt)
            det.batch_model = TensorRTGpuDecodeModel(
                be,
                lo,
                hi,
                pre,
                det.fill,
                det.max_pixels,
                slots=slots or 3,
                rename=fused_outputs,
                decode_backend=gpu_decode_backend,
                cuda_graph=cuda_graph,
                blocking_wait=blocking_wait,
                resampler=str(c.notes.get("letterbox_resampler", "float")),
                post=post,
            )
            det.gpu_decode = True
            det.gpu_max_hw = LETTERBOX_MAX_HW
        elif pipelined or post is not None:
            from .backends.tensorrt.pipelined import TensorRTBatchModel

            det.batch_model = TensorRTBatchModel(
                be, lo, hi, slots or 2, fused_outputs, cuda_graph=cuda_graph, blocking_wait=blocking_wait, post=post
            )
        return det

    @classmethod
    def from_split_engines(
        cls,
        directory: Union[str, Path],
        engines: Optional[Dict[str, Union[str, Path]]] = None,
        device: str = "cuda",
    ) -> Detector:
        """The split export in ``directory`` run as three TensorRT engines (``engines``: role -> file; default
        each graph's ONNX file with ``.engine``) with the torch glue on ``device`` between them. On CUDA the
        engines read and write torch's CUDA tensors directly (no host copies between the stages)."""
        from .backends.tensorrt.runtime import TensorRTBackend
        from .contract import Contract
        from .glue.split import run_split, tensorrt_split

        directory = Path(directory)
        c = Contract.load(directory)
        if c.graph != "split":
            raise UserError(
                "holds a fused export: its TensorRT engine is one file",
                where=directory,
                fix="pass the .engine file as the model path (Python: Detector.from_engine(FILE))",
            )
        pieces = tensorrt_split(c, directory, engines)
        backbone = cast(TensorRTBackend, pieces.backbone)  # tensorrt_split's pieces are TensorRT engines
        prof = backbone.meta.get("build_config", {}).get("batch") or list(c.batch)
        lo, hi = int(prof[0]), int(prof[-1])
        run: Runner = lambda images: run_split(pieces, images, device)  # noqa: E731
        det = cls(c.spec, c.input_hw, _fixed_batch(run, lo, hi), "tensorrt", lo)
        det.engine = pieces
        return det

    @classmethod
    def _from_export(cls, directory: Path, batch: int, replicas: int = 1) -> Detector:
        """ONNX Runtime on an export. ``replicas`` > 1 (fused graphs): that many sessions, the physical cores
        shared out among them as intra-op threads, run batches side by side in :meth:`stream`
        (:class:`~rcnn_deploy.runtime.stream.ReplicatedModel`); direct calls use the first."""
        from .contract import Contract

        c = Contract.load(directory)
        replicas = int(replicas)
        if replicas < 1:
            raise UserError(f"replicas must be >= 1, got {replicas}", where="--replicas")
        runs: List[Runner] = []
        if c.graph == "fused":
            from .backends.onnxruntime import OnnxRuntimeBackend, physical_cores
            from .runtime.split import fused_outputs

            if c.nms == "plugin":
                raise ValueError(f"{directory} holds a TensorRT-plugin graph; build it with 'rcnn-deploy build'")
            threads = max(1, physical_cores() // replicas) if replicas > 1 else 0

            def fused_runner(be: OnnxRuntimeBackend) -> Runner:
                return lambda images: fused_outputs(be(images=images))

            for _ in range(replicas):
                runs.append(fused_runner(OnnxRuntimeBackend(directory / c.graph_for("fused").file, threads=threads)))
        else:
            from .glue.split import onnxruntime_split, run_split

            if replicas > 1:
                raise UserError(
                    "replicas need a fused export (a split graph's glue runs in this process's torch)",
                    where=directory,
                    fix="export with --graph fused, or drop --replicas",
                )
            pieces = onnxruntime_split(c, directory)
            runs.append(lambda images: run_split(pieces, images))
        lo, hi = c.batch
        fixed = [_fixed_batch(r, lo, hi) for r in runs]
        det = cls(c.spec, c.input_hw, fixed[0], "onnxruntime", min(max(batch, lo), hi))
        det.input_dtype = np.dtype(c.graphs[0].inputs[0].dtype)
        if replicas > 1:
            det.batch_model = ReplicatedModel(fixed)  # any batch: each copy pads or splits it (_fixed_batch)
        return det

    # --------------------------------------------------------------------------------------------- running
    def set_mask_threshold(self, threshold: float) -> None:
        """Binarise masks at ``threshold`` from now on: in the host post-processing (``spec.mask_threshold``) and,
        when masks are post-processed on the GPU (``gpu_post``), there too."""
        self.spec = self.spec.replace(mask_threshold=float(threshold))
        post = getattr(self.batch_model, "post", None)
        if post is not None:
            post.threshold = float(threshold)

    def host_stages(self, keep_images: bool = False) -> HostStages:
        """The host-side stages (decode + letterbox, outputs -> detections) as a picklable object, so the
        streaming runner can run them in worker processes."""
        stages = HostStages(self.spec, self.input_hw, self.fill, self.input_dtype.str, self.max_pixels, keep_images)
        stages.gpu_decode = self.gpu_decode
        stages.gpu_max_hw = self.gpu_max_hw
        return stages

    def _decode(self, path: Path) -> np.ndarray:
        return self.host_stages()._decode(path)

    def _model_input(self, rgb: np.ndarray) -> Tuple[np.ndarray, Letterbox]:
        return letterbox(rgb, self.input_hw, self.fill, dtype=self.input_dtype, resize=self.spec.resize)

    def prepare(self, item: Item, keep_image: bool = False) -> Prepared:
        """Decode + letterbox one stream item; a failure is recorded on the result, never raised."""
        return self.host_stages(keep_image).prepare(item)

    def detections_for(self, lb: Letterbox, outputs: Dict[str, np.ndarray], name: str = "") -> Detections:
        """One image's padded outputs (batch of 1) -> detections in original-image coordinates, masks lazy."""
        return self.host_stages().detections_for(lb, outputs, name)

    def preprocess(self, images: Sequence[ImageLike]) -> Tuple[np.ndarray, List[Letterbox]]:
        arrays, boxes = [], []
        for im in images:
            rgb = self._decode(Path(im)) if isinstance(im, (str, Path)) else np.asarray(im)
            a, lb = self._model_input(rgb)
            arrays.append(a)
            boxes.append(lb)
        return np.stack(arrays), boxes

    def postprocess(self, outputs: Dict[str, np.ndarray], boxes: Sequence[Letterbox]) -> List[Detections]:
        return [self.detections_for(lb, {k: v[i : i + 1] for k, v in outputs.items()}) for i, lb in enumerate(boxes)]

    def stream(
        self,
        source: Union[SourceLike, Iterable[Item]],
        *,
        batch: Optional[int] = None,
        workers: Optional[int] = None,
        keep_images: bool = False,
        per_image: Optional[Callable[[StreamResult], Any]] = None,
        stats: Optional[StreamStats] = None,
        stride: int = 1,
        processes: Optional[int] = None,
        return_masks: bool = True,
    ) -> Generator[StreamResult, None, None]:
        """Detect in every image of ``source`` (a file, folder, glob, list file, video, array or a list of
        them), overlapping decode, model and postprocessing; yields a
        :class:`~rcnn_deploy.runtime.stream.StreamResult` per image in input order. A failed image has
        ``error`` set and the run goes on. ``keep_images``: results carry the decoded RGB (for drawing).
        ``per_image(result)`` runs in a worker per finished image (e.g. write its files). ``processes``: decode
        and postprocess in that many worker processes (default: half the cores on machines with 8 or more,
        else threads only; at most :data:`GPU_DECODE_PROCESSES` for JPEGs decoded on the GPU, which leave the
        processes only postprocessing; none, threads, with PyTorch's GPU post-processing); ``per_image`` must then
        be picklable. The processes stay up for
        the detector's next run (:meth:`stop_workers` ends them; so does the program's end). ``return_masks=False``
        (with a ``per_image``): the results' detections come without masks once ``per_image`` has run, so the
        worker processes do not send them back (``infer`` writes them as COCO RLE in the workers)."""
        if _is_items(source):
            items = cast(Iterable[Item], source)
        else:
            items = open_source(cast(SourceLike, source), stride=stride)
        model = self.batch_model or BatchModel(self._run, 1, max(self.batch, 1))
        stages = self.host_stages(keep_images)
        procs = self.stream_processes(processes)
        if per_image is not None and not return_masks:
            per_image = DropMasksAfter(per_image)
        pools = self.__dict__.setdefault("_worker_pools", {})
        if procs > 0 and procs not in pools:
            pools[procs] = WorkerPool(procs)
        return run_stream(
            items,
            stages.prepare,
            model,
            stages.postprocess,
            batch=batch or self.batch,
            depth=max(2, int(getattr(model, "depth", 2))),  # a ReplicatedModel keeps one batch per copy in flight
            workers=workers or self.workers,
            per_image=per_image,
            stats=stats,
            processes=procs,
            input_shape=(3, *self.input_hw),
            input_dtype=self.input_dtype,
            prepare_in_processes=not self.gpu_decode,
            pool=pools.get(procs),
        )

    def stream_processes(self, processes: Optional[int] = None) -> int:
        """The worker processes :meth:`stream` uses when asked for ``processes`` (None: its default)."""
        procs = default_processes() if processes is None else int(processes)
        if self.gpu_decode and processes is None:
            if getattr(self.batch_model, "post", None) is not None:
                procs = 0  # PyTorch's GPU post-processing: RLE runs come back, threads finish them
            else:
                # the model takes encoded bytes read in threads here, so the worker processes only post-process
                # (paste and encode the masks), and many of them slow this process's decode threads
                # (trt_runner_probe_run24/25a.json)
                procs = min(procs, GPU_DECODE_PROCESSES)
        return procs

    def stop_workers(self) -> None:
        """End the worker processes :meth:`stream` kept for its next run (the next run starts new ones)."""
        for pool in self.__dict__.pop("_worker_pools", {}).values():
            pool.close()

    def __call__(self, images: Sequence[ImageLike]) -> List[Detections]:
        """Detect in each image (paths or ``[H, W, 3]`` uint8 RGB arrays), ``batch`` images per model call.
        Raises :class:`~rcnn_deploy.errors.UserError` for the first image that fails."""
        items = [
            Item(i, f"array[{i}]", array=im) if isinstance(im, np.ndarray) else Item(i, str(im), path=Path(im))
            for i, im in enumerate(images)
        ]
        if len(items) <= max(self.batch, 1):  # one model call: no threads (the lowest latency for one image)
            prepared = [self.prepare(it) for it in items]
            arrays: List[np.ndarray] = []
            for p in prepared:
                if p.error is not None:
                    raise UserError(p.error)
                assert p.array is not None  # prepared without an error
                arrays.append(p.array)
            model = self.batch_model or BatchModel(self._run, 1, max(self.batch, 1))
            outs = submit_batch(model, arrays, [p.letterbox for p in prepared])()
            return [
                self.detections_for(p.letterbox, {k: v[i : i + 1] for k, v in outs.items()}, p.item.name)
                for i, p in enumerate(prepared)
            ]
        out: List[Detections] = []
        # threads only: a call is often small, and callers (a server's model instance) should not get processes
        for r in self.stream(items, workers=min(len(items), self.workers or 4) or 1, processes=0):
            if r.error is not None:
                raise UserError(r.error)
            assert r.detections is not None
            out.append(r.detections)
        return out

    def run_padded(self, images: np.ndarray) -> Dict[str, np.ndarray]:
        """The model's raw padded outputs for a preprocessed ``[B, 3, H, W]`` batch."""
        return self._run(images)


class HostStages:
    """A detector's host-side stages, picklable (worker processes get a copy): ``prepare`` decodes and
    letterboxes a stream item, ``postprocess`` turns one image's padded outputs into detections."""

    def __init__(
        self,
        spec: ModelSpec,
        input_hw: Tuple[int, int],
        fill: Sequence[float],
        input_dtype: str,
        max_pixels: Optional[int],
        keep_images: bool,
    ) -> None:
        self.spec, self.fill = spec, tuple(fill)
        self.input_hw = cast(Tuple[int, int], tuple(input_hw))
        self.input_dtype, self.max_pixels, self.keep_images = np.dtype(input_dtype), max_pixels, keep_images

    def _decode(self, path: Path) -> np.ndarray:
        if self.max_pixels is None:
            return load_rgb(path)
        return load_rgb(path, max_pixels=self.max_pixels)

    gpu_decode = False
    gpu_max_hw: Optional[Tuple[int, int]] = None  # larger JPEGs are decoded here (the GPU letterbox's limit)

    def prepare(self, item: Item, out: Optional[np.ndarray] = None) -> Prepared:
        """Decode + letterbox one item (a failure is recorded on the result, never raised); ``out``: a
        ``[3, H, W]`` array of the input's dtype to letterbox into (a worker process's shared-memory slot), used
        when the image is letterboxed here (not for JPEG bytes left to the GPU)."""
        if self.gpu_decode and item.path is not None and item.array is None and not self.keep_images:
            try:
                probed = probe_gpu_jpeg(item.path, self.max_pixels)
            except ValueError as e:
                return Prepared(item, error=str(e))
            fits = probed is not None and (
                self.gpu_max_hw is None or (probed[1][0] <= self.gpu_max_hw[0] and probed[1][1] <= self.gpu_max_hw[1])
            )
            if probed is not None and fits and (item.expect_hw is None or tuple(item.expect_hw) == probed[1]):
                data, (h, w) = probed
                encoded = np.frombuffer(bytearray(data), dtype=np.uint8)  # writable: torch.from_numpy takes it
                return Prepared(item, encoded, Letterbox.fit(h, w, self.input_hw))
        if out is not None and (out.shape != (3, *self.input_hw) or out.dtype != np.dtype(self.input_dtype)):
            out = None  # not this model's input: a new array (the caller copies it)
        try:
            rgb = item.load(self._decode)
            a, lb = letterbox(rgb, self.input_hw, self.fill, dtype=self.input_dtype, resize=self.spec.resize, out=out)
        except MemoryError:
            return Prepared(item, error=f"{item.name}: out of memory while decoding")
        except ValueError as e:  # UserError included
            return Prepared(item, error=str(e))
        return Prepared(item, a, lb, rgb if self.keep_images else None)

    def detections_for(self, lb: Letterbox, outputs: Dict[str, np.ndarray], name: str = "") -> Detections:
        """One image's outputs (batch of 1) -> its detections: padded model outputs (boxes mapped back to the
        original image here, masks pasted lazily, :class:`PastedMasks`), or the compact results of the GPU
        post-processing (``detections`` and ``finite``: :func:`rcnn_deploy.glue.gpu_post.postprocess_batch`,
        already in original pixels, masks as :class:`~rcnn_deploy.runtime.masks.RleMasks`)."""
        if "errors" in outputs:  # a GPU-decoded batch: this image may have failed there
            outputs = dict(outputs)
            error = outputs.pop("errors")[0]
            if error is not None:
                raise UserError(str(error))
        if "detections" in outputs:  # post-processed on the device
            if not bool(outputs["finite"][0]):
                raise non_finite_error(name)
            return cast(Detections, outputs["detections"][0])
        d = Detections.from_padded(outputs)[0]
        check_finite(d, name)
        d.boxes = lb.boxes_to_original(d.boxes)
        if d.has_masks:
            assert d.masks is not None
            d.masks = PastedMasks(
                d.masks, d.boxes, (lb.orig_h, lb.orig_w), self.spec.mask_paste, self.spec.mask_threshold
            )
        return d

    def postprocess(self, p: Prepared, outputs: Dict[str, np.ndarray]) -> Detections:
        return self.detections_for(p.letterbox, outputs, p.item.name)


def _is_items(source: Any) -> bool:
    """An iterator of :class:`Item` (from ``open_source``) or a list of them, rather than a source to open."""
    if isinstance(source, (list, tuple)):
        return bool(source) and all(isinstance(x, Item) for x in source)
    return not isinstance(source, (str, Path, np.ndarray))


def _torch_cuda_here() -> bool:
    """Whether torch with a CUDA GPU can be imported in this process."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _need_torch_cuda(what: str, option: str) -> None:
    """A UserError unless torch with a CUDA GPU can be imported here."""
    try:
        import torch
    except ImportError:
        raise UserError(
            f"{what} needs torch in this process", where=option, fix="pip install torch, or drop the option"
        ) from None
    if not torch.cuda.is_available():
        raise UserError(f"{what} needs torch with a CUDA GPU; torch here sees none", where=option,
                        fix="install a CUDA build of torch, or drop the option")  # fmt: skip


def engine_on_torch(
    backend: Any,
    spec: Any,
    input_hw: Tuple[int, int],
    fill: Any,
    max_pixels: Optional[int],
    batch: int,
    gpu_decode: bool,
    gpu_decoder: str = "auto",
    device: str = "cuda",
) -> Any:
    """The runner's model for a fused engine on torch tensors (``Detector.from_engine(..., gpu_post=True)``): the
    PyTorch backend's :class:`~rcnn_deploy.backends.torch_cuda.GpuBatchModel` around
    :class:`~rcnn_deploy.backends.tensorrt.torch_io.TensorRTTorchModel`, with its GPU letterbox (``gpu_decode``:
    JPEG bytes decoded by ``gpu_decoder``, else host-letterboxed uint8 arrays uploaded) and
    :class:`~rcnn_deploy.glue.gpu_post.GpuPost`; every batch padded to ``batch`` (the engine profile's largest)."""
    from .backends.tensorrt.torch_io import TensorRTTorchModel
    from .backends.torch_cuda import GpuBatchModel, GpuLetterbox
    from .glue.gpu_post import GpuPost
    from .runtime.split import fused_outputs

    lb = GpuLetterbox(input_hw, fill, spec.resize, device, max_pixels, gpu_decoder if gpu_decode else "torchvision")
    post = GpuPost(spec.mask_paste, spec.mask_threshold)
    return GpuBatchModel(TensorRTTorchModel(backend, fused_outputs, device), lb, batch, post)


def _fixed_batch(run: Runner, lo: int, hi: int) -> Runner:
    """Pad a short batch up to the graph's minimum batch and split a long one into chunks of the maximum."""

    def wrapped(images: np.ndarray) -> Dict[str, np.ndarray]:
        n = len(images)
        parts = []
        for i in range(0, n, hi):
            chunk = images[i : i + hi]
            k = len(chunk)
            if k < lo:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], lo - k, axis=0)])
            parts.append({key: v[:k] for key, v in run(chunk).items()})
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}

    return wrapped
