"""INT8 entropy calibration for TensorRT 8.6 / 10 (implicit quantization), the seed's semantics: calibrate on
images run through the model's own preprocessing, and reuse an existing calibration cache without
calibrating again. Images arrive as an ``[N, 3, H, W]`` float32 array (RGB 0-255: the graphs normalise
inside), e.g. written by ``rcnn-deploy build --calib-input DIR``."""

from __future__ import annotations

import os
import struct
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set

import numpy as np

from ..._io import atomic_write_bytes
from .compat import TRT


def make_calibrator(trt: TRT, images_npy: str, cache_path: str, batch: int = 1) -> Any:
    mod = trt.module
    cuda = __import__("polygraphy.cuda", fromlist=["cuda"])

    base: Any = mod.IInt8EntropyCalibrator2  # a class of the TensorRT module loaded at run time

    class EntropyCalibrator(base):
        def __init__(self) -> None:
            super().__init__()
            self.cache_path = cache_path
            self.images: Optional[np.ndarray] = None
            if not os.path.isfile(cache_path):
                self.images = np.load(images_npy, mmap_mode="r")
            self.batch = batch
            self.index = 0
            self.device: Any = None
            self.batches_used = 0

        def get_batch_size(self) -> int:
            return self.batch

        def get_batch(self, names: List[str]) -> Optional[List[int]]:
            if self.images is None or self.index + self.batch > len(self.images):
                return None
            chunk = np.ascontiguousarray(self.images[self.index : self.index + self.batch], dtype=np.float32)
            self.index += self.batch
            if self.device is None:
                self.device = cuda.DeviceArray(shape=chunk.shape, dtype=np.float32)
            self.device.copy_from(chunk)
            self.batches_used += 1
            return [self.device.ptr]

        def read_calibration_cache(self) -> Optional[bytes]:
            if os.path.isfile(self.cache_path):
                with open(self.cache_path, "rb") as f:
                    return f.read()
            return None

        def write_calibration_cache(self, cache: Any) -> None:
            atomic_write_bytes(self.cache_path, bytes(cache))

    return EntropyCalibrator()


# ----------------------------------------------------------------------------------- one calibration, many graphs
# Calibrating a whole fused Mask R-CNN graph in TensorRT 8.6 was slow on the H200 (the 256² fused graph, built
# alone, had not got past calibration after 178 s; results_table_run7.json), and it gives int8 ranges to all
# of its ~1200 tensors, the glue's included, which must not run int8 anyway. The network int8 speeds up is the
# backbone + FPN + RPN head, one graph of the split export: it calibrates on its own, and its cache is applied
# by layer name to every other graph of the same model and size (the fused graphs name those layers by the
# same module paths under one scope, "/net/backbone/..."): one calibration per model and size, reused by every
# int8 engine.


def read_calibration_cache(path: str) -> Dict[str, float]:
    """A TensorRT calibration cache as ``tensor name -> absolute max``. The file is the calibrator's id line
    ("TRT-8601-EntropyCalibration2") and one ``name: hex`` line per tensor, hex being the big-endian float32
    scale (absolute max / 127)."""
    with open(path, "rb") as f:
        lines = f.read().decode("utf-8", errors="replace").splitlines()
    if not lines or not lines[0].startswith("TRT-"):
        raise ValueError(f"{path} is not a TensorRT calibration cache (its first line should be 'TRT-...')")
    ranges: Dict[str, float] = {}
    for i, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        if not sep:
            continue
        try:
            scale = struct.unpack("!f", bytes.fromhex(value.strip()))[0]
        except ValueError as e:
            raise ValueError(f"{path} line {i}: {line!r} is not 'tensor: hex scale'") from e
        ranges[name.strip()] = scale * 127.0
    return ranges


class Layer(NamedTuple):
    outputs: List[Optional[str]]  # output tensor names (None: not a float tensor, so no int8 range)
    inputs: List[Optional[str]]  # per float input: the producing layer's name (None: a network input)
    input_names: Sequence[Optional[str]] = ()  # per float input: the tensor's name (None: a constant's, weights)


def layer_table(mod: Any, network: Any) -> Dict[str, Layer]:
    """Layer name (the ONNX node name) -> its float outputs and the producers of its float inputs (integer
    tensors, shape arithmetic, are left out: it is numbered differently in different exports and has no
    int8 range)."""
    producer: Dict[str, str] = {}
    constants: Set[str] = set()  # tensors that constant layers make (weights: same in both graphs, no range)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            producer[layer.get_output(j).name] = layer.name
            if layer.type == mod.LayerType.CONSTANT:
                constants.add(layer.get_output(j).name)
    table: Dict[str, Layer] = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        inputs, names = [], []
        for j in range(layer.num_inputs):
            t = layer.get_input(j)
            if t is not None and t.dtype == mod.DataType.FLOAT:
                inputs.append(producer.get(t.name))
                names.append(None if t.name in constants else t.name)
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        table[layer.name] = Layer([t.name if t.dtype == mod.DataType.FLOAT else None for t in outs], inputs, names)
    return table


def scope_prefix(source: Sequence[str], target: Sequence[str]) -> str:
    """The scope the target graph puts the source graph's layers under: the prefix most of the source's
    convolutions get in the target ("/net" when "/backbone/body/conv1/Conv" is "/net/backbone/body/conv1/Conv")."""
    targets = set(target)
    counts: Dict[str, int] = {}
    convs = [s for s in source if s.endswith("/Conv")]
    for s in convs:
        if s in targets:
            counts[""] = counts.get("", 0) + 1
            continue
        for t in target:
            if t.endswith(s) and t[: -len(s)].startswith("/"):
                counts[t[: -len(s)]] = counts.get(t[: -len(s)], 0) + 1
    if not counts or max(counts.values()) * 2 < len(convs):
        raise ValueError(
            f"the calibration graph's convolutions ({len(convs)}) are not layers of this graph under one scope: "
            "calibrate a graph exported from the same model"
        )
    return max(counts, key=lambda k: counts[k])


def map_ranges(
    source: Dict[str, Layer], target: Dict[str, Layer], ranges: Dict[str, float], prefix: str
) -> Dict[str, float]:
    """Target tensor name -> absolute max, for the network-scope layers both graphs have: output j of source
    layer L carries the same values as output j of target layer ``prefix + L`` when L's float inputs come
    from the same layers in both (checked: names are module paths plus per-scope counters, and a counter can
    mean another node in another export). Top-level layers ("/Div_1", the input normalisation) are not matched
    by name; what they feed into the network is: a float input that both layers take from outside the network
    scopes (the normalised image into conv1) gets the source tensor's range, so the first convolution can run in
    int8 in the target as it does in the calibrated graph."""
    from ...precision_rule import in_network_scope

    def same_inputs(a: Layer, b: Layer) -> bool:
        if len(a.inputs) != len(b.inputs):
            return False
        for x, y in zip(a.inputs, b.inputs):
            if x is not None and in_network_scope(x):
                if y != prefix + x:
                    return False
            elif y is not None and in_network_scope(y):  # from outside the network in one graph only
                return False
        return True

    out: Dict[str, float] = {}
    for name, layer in source.items():
        mine = target.get(prefix + name)
        if not in_network_scope(name) or mine is None or len(mine.outputs) != len(layer.outputs):
            continue
        if not same_inputs(layer, mine):
            continue
        for s, t in zip(layer.outputs, mine.outputs):
            if s is not None and t is not None and s in ranges:
                out[t] = ranges[s]
        for x, s, t in zip(layer.inputs, layer.input_names, mine.input_names):
            if (x is None or not in_network_scope(x)) and s in ranges and t is not None:  # same_inputs: outside in both
                out[t] = ranges[s]
    return out


def apply_ranges(mod: Any, network: Any, ranges: Dict[str, float]) -> int:
    """Set the dynamic range of this network's float tensors named in ``ranges``; returns how many were set."""
    n = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        for j in range(layer.num_outputs):
            t = layer.get_output(j)
            amax = ranges.get(t.name)
            if amax is not None and amax > 0 and t.dtype == mod.DataType.FLOAT:
                t.set_dynamic_range(-float(amax), float(amax))
                n += 1
    return n
