"""Build a TensorRT / TensorRT-RTX engine from an ONNX file (torch-free, Python 3.9 compatible).

Precision semantics follow the TensorRT generation: 8.6 and 10 use builder flags (fp16, int8 with an
IInt8 calibrator); 11 and TensorRT-RTX are strongly typed, so the *graph* carries the precision (fp16 means
an fp16 graph, see ``rcnn_deploy.export.precision``). Every engine gets a sidecar JSON (TensorRT version,
GPU, precision, I/O) so a mismatched engine fails with a clear message; writes are atomic.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ..._io import atomic_write_bytes, atomic_write_json
from ...errors import UserError
from .compat import TRT, gpu_info, load_trt

PRECISIONS = ("fp32", "fp16", "int8", "best")
SIDECAR_VERSION = 2  # 2: engine and ONNX sha256, GPU compute capability


@dataclass
class BuildConfig:
    precision: str = "fp32"
    batch: Tuple[int, int, int] = (1, 1, 1)  # min, opt, max of every dynamic leading dim
    rois: Tuple[int, int, int] = (1, 1000, 8000)  # profile for "rois" dims of split head graphs
    workspace_gib: float = 4.0
    timing_cache: Optional[str] = None
    tactic_sources: Optional[List[str]] = None  # e.g. ["EDGE_MASK_CONVOLUTIONS", "JIT_CONVOLUTIONS"]
    opt_level: Optional[int] = None  # builder optimization level 0-5 (TensorRT >= 8.6; its default is 3)
    fp32_glue: bool = True  # fp16/int8 builder flags: keep the glue layers in fp32 (precision_rule)
    fp32_predictors: bool = False  # also the heads' last layers (precision_rule.PREDICTOR_SCOPES)
    # int8 on 8.6/10 without calibrating this graph: the calibration cache of another graph of the same model
    # (the split backbone), applied by layer name (calibrator.map_ranges); layers it lacks run fp16
    int8_ranges_graph: Optional[str] = None
    int8_ranges_cache: Optional[str] = None
    glue_fallback: bool = True  # if the build with the glue rule fails, build once more without it (and say so)
    # explicit (min, opt, max) shapes per input name, for inputs whose dynamic dims are not only the batch (the
    # letterbox graph's image buffer: backends.tensorrt.gpu_pre)
    profiles: Optional[Dict[str, Tuple[List[int], List[int], List[int]]]] = None
    verbose: bool = False
    log_info: bool = False  # TensorRT's INFO log: build phases, calibration batches and their times


def _profile_shape(dims: List[int], cfg: BuildConfig, name: str) -> Optional[Tuple[List[int], List[int], List[int]]]:
    if all(d >= 0 for d in dims):
        return None
    rng = cfg.rois if name in ("box_features", "mask_features", "classes") else cfg.batch
    lo, opt, hi = ([r if d < 0 else d for d in dims] for r in rng)
    return lo, opt, hi


def build_engine(
    onnx_path: Union[str, Path],
    engine_path: Union[str, Path],
    cfg: BuildConfig,
    trt: Optional[TRT] = None,
    calibrator: Any = None,
) -> Dict[str, Any]:
    """Parse ``onnx_path``, build with ``cfg`` and write ``engine_path`` + ``engine_path.json``.

    Returns the sidecar dict (also holding the build time).
    """
    from ...contract import verify_graph_file

    onnx_path = Path(onnx_path)
    verify_graph_file(onnx_path)  # a graph its contract.json lists must be the exported one (size, sha256)
    trt = trt or load_trt()
    mod = trt.module
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    level = "VERBOSE" if cfg.verbose else ("INFO" if cfg.log_info else "WARNING")
    logger = mod.Logger(getattr(mod.Logger, level))
    if hasattr(mod, "init_libnvinfer_plugins"):
        mod.init_libnvinfer_plugins(logger, "")
    builder = mod.Builder(logger)
    network, parser = _parse(trt, builder, logger, onnx_path, strongly_typed=trt.strongly_typed_only)
    explicit = _has_qdq(mod, network)
    if trt.strongly_typed_only and cfg.precision in ("int8", "best") and not explicit:
        raise ValueError(
            f"{trt.name} {trt.version} is strongly typed: int8 needs an explicitly quantized (Q/DQ) graph; "
            "build with --calib-input to quantize it (pip install 'rcnn-deploy[quant]')"
        )
    if explicit and cfg.precision not in ("int8", "best"):
        raise ValueError(f"{onnx_path.name} is quantized (Q/DQ nodes): build it with precision int8")
    ranges_set = 0
    # another graph's calibration cache; strongly typed builders reached this only with a Q/DQ graph (above)
    if cfg.int8_ranges_graph and cfg.precision in ("int8", "best") and not explicit:
        if calibrator is not None:
            raise ValueError("int8: give either a calibrator or int8_ranges_graph (a calibration cache to apply)")
        ranges_set = _transfer_ranges(trt, builder, network, logger, cfg)
    config = builder.create_builder_config()
    trt.set_workspace(config, int(cfg.workspace_gib * (1 << 30)))
    if cfg.tactic_sources:
        trt.restrict_tactics(config, cfg.tactic_sources)
    if cfg.opt_level is not None:
        trt.set_opt_level(config, cfg.opt_level)
    if cfg.precision == "fp32" and hasattr(mod.BuilderFlag, "TF32"):
        config.clear_flag(mod.BuilderFlag.TF32)  # fp32 means fp32 (TensorRT enables TF32 by default)
    if trt.has_implicit_precision_flags:
        if cfg.precision in ("fp16", "int8", "best"):
            config.set_flag(mod.BuilderFlag.FP16)
        if cfg.precision in ("int8", "best"):
            config.set_flag(mod.BuilderFlag.INT8)
            if calibrator is not None and not explicit:  # Q/DQ scales replace calibration
                config.int8_calibrator = calibrator
    glue_fp32 = 0
    if trt.has_implicit_precision_flags and cfg.precision != "fp32" and cfg.fp32_glue:
        glue_fp32 = keep_glue_fp32(mod, network, config, predictors=cfg.fp32_predictors)
        if cfg.verbose:
            what = "glue and predictor" if cfg.fp32_predictors else "glue"
            print(f"fp16/int8 rule: {glue_fp32} {what} layers kept in fp32")
    profile = builder.create_optimization_profile()
    needs_profile = False
    inputs = []
    for i in range(network.num_inputs):
        t = network.get_input(i)
        dims = list(t.shape)
        shapes = (cfg.profiles or {}).get(t.name) or _profile_shape(dims, cfg, t.name)
        inputs.append({"name": t.name, "shape": dims, "dtype": str(t.dtype)})
        if shapes is not None:
            profile.set_shape(t.name, *shapes)
            needs_profile = True
    if needs_profile:
        config.add_optimization_profile(profile)
        if calibrator is not None and not explicit and hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(_calibration_profile(builder, network, cfg, calibrator, profile))
    cache = None
    if cfg.timing_cache and hasattr(config, "create_timing_cache"):
        p = Path(cfg.timing_cache)
        cache = config.create_timing_cache(p.read_bytes() if p.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    t0 = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if blob is None and glue_fp32 and cfg.glue_fallback:
        print(
            f"WARNING: {trt.name} {trt.version} could not build {onnx_path.name} with its {glue_fp32} glue layers "
            "pinned to fp32; building again with the glue in the builder's precision (sidecar: glue_rule)",
            flush=True,
        )
        side = build_engine(onnx_path, engine_path, replace(cfg, fp32_glue=False), trt, calibrator)
        side["glue_rule"] = f"dropped: the build with {glue_fp32} glue layers pinned to fp32 failed"
        side["build_seconds"] = round(side["build_seconds"] + build_s, 3)
        atomic_write_json(str(engine_path) + ".json", side)
        return side
    if blob is None:
        raise RuntimeError(f"{trt.name} {trt.version} failed to build {onnx_path} (see the log above)")
    blob = bytes(blob)
    atomic_write_bytes(engine_path, blob)
    if cache is not None and cfg.timing_cache:
        save_timing_cache(config, cache, cfg.timing_cache)
    outputs = [
        {
            "name": network.get_output(i).name,
            "shape": list(network.get_output(i).shape),
            "dtype": str(network.get_output(i).dtype),
        }
        for i in range(network.num_outputs)
    ]
    sidecar = engine_sidecar(
        engine_path,
        blob,
        onnx_path,
        trt,
        cfg,
        inputs,
        outputs,
        build_seconds=round(build_s, 3),
        glue_layers_fp32=glue_fp32,
        int8=_int8_kind(cfg, explicit, ranges_set),
        int8_ranges=ranges_set or None,
        glue_rule="fp32" if glue_fp32 else ("n/a" if cfg.precision == "fp32" else "off"),
    )
    atomic_write_json(str(engine_path) + ".json", sidecar)
    return sidecar


def engine_sidecar(
    engine_path: Union[str, Path],
    blob: bytes,
    onnx_path: Union[str, Path],
    trt: TRT,
    cfg: BuildConfig,
    inputs: List[Dict[str, Any]],
    outputs: List[Dict[str, Any]],
    **build_info: Any,
) -> Dict[str, Any]:
    """The sidecar of an engine (its bytes ``blob``) built from ``onnx_path``: what :func:`read_sidecar` and the
    runtime's checks read (TensorRT flavour and version, GPU and compute capability, the engine's and the
    graph's sha256, build settings, I/O), plus ``build_info``."""
    gpu, cc = gpu_info()
    return {
        "sidecar_version": SIDECAR_VERSION,
        "engine": Path(engine_path).name,
        "engine_size": len(blob),
        "engine_sha256": hashlib.sha256(blob).hexdigest(),
        "onnx": Path(onnx_path).name,
        "onnx_sha256": _sha256_file(onnx_path),
        "trt": trt.name,
        "trt_version": trt.version,
        "gpu": gpu,
        "compute_capability": cc,
        "precision": cfg.precision,
        "build_config": asdict(cfg),
        **build_info,
        "inputs": inputs,
        "outputs": outputs,
    }


def _parse(trt: TRT, builder: Any, logger: Any, path: Path, strongly_typed: bool) -> Tuple[Any, Any]:
    """``path`` parsed into a new network of ``builder``: (network, parser). The parser owns the weights the
    network points to, so it must live as long as the network is used."""
    network = builder.create_network(trt.network_flags(strongly_typed=strongly_typed))
    parser = trt.module.OnnxParser(network, logger)
    if not parser.parse_from_file(str(path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"{trt.name} {trt.version} could not parse {path}:\n" + "\n".join(errors))
    return network, parser


def _int8_kind(cfg: BuildConfig, explicit: bool, ranges_set: int) -> Optional[str]:
    if cfg.precision not in ("int8", "best"):
        return None
    if explicit:
        return "explicit (Q/DQ)"
    if ranges_set:
        return (
            f"calibrated on {Path(str(cfg.int8_ranges_graph)).name}: {ranges_set} tensor ranges from "
            f"{Path(str(cfg.int8_ranges_cache)).name}"
        )
    return "calibrated"


def _transfer_ranges(trt: TRT, builder: Any, network: Any, logger: Any, cfg: BuildConfig) -> int:
    """Apply the calibration cache of ``cfg.int8_ranges_graph`` to ``network`` by layer name."""
    from .calibrator import apply_ranges, layer_table, map_ranges, read_calibration_cache, scope_prefix

    mod = trt.module
    cache = str(cfg.int8_ranges_cache or "")
    if not Path(cache).is_file():
        raise FileNotFoundError(
            f"no calibration cache at {cache!r}: build {Path(str(cfg.int8_ranges_graph)).name} in int8 with "
            "calibration images first (that build writes it)"
        )
    source, _parser = _parse(trt, builder, logger, Path(str(cfg.int8_ranges_graph)), strongly_typed=False)
    src, dst = layer_table(mod, source), layer_table(mod, network)
    ranges = map_ranges(src, dst, read_calibration_cache(cache), scope_prefix(list(src), list(dst)))
    n = apply_ranges(mod, network, ranges)
    if not n:
        raise ValueError(f"none of {cache}'s tensors is in this graph: calibrate a graph of the same model")
    return n


def _has_qdq(mod: Any, network: Any) -> bool:
    """Whether the parsed network is explicitly quantized (Quantize/Dequantize layers)."""
    kinds = {getattr(mod.LayerType, n) for n in ("QUANTIZE", "DEQUANTIZE") if hasattr(mod.LayerType, n)}
    return any(network.get_layer(i).type in kinds for i in range(network.num_layers))


def save_timing_cache(config: Any, cache: Any, path: Union[str, Path]) -> None:
    """Write ``cache`` to ``path`` merged with what the file holds now: builds that share a cache file side by
    side (parallel lanes) each loaded it when they started, and a plain write would drop the timings of every
    build that finished in between. Writers take an exclusive lock on ``path.lock``."""
    import fcntl

    p = Path(path)
    with open(str(p) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if p.is_file() and p.stat().st_size:
            try:
                on_disk = config.create_timing_cache(p.read_bytes())
                cache.combine(on_disk, True)  # entries of another device / version are skipped, not fatal
            except (RuntimeError, TypeError, AttributeError) as e:  # the engine is built: keep going
                print(f"WARNING: could not merge the timing cache {p} ({e}); writing this build's alone", flush=True)
        atomic_write_bytes(p, bytes(cache.serialize()))


def _calibration_profile(builder: Any, network: Any, cfg: BuildConfig, calibrator: Any, profile: Any) -> Any:
    """TensorRT calibrates at the calibration profile's opt shape: make that the calibrator's batch (a
    dynamic 1:1:8 engine then calibrates 8 images per launch instead of 1)."""
    cb = int(calibrator.get_batch_size())
    lo, opt, hi = cfg.batch
    if cb == opt or not lo <= cb <= hi:
        return profile
    cal = builder.create_optimization_profile()
    cal_cfg = BuildConfig(batch=(lo, cb, hi), rois=cfg.rois)
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shapes = _profile_shape(list(t.shape), cal_cfg, t.name)
        if shapes is not None:
            cal.set_shape(t.name, *shapes)
    return cal


def keep_glue_fp32(mod: Any, network: Any, config: Any, predictors: bool = False) -> int:
    """With builder fp16/int8 flags, pin the arithmetic layers outside the network scopes (the glue: box
    decoding, IoU/NMS inputs, level assignment, ROIAlign sampling, softmax) to fp32: the rule of
    ``rcnn_deploy.precision_rule``. Only layers that compute are pinned: data movement (shuffle, slice,
    concat, gather) carries its input's type, and type constraints on it leave TensorRT 8.6's Myelin regions
    with no implementation ("Could not find any implementation for node {ForeignNode[...]}", seen on the H100
    with the fused plugin graph). Plugins outside the network scopes (EfficientNMS_TRT, which has an fp16
    mode, and PyramidROIAlign_TRT) are glue too: pinned to fp32, their float outputs fp32; unpinned, TensorRT
    may run an NMS on fp16 boxes and scores and return fp16 boxes (steps of 1 px at 1024-2047 px). With
    ``predictors``, the heads' last layers (convolutions and matrix multiplies included) are pinned too."""
    from ...precision_rule import in_network_scope, in_predictor_scope

    L = mod.LayerType
    arithmetic = {
        getattr(L, n)
        for n in ("ELEMENTWISE", "UNARY", "ACTIVATION", "REDUCE", "SOFTMAX", "MATRIX_MULTIPLY", "SELECT", "SCALE")
        if hasattr(L, n)
    }
    weighted = {getattr(L, n) for n in ("CONVOLUTION", "DECONVOLUTION", "FULLY_CONNECTED") if hasattr(L, n)}
    plugins = {getattr(L, n) for n in ("PLUGIN", "PLUGIN_V2", "PLUGIN_V3") if hasattr(L, n)}
    kept = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        plugin = layer.type in plugins
        if plugin:
            if in_network_scope(layer.name):
                continue
        elif predictors and in_predictor_scope(layer.name):
            if layer.type not in arithmetic | weighted:
                continue
        elif layer.type not in arithmetic or in_network_scope(layer.name):
            continue
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        # a plugin's integer outputs (NMS counts and classes) stay int32; other layers are pinned only when
        # every output is a float data tensor
        if not plugin and (
            not outs or any(o.dtype != mod.DataType.FLOAT or getattr(o, "is_shape_tensor", False) for o in outs)
        ):
            continue
        try:
            layer.precision = mod.DataType.FLOAT
            for j, o in enumerate(outs):
                if o.dtype == mod.DataType.FLOAT:
                    layer.set_output_type(j, mod.DataType.FLOAT)
        except (RuntimeError, TypeError):  # some layer kinds (loop boundaries, ...) take no precision
            continue
        kept += 1
    if kept:
        config.set_flag(mod.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    return kept


def _sha256_file(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


_HEX64 = re.compile(r"[0-9a-f]{64}")


def _j(x: Any) -> str:
    text = json.dumps(x, default=str)
    return text if len(text) <= 70 else text[:67] + "..."


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_sidecar(engine_path: Union[str, Path]) -> Dict[str, Any]:
    """The engine's sidecar (``ENGINE.json``), every field the runtime relies on checked: a missing, damaged or
    edited sidecar is a UserError naming the field and the rebuild."""
    p = Path(str(engine_path) + ".json")
    rebuild = "rebuild the engine with 'rcnn-deploy build', which writes its sidecar"
    if not p.is_file():
        raise UserError(
            f"the engine has no sidecar {p.name}, so its TensorRT version and I/O are unknown",
            where=engine_path,
            fix=rebuild,
        )
    try:
        meta = json.loads(p.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise UserError(
            f"not a readable JSON sidecar ({type(e).__name__}: {str(e)[:120]})", where=p, fix=rebuild
        ) from None

    def bad(field: str, what: str) -> UserError:
        return UserError(what, where=f"{p}: {field}", fix=rebuild)

    if not isinstance(meta, dict):
        raise UserError("the sidecar must be a JSON object", where=p, fix=rebuild)
    required: Tuple[str, ...] = (
        "sidecar_version",
        "engine",
        "engine_size",
        "engine_sha256",
        "onnx",
        "onnx_sha256",
        "trt",
    )
    required += ("trt_version", "precision", "build_config", "inputs", "outputs")
    for key in required:
        if key not in meta:
            raise bad(key, "missing")
    version = meta.get("sidecar_version")
    if version != SIDECAR_VERSION:
        raise bad(
            "sidecar_version",
            f"is {version!r}; this rcnn-deploy reads sidecar version {SIDECAR_VERSION} (engine checksums); the "
            "engine was built by another rcnn-deploy",
        )
    for key in ("engine", "onnx", "trt", "trt_version", "precision"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise bad(key, f"must be a non-empty string, got {_j(meta.get(key))}")
    if meta["precision"] not in PRECISIONS:
        raise bad("precision", f"must be one of {', '.join(PRECISIONS)}, got {_j(meta['precision'])}")
    for key in ("engine_sha256", "onnx_sha256"):
        if not isinstance(meta.get(key), str) or not _HEX64.fullmatch(meta[key]):
            raise bad(key, f"must be a sha256 (64 lowercase hex digits), got {_j(meta.get(key))}")
    if not _is_int(meta.get("engine_size")) or meta["engine_size"] < 1:
        raise bad("engine_size", f"must be a positive integer, got {_j(meta.get('engine_size'))}")
    cc = meta.get("compute_capability")
    if cc is not None and not (isinstance(cc, str) and re.fullmatch(r"\d+\.\d+", cc)):
        raise bad("compute_capability", f"must be null or MAJOR.MINOR like '9.0', got {_j(cc)}")
    cfg = meta.get("build_config")
    if not isinstance(cfg, dict):
        raise bad("build_config", "must be an object")
    b = cfg.get("batch")
    if not (isinstance(b, list) and len(b) == 3 and all(_is_int(x) for x in b) and 1 <= b[0] <= b[1] <= b[2]):
        raise bad("build_config.batch", f"must be [MIN, OPT, MAX] with 1 <= MIN <= OPT <= MAX, got {_j(b)}")
    for group in ("inputs", "outputs"):
        tensors = meta.get(group)
        if not isinstance(tensors, list) or not tensors:
            raise bad(group, "must be a non-empty list of tensors")
        for i, t in enumerate(tensors):
            ok = (
                isinstance(t, dict)
                and isinstance(t.get("name"), str)
                and isinstance(t.get("dtype"), str)
                and isinstance(t.get("shape"), list)
                and all(_is_int(d) and d >= -1 for d in t["shape"])
            )
            if not ok:
                raise bad(f"{group}[{i}]", f"must be {{name, shape: [int...], dtype}}, got {_j(t)}")
    return meta
