"""The I/O contract: one JSON file that describes an exported model for every later stage.

It names each graph file, its inputs and outputs (names, shapes with symbolic dims, dtypes), the model spec
(classes, preprocessing, thresholds, flavour), the input size and batch range. ``build``, the runtimes and
the tools read it instead of re-deriving anything from the graphs. numpy/json only: it is read beside
TensorRT on Python 3.9 too.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

from ._io import atomic_write_json
from .config import ModelSpec

CONTRACT_FILE = "contract.json"
FORMAT_VERSION = 1


@dataclass
class TensorSpec:
    name: str
    shape: List[Union[int, str]]  # str = symbolic dim ("batch", "rois")
    dtype: str  # numpy dtype name


@dataclass
class GraphSpec:
    role: str  # "fused" | "backbone" | "box_head" | "mask_head"
    file: str  # relative to the contract's directory
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]


@dataclass
class Contract:
    model: str
    graph: str  # "fused" | "split"
    nms: Optional[str]  # "onnx" | "plugin" for fused graphs, None for split
    input_hw: Tuple[int, int]
    batch: Tuple[int, int]  # min, max
    spec: ModelSpec
    graphs: List[GraphSpec]
    opset: int
    producer: str = ""
    format_version: int = FORMAT_VERSION
    notes: Dict[str, Any] = field(default_factory=dict)

    def graph_for(self, role: str) -> GraphSpec:
        for gs in self.graphs:
            if gs.role == role:
                return gs
        raise KeyError(f"contract has no {role!r} graph (has {[g.role for g in self.graphs]})")

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["spec"] = self.spec.to_dict()
        return d

    def save(self, directory: Union[str, Path]) -> Path:
        return atomic_write_json(Path(directory) / CONTRACT_FILE, self.to_dict())

    @classmethod
    def load(cls, path: Union[str, Path]) -> Contract:
        """Load ``contract.json`` (or the directory holding it) with a clear error when it is not one."""
        p = Path(path)
        if p.is_dir():
            p = p / CONTRACT_FILE
        if not p.is_file():
            raise FileNotFoundError(f"no I/O contract at {p}; run 'rcnn-deploy export' first (it writes one)")
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not valid JSON ({e}); re-run 'rcnn-deploy export'") from e
        if d.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{p} has contract format {d.get('format_version')!r}, this rcnn-deploy reads {FORMAT_VERSION}; "
                "re-export with this version"
            )
        graphs = [
            GraphSpec(
                role=gd["role"],
                file=gd["file"],
                inputs=[TensorSpec(**t) for t in gd["inputs"]],
                outputs=[TensorSpec(**t) for t in gd["outputs"]],
            )
            for gd in d["graphs"]
        ]
        return cls(
            model=d["model"],
            graph=d["graph"],
            nms=d.get("nms"),
            input_hw=tuple(d["input_hw"]),
            batch=tuple(d["batch"]),
            spec=ModelSpec.from_dict(d["spec"]),
            graphs=graphs,
            opset=d["opset"],
            producer=d.get("producer", ""),
            notes=d.get("notes", {}),
        )
