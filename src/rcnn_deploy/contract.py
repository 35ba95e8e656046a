"""The I/O contract: one JSON file that describes an exported model for every later stage.

It names each graph file with its size and sha256, its inputs and outputs (names, shapes with symbolic dims,
dtypes), the model spec (classes, preprocessing, thresholds, flavour), the input size and batch range.
``build``, the runtimes and the tools read it instead of re-deriving anything from the graphs. numpy/json
only: it is read beside TensorRT on Python 3.9 too.

Loading validates every field: a missing, mistyped or out-of-range field, or fields that contradict each
other (an input size the graphs do not take, a class list of another length than the classifier's), is a
:class:`~rcnn_deploy.errors.UserError` whose ``where`` is the file and the field path
(``out/contract.json: graphs[1].inputs[0].shape``). Format 1 contracts (no checksums) are refused with a
re-export message: their graphs could not be checked before they run.

The runtimes check a graph against the contract beside it before they run it (:func:`verified_graph_bytes`):
a graph file whose size or sha256 differs from what the export recorded is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from .config import FLAVOURS, MODEL_NAMES, ModelSpec, default_resize
from .errors import UserError

CONTRACT_FILE = "contract.json"
LETTERBOX_FILE = "letterbox.onnx"  # beside a fused graph: export.letterbox_graph (GPU decoding with TensorRT)
FORMAT_VERSION = 2  # 2: graph sha256 and size (format 1 had none and is refused: its graphs cannot be checked)
GRAPH_KINDS = ("fused", "split")
NMS_KINDS = ("onnx", "plugin", "tensor")
ROLES = ("fused", "backbone", "box_head", "mask_head")
FUSED_OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes", "detection_masks")
DTYPES = ("float32", "float16", "int32", "int64", "int8", "uint8", "bool")
MAX_BATCH = 1024  # a contract asking for more is damaged (the runtime pads every call up to the minimum)
MAX_SIDE = 8192  # input side in pixels, likewise
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HASH_CHUNK = 1 << 22


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
    sha256: Optional[str] = None  # hex digest of the file as exported (always set in a loaded contract)
    size: Optional[int] = None  # bytes, likewise


@dataclass
class Contract:
    model: str
    graph: str  # "fused" | "split"
    nms: Optional[str]  # "onnx" | "plugin" | "tensor" for fused graphs, None for split
    input_hw: Tuple[int, int]
    batch: Tuple[int, int]  # min, max
    spec: ModelSpec
    graphs: List[GraphSpec]
    opset: int
    producer: str = ""
    format_version: int = FORMAT_VERSION
    notes: Dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = field(default=None, compare=False, repr=False)  # the file it was loaded from

    def graph_for(self, role: str) -> GraphSpec:
        for gs in self.graphs:
            if gs.role == role:
                return gs
        raise UserError(
            f"the contract has no {role!r} graph (it has {[g.role for g in self.graphs]})",
            where=self.path,
            fix="export the graph kind this needs (--graph fused / split)",
        )

    def export_command(self, directory: Union[str, Path, None] = None) -> str:
        """The ``rcnn-deploy export`` command that writes this export again (the weights path is not recorded)."""
        d = directory if directory is not None else (self.path.parent if self.path else "DIR")
        lo, hi = self.batch
        cmd = (
            f"rcnn-deploy export -m {self.model} -w WEIGHTS --height {self.input_hw[0]} --width {self.input_hw[1]} "
            f"--batch {lo if lo == hi else f'{lo}:{hi}'} --graph {self.graph}"
        )
        if self.nms:
            cmd += f" --nms {self.nms}"
        return cmd + f" -o {d}"

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        d["spec"] = self.spec.to_dict()
        return d

    @classmethod
    def load(cls, path: Union[str, Path]) -> Contract:
        """Load ``contract.json`` (or the directory holding it); every problem is a UserError naming the field."""
        p = Path(path)
        if not p.exists():  # an export killed between its two renames (where directories cannot be swapped)
            recover_interrupted_export(p.parent if p.name == CONTRACT_FILE else p)
        if p.is_dir():
            p = p / CONTRACT_FILE
        if not p.is_file():
            raise UserError(
                "no I/O contract (contract.json) here", where=p, fix="run 'rcnn-deploy export' first; it writes one"
            )
        try:
            text = p.read_bytes().decode("utf-8")
        except OSError as e:
            raise UserError(f"cannot read the contract ({e.strerror or e})", where=p) from None
        except UnicodeDecodeError as e:
            raise UserError(
                f"the contract is not UTF-8 text (byte {e.start}): the file is damaged", where=p, fix=_REEXPORT
            ) from None
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(
                f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): the file is damaged or truncated",
                where=p,
                fix=_REEXPORT,
            ) from None
        except (ValueError, RecursionError) as e:  # digit limit of huge integers, absurd nesting
            raise UserError(
                f"not a readable JSON contract ({type(e).__name__}: {str(e)[:120]})", where=p, fix=_REEXPORT
            ) from None
        return cls.from_dict(d, where=p)

    @classmethod
    def from_dict(cls, d: Any, where: Union[str, Path] = CONTRACT_FILE) -> Contract:
        """Validate a parsed contract; raise a UserError naming ``where`` and the field path of each problem."""
        v = _Validator(str(where))
        c = v.contract(d)
        v.raise_if_any()
        assert c is not None
        if isinstance(where, Path):
            c.path = where
        return c


_REEXPORT = "re-export with 'rcnn-deploy export', or undo the edit"


def check_spec(spec: ModelSpec, where: str = "model spec") -> None:
    """Validate a model spec as a contract's ``spec`` field is validated (UserError naming the field)."""
    v = _Validator(where)
    v.spec(json.loads(json.dumps(spec.to_dict())), "spec")
    if v.problems:
        path, what = v.problems[0]
        raise UserError(what, where=f"{where}: {path}")


# ------------------------------------------------------------------------------------------- validation
class _Bad:
    """Marks a field that failed validation (later checks that need it are skipped)."""


_BAD: Any = _Bad()


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x: Any) -> bool:
    return (isinstance(x, float) or _is_int(x)) and math.isfinite(x)


def _got(x: Any) -> str:
    """``x`` as an error message shows it: ``a string "x"``, ``null``, ``NaN``, ``a list [1, 2]``."""
    if x is None:
        return "null"
    if isinstance(x, float) and not math.isfinite(x):
        return "NaN" if x != x else ("Infinity" if x > 0 else "-Infinity")
    kinds = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }
    kind = next((n for t, n in kinds.items() if type(x) is t), type(x).__name__)
    return f"{kind} {_short(x)}"


def _short(x: Any) -> str:
    text = json.dumps(x) if isinstance(x, (list, dict, str, int, float, bool, type(None))) else repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


class _Validator:
    def __init__(self, where: str) -> None:
        self.where = where
        self.problems: List[Tuple[str, str]] = []

    # ---- reporting
    def fail(self, path: str, what: str) -> Any:
        self.problems.append((path, what))
        return _BAD

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        (path, what), rest = self.problems[0], self.problems[1:]
        if rest:
            shown = "; ".join(f"{p}: {w}" for p, w in rest[:4])
            what += f" (and {len(rest)} more: {shown}{' ...' if len(rest) > 4 else ''})"
        fix = None if "re-export" in what else _REEXPORT
        raise UserError(what, where=f"{self.where}: {path}" if path else self.where, fix=fix)

    # ---- typed getters
    def get(
        self, d: Dict[str, Any], key: str, path: str, check: Callable[[Any, str], Any], required: bool = True
    ) -> Any:
        sub = f"{path}.{key}" if path else key
        if key not in d:
            return self.fail(sub, "missing") if required else None
        return check(d[key], sub)

    def obj(self, x: Any, path: str) -> Any:
        return x if isinstance(x, dict) else self.fail(path, f"must be an object, got {_got(x)}")

    def string(self, x: Any, path: str) -> Any:
        if not isinstance(x, str) or not x:
            return self.fail(path, f"must be a non-empty string, got {_got(x)}")
        return x

    def choice(self, options: Tuple[str, ...]) -> Callable[[Any, str], Any]:
        def check(x: Any, path: str) -> Any:
            if x not in options or not isinstance(x, str):
                return self.fail(path, f"must be one of {', '.join(options)}, got {_short(x)}")
            return x

        return check

    def integer(self, lo: Optional[int] = None, hi: Optional[int] = None) -> Callable[[Any, str], Any]:
        def check(x: Any, path: str) -> Any:
            if not _is_int(x):
                return self.fail(path, f"must be an integer, got {_got(x)}")
            if (lo is not None and x < lo) or (hi is not None and x > hi):
                rng = f">= {lo}" if hi is None else (f"<= {hi}" if lo is None else f"in {lo}..{hi}")
                return self.fail(path, f"must be {rng}, got {x}")
            return x

        return check

    def int_list(self, n: int, path: str, x: Any, lo: int = 1, hi: Optional[int] = None) -> Any:
        if not isinstance(x, list) or len(x) != n:
            return self.fail(path, f"must be a list of {n} integers, got {_got(x)}")
        out = [self.integer(lo, hi)(e, f"{path}[{i}]") for i, e in enumerate(x)]
        return _BAD if any(e is _BAD for e in out) else out

    def no_unknown(self, d: Dict[str, Any], known: Tuple[str, ...], path: str) -> None:
        for k in d:
            if k not in known:
                self.fail(
                    f"{path}.{k}" if path else str(k), "unknown field (written by a newer rcnn-deploy, or a typo?)"
                )

    # ---- the contract
    def contract(self, d: Any) -> Optional[Contract]:
        if not isinstance(d, dict):
            self.fail("", f"the contract must be a JSON object, got {_got(d)}")
            return None
        version = self.get(d, "format_version", "", self.integer(1))
        if version is not _BAD and version < FORMAT_VERSION:
            self.fail(
                "format_version",
                f"contract format {version} records no graph checksums, so its graphs cannot be checked before "
                "they run; re-export with this rcnn-deploy (format 2)",
            )
            return None
        if version is not _BAD and version > FORMAT_VERSION:
            self.fail(
                "format_version",
                f"contract format {version} was written by a newer rcnn-deploy (this one reads format "
                f"{FORMAT_VERSION}): upgrade rcnn-deploy or re-export",
            )
            return None
        known = tuple(f.name for f in fields(Contract) if f.name != "path")
        self.no_unknown(d, known, "")
        model = self.get(d, "model", "", self.choice(MODEL_NAMES))
        graph = self.get(d, "graph", "", self.choice(GRAPH_KINDS))
        nms = d.get("nms")
        if graph == "fused":
            nms = self.get(d, "nms", "", self.choice(NMS_KINDS))
        elif graph == "split" and nms is not None:
            nms = self.fail("nms", f"must be null for a split export, got {_short(nms)}")
        hw = self.get(d, "input_hw", "", lambda x, p: self.int_list(2, p, x, 32, MAX_SIDE))
        if hw is not _BAD:
            for i, s in enumerate(hw):
                if s % 32:
                    hw = self.fail(f"input_hw[{i}]", f"must be a multiple of 32, got {s}")
                    break
        batch = self.get(d, "batch", "", lambda x, p: self.int_list(2, p, x, 1, MAX_BATCH))
        if batch is not _BAD and batch[0] > batch[1]:
            batch = self.fail("batch", f"must be [MIN, MAX] with MIN <= MAX, got {batch}")
        opset = self.get(d, "opset", "", self.integer(7, 30))
        producer = self.get(
            d,
            "producer",
            "",
            lambda x, p: x if isinstance(x, str) else self.fail(p, "must be a string"),
            required=False,
        )
        notes = self.get(d, "notes", "", self.obj, required=False)
        spec = self.get(d, "spec", "", self.spec)
        graphs = self.get(d, "graphs", "", self.graphs)
        if self.problems:
            return None
        c = Contract(
            model=model,
            graph=graph,
            nms=nms,
            input_hw=(hw[0], hw[1]),
            batch=(batch[0], batch[1]),
            spec=spec,
            graphs=graphs,
            opset=opset,
            producer=producer or "",
            format_version=version,
            notes=notes or {},
        )
        self.consistency(c)
        return c

    def graphs(self, x: Any, path: str) -> Any:
        if not isinstance(x, list) or not x:
            return self.fail(path, f"must be a non-empty list of graphs, got {_got(x)}")
        out = []
        for i, g in enumerate(x):
            out.append(self.graph_spec(g, f"{path}[{i}]"))
        if any(g is _BAD for g in out):
            return _BAD
        roles = [g.role for g in out]
        for i, r in enumerate(roles):
            if r in roles[:i]:
                return self.fail(f"{path}[{i}].role", f"role {r!r} appears twice")
        files = [g.file for g in out]
        for i, f in enumerate(files):
            if f in files[:i]:
                return self.fail(f"{path}[{i}].file", f"file {f!r} appears twice")
        return out

    def graph_spec(self, g: Any, path: str) -> Any:
        if self.obj(g, path) is _BAD:
            return _BAD
        n = len(self.problems)
        self.no_unknown(g, tuple(f.name for f in fields(GraphSpec)), path)
        role = self.get(g, "role", path, self.choice(ROLES))
        file = self.get(g, "file", path, self.file_name)
        sha = self.get(g, "sha256", path, self.sha256)
        size = self.get(g, "size", path, self.integer(1))
        ins = self.get(g, "inputs", path, self.tensors)
        outs = self.get(g, "outputs", path, self.tensors)
        if len(self.problems) > n:
            return _BAD
        return GraphSpec(role, file, ins, outs, sha, size)

    def file_name(self, x: Any, path: str) -> Any:
        if self.string(x, path) is _BAD:
            return _BAD
        if "/" in x or "\\" in x or x in (".", "..") or x.startswith("."):
            return self.fail(path, f"must be a plain file name in the contract's directory, got {_short(x)}")
        if not x.endswith(".onnx"):
            return self.fail(path, f"must name an .onnx file, got {_short(x)}")
        return x

    def sha256(self, x: Any, path: str) -> Any:
        if not isinstance(x, str) or not _SHA256.fullmatch(x):
            return self.fail(path, f"must be 64 lowercase hex digits (a sha256), got {_short(x)}")
        return x

    def tensors(self, x: Any, path: str) -> Any:
        if not isinstance(x, list) or not x:
            return self.fail(path, f"must be a non-empty list of tensors, got {_got(x)}")
        out = []
        n = len(self.problems)
        for i, t in enumerate(x):
            tp = f"{path}[{i}]"
            if self.obj(t, tp) is _BAD:
                continue
            self.no_unknown(t, ("name", "shape", "dtype"), tp)
            name = self.get(t, "name", tp, self.string)
            shape = self.get(t, "shape", tp, self.shape)
            dtype = self.get(t, "dtype", tp, self.choice(DTYPES))
            out.append(TensorSpec(name, shape, dtype))
        if len(self.problems) > n:
            return _BAD
        names = [t.name for t in out]
        for i, nm in enumerate(names):
            if nm in names[:i]:
                return self.fail(f"{path}[{i}].name", f"tensor name {nm!r} appears twice")
        return out

    def shape(self, x: Any, path: str) -> Any:
        if not isinstance(x, list) or not 1 <= len(x) <= 8:
            return self.fail(path, f"must be a list of 1-8 dims (integers or names), got {_got(x)}")
        for i, s in enumerate(x):
            if not ((_is_int(s) and 0 <= s <= 1 << 31) or (isinstance(s, str) and s.isidentifier())):
                return self.fail(f"{path}[{i}]", f"must be a non-negative integer or a dim name, got {_short(s)}")
        return x

    # ---- the model spec
    def spec(self, x: Any, path: str) -> Any:
        if self.obj(x, path) is _BAD:
            return _BAD
        n = len(self.problems)
        specs = {f.name: f for f in fields(ModelSpec)}
        self.no_unknown(x, tuple(specs), path)
        kw: Dict[str, Any] = {}
        for name, f in specs.items():
            fp = f"{path}.{name}"
            if name == "resize" and name not in x and isinstance(x.get("flavour"), str):
                kw[name] = default_resize(x["flavour"])  # contracts written before the field existed
                continue
            if name not in x:
                if f.default is MISSING and f.default_factory is MISSING:
                    self.fail(fp, "missing")
                continue
            value = _typed(x[name], str(f.type), fp, self)
            if value is not _BAD:
                kw[name] = value
        if len(self.problems) > n:
            return _BAD
        for name, value in kw.items():
            _range_check(name, value, f"{path}.{name}", self)
        if len(self.problems) > n:
            return _BAD
        try:
            return ModelSpec(**kw)
        except (TypeError, ValueError) as e:  # pragma: no cover - every field was checked above
            return self.fail(path, f"not a valid model spec ({e})")

    # ---- fields that must agree with each other
    def consistency(self, c: Contract) -> None:
        s = c.spec
        if s.name != c.model:
            self.fail("spec.name", f"is {s.name!r} but the contract's model is {c.model!r}")
        if s.flavour != c.model.split("-")[0]:
            self.fail("spec.flavour", f"is {s.flavour!r} but the model {c.model!r} is {c.model.split('-')[0]}")
        if s.masks != c.model.endswith("maskrcnn"):
            self.fail(
                "spec.masks", f"is {s.masks} but the model {c.model!r} {'has' if not s.masks else 'has no'} masks"
            )
        n = len(s.class_names)
        for key in ("label_ids", "category_ids"):
            if len(getattr(s, key)) != n:
                self.fail(f"spec.{key}", f"has {len(getattr(s, key))} entries but spec.class_names has {n}")
        if len(s.anchor_sizes) != len(s.anchor_strides):
            self.fail(
                "spec.anchor_sizes", f"has {len(s.anchor_sizes)} levels, spec.anchor_strides {len(s.anchor_strides)}"
            )
        if len({len(a) for a in s.anchor_sizes}) > 1:
            self.fail("spec.anchor_sizes", "every level must have the same number of sizes")
        lo, hi = s.roi_levels
        if not 1 <= lo <= hi <= 9:
            self.fail("spec.roi_levels", f"must be [LO, HI] with 1 <= LO <= HI <= 9, got {list(s.roi_levels)}")
        if self.problems:
            return
        want_roles = ["fused"] if c.graph == "fused" else ["backbone", "box_head"] + (["mask_head"] if s.masks else [])
        roles = [g.role for g in c.graphs]
        if sorted(roles) != sorted(want_roles):
            self.fail(
                "graphs",
                f"a {c.graph} {'Mask' if s.masks else 'Faster'} R-CNN export has graphs {want_roles}, "
                f"this lists {roles}",
            )
            return
        if c.graph == "fused":
            named = re.fullmatch(r".*_fused_(onnx|plugin|tensor)\.onnx", c.graphs[0].file)
            if named and named.group(1) != c.nms:
                self.fail(
                    "nms", f"is {c.nms!r} but the graph {c.graphs[0].file} was exported with --nms {named.group(1)}"
                )
                return
        b = c.batch[0] if c.batch[0] == c.batch[1] else "batch"
        H, W = c.input_hw
        for i, g in enumerate(c.graphs):
            gp = f"graphs[{i}]"
            if g.role in ("fused", "backbone"):
                shape = g.inputs[0].shape
                if len(shape) == 4 and shape[2:] != [H, W] and all(_is_int(d) for d in shape[2:]):
                    self.fail("input_hw", f"is {[H, W]}, but the graph takes {shape[2:]} ({gp}.inputs[0].shape)")
                elif len(shape) == 4 and shape[0] != b:
                    why = "a fixed" if _is_int(shape[0]) else "a dynamic"
                    self.fail(
                        "batch",
                        f"is {list(c.batch)}, but the graph has {why} batch {shape[0]!r} ({gp}.inputs[0].shape)",
                    )
                else:
                    # float32 (RGB 0-255, the seed's contract) or uint8 (export --input-dtype uint8)
                    dtype = g.inputs[0].dtype if g.inputs and g.inputs[0].dtype in ("float32", "uint8") else "float32"
                    self.io(gp + ".inputs", g.inputs, [("images", [b, 3, H, W], dtype)], "input_hw and batch")
            if g.role == "fused":
                K = s.detections_per_img
                want = [
                    ("num_detections", [b, 1], "int32"),
                    ("detection_boxes", [b, K, 4], "float32"),
                    ("detection_scores", [b, K], "float32"),
                    ("detection_classes", [b, K], "int32"),
                ]
                if s.masks:
                    m = 2 * s.mask_roi_size
                    want.append(("detection_masks", [b, K, m, m], "float32"))
                self.io(gp + ".outputs", g.outputs, want, "batch, spec.detections_per_img and spec.mask_roi_size")
            elif g.role == "backbone":
                want = [
                    (f"p{lv}", [b, s.fpn_channels, -(-H // 2**lv), -(-W // 2**lv)], "float32")
                    for lv in range(lo, hi + 1)
                ]
                n_anchors = s.num_anchors_per_location * sum(-(-H // st) * -(-W // st) for st in s.anchor_strides)
                want += [("rpn_objectness", [b, n_anchors], "float32"), ("rpn_deltas", [b, n_anchors, 4], "float32")]
                self.io(gp + ".outputs", g.outputs, want, "input_hw, batch, spec.fpn_channels and spec.anchor_*")
            elif g.role == "box_head":
                r = s.box_roi_size
                self.io(
                    gp + ".inputs",
                    g.inputs,
                    [("box_features", ["rois", s.fpn_channels, r, r], "float32")],
                    "spec.box_roi_size and spec.fpn_channels",
                )
                nc = s.num_classes
                want = [("class_logits", ["rois", nc], "float32"), ("box_regression", ["rois", 4 * nc], "float32")]
                self.io(gp + ".outputs", g.outputs, want, "the number of spec.class_names")
            elif g.role == "mask_head":
                r = s.mask_roi_size
                want = [("mask_features", ["rois", s.fpn_channels, r, r], "float32"), ("classes", ["rois"], "int64")]
                self.io(gp + ".inputs", g.inputs, want, "spec.mask_roi_size and spec.fpn_channels")
                self.io(
                    gp + ".outputs", g.outputs, [("masks", ["rois", 2 * r, 2 * r], "float32")], "spec.mask_roi_size"
                )

    def io(self, path: str, got: List[TensorSpec], want: List[Tuple[str, List[Any], str]], source: str) -> None:
        """``got`` against the tensors an export writes for this spec, input size and batch range."""
        names = [t.name for t in got]
        if names != [w[0] for w in want]:
            self.fail(path, f"names {names}, but this model and graph kind has {[w[0] for w in want]}")
            return
        for i, (t, (_, shape, dtype)) in enumerate(zip(got, want)):
            tp = f"{path}[{i}]"
            if t.dtype != dtype:
                self.fail(f"{tp}.dtype", f"is {t.dtype!r}, the exported graph's is {dtype!r}")
            if len(t.shape) != len(shape) or any(
                (isinstance(w, str) != isinstance(d, str)) or (not isinstance(w, str) and w != d)
                for d, w in zip(t.shape, shape)
            ):
                self.fail(f"{tp}.shape", f"is {t.shape}, but {source} give {shape}")


_TUPLE = re.compile(r"Tuple\[(.*)\]")


def _split_args(text: str) -> List[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        depth += ch == "["
        depth -= ch == "]"
        cur += ch
    out.append(cur.strip())
    return out


def _typed(x: Any, ann: str, path: str, v: _Validator) -> Any:
    """``x`` (parsed JSON) as the ModelSpec field type ``ann`` (a string annotation), or _BAD after a problem."""
    ann = ann.replace("typing.", "")
    if ann == "str":
        return x if isinstance(x, str) else v.fail(path, f"must be a string, got {_got(x)}")
    if ann == "bool":
        return x if isinstance(x, bool) else v.fail(path, f"must be true or false, got {_got(x)}")
    if ann == "int":
        return x if _is_int(x) else v.fail(path, f"must be an integer, got {_got(x)}")
    if ann == "float":
        return float(x) if _is_num(x) else v.fail(path, f"must be a finite number, got {_got(x)}")
    m = _TUPLE.fullmatch(ann)
    if m is None:  # pragma: no cover - a ModelSpec field of a type this validator does not know
        raise TypeError(f"contract validation: no rule for ModelSpec annotation {ann!r}")
    args = _split_args(m.group(1))
    if not isinstance(x, list):
        return v.fail(path, f"must be a list, got {_got(x)}")
    if len(args) == 2 and args[1] == "...":
        items = [(e, args[0]) for e in x]
        if len(x) > 100000:
            return v.fail(path, f"has {len(x)} entries")
    else:
        if len(x) != len(args):
            return v.fail(path, f"must have {len(args)} entries, got {len(x)}")
        items = list(zip(x, args))
    out = [_typed(e, a, f"{path}[{i}]", v) for i, (e, a) in enumerate(items)]
    return _BAD if any(e is _BAD for e in out) else tuple(out)


_UNIT = ("rpn_nms_thresh", "box_nms_thresh", "box_score_thresh", "mask_threshold", "rpn_score_thresh")
_POSITIVE = (
    "rpn_pre_nms_top_n",
    "rpn_post_nms_top_n",
    "detections_per_img",
    "box_roi_size",
    "mask_roi_size",
    "fpn_channels",
    "representation_size",
    "canonical_level",
    "canonical_scale",
    "frozen_bn_eps",
)
_NON_NEGATIVE = (
    "box_sampling_ratio",
    "mask_sampling_ratio",
    "rpn_min_size",
    "box_min_size",
    "level_eps",
    "box_scale_clamp",
)
_CHOICES = {
    "flavour": FLAVOURS,
    "channel_order": ("RGB", "BGR"),
    "mask_paste": ("torchvision", "detectron2"),
    "resize": ("torchvision", "detectron2"),
}


def _range_check(name: str, value: Any, path: str, v: _Validator) -> None:
    if name in _CHOICES and value not in _CHOICES[name]:
        v.fail(path, f"must be one of {', '.join(_CHOICES[name])}, got {_short(value)}")
    elif name in _UNIT and not 0.0 <= value <= 1.0:
        v.fail(path, f"must be between 0 and 1, got {value}")
    elif name in _POSITIVE and not value > 0:
        v.fail(path, f"must be > 0, got {value}")
    elif name in _NON_NEGATIVE and not value >= 0:
        v.fail(path, f"must be >= 0, got {value}")
    elif name == "name" and value not in MODEL_NAMES:
        v.fail(path, f"must be one of {', '.join(MODEL_NAMES)}, got {_short(value)}")
    elif name == "class_names" and len(value) < 2:
        v.fail(path, f"needs the background and at least one class, got {len(value)} names")
    elif name == "pixel_std" and not all(s > 0 for s in value):
        v.fail(path, f"must be > 0 per channel, got {list(value)}")
    elif name in ("anchor_strides", "aspect_ratios") and not (value and all(a > 0 for a in value)):
        v.fail(path, f"must be a non-empty list of positive numbers, got {list(value)}")
    elif name == "anchor_sizes" and not (value and all(lvl and all(a > 0 for a in lvl) for lvl in value)):
        v.fail(path, "must list positive sizes for every level")
    elif name in ("detections_per_img", "rpn_pre_nms_top_n", "rpn_post_nms_top_n") and value > 100000:
        v.fail(path, f"must be <= 100000, got {value}")
    elif name in ("box_roi_size", "mask_roi_size") and value > 64:
        v.fail(path, f"must be <= 64, got {value}")


# ------------------------------------------------------------------------------- interrupted exports
# An export is written into ``.NAME.export-PID-XXXX`` beside its directory NAME and moved into place whole
# (rcnn_deploy.export.staging); where two directories cannot be swapped atomically the old one is first renamed
# aside to ``.NAME.old-PID-XXXX``. These helpers find what a killed exporter left and undo a half-done swap.
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>export|old)-(?P<pid>\d+)-[0-9a-f]+$")


def _alive(pid: int) -> bool:
    import os

    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # it exists, run by another user
        return True
    return True


def export_leftovers(target: Union[str, Path]) -> List[Tuple[Path, str]]:
    """(path, "export" | "old") of the staging and set-aside directories of ``target`` whose process is gone."""
    t = Path(target)
    out: List[Tuple[Path, str]] = []
    if not t.parent.is_dir():
        return out
    for p in sorted(t.parent.iterdir()):
        m = _LEFTOVER.match(p.name)
        if m and m.group("name") == t.name and p.is_dir() and not _alive(int(m.group("pid"))):
            out.append((p, m.group("kind")))
    return out


def recover_interrupted_export(target: Union[str, Path]) -> bool:
    """When ``target`` is missing because its exporter was killed after renaming the old export aside and
    before moving the new one in, rename the old (complete) export back; True if it did."""
    import os

    t = Path(target)
    if t.exists():
        return False
    for p, kind in export_leftovers(t):
        if kind == "old" and (p / CONTRACT_FILE).is_file():
            try:
                os.rename(p, t)
            except OSError:
                return False
            return True
    return False


# ------------------------------------------------------------------------------------ graph checksums
def sha256_file(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def listed_graph(path: Union[str, Path]) -> Optional[Tuple[Contract, int, GraphSpec]]:
    """The contract beside ``path`` and its entry for that file, or None when no contract is there or it does
    not list the file (a graph of one's own, a quantized copy). A damaged contract raises its UserError."""
    p = Path(path)
    if not (p.parent / CONTRACT_FILE).is_file():
        return None
    c = Contract.load(p.parent)
    for i, g in enumerate(c.graphs):
        if g.file == p.name:
            return c, i, g
    return None


def _check_digest(c: Contract, i: int, g: GraphSpec, path: Path, size: int, digest: Optional[str]) -> None:
    fix = f"the graph or its contract was changed after export; re-export: {c.export_command(path.parent)}"
    if g.size is not None and size != g.size:
        raise UserError(
            f"the graph file is {size} bytes but its contract ({c.path}: graphs[{i}].size) records {g.size}",
            where=path,
            fix=fix,
        )
    if g.sha256 is not None and digest is not None and digest != g.sha256:
        raise UserError(
            f"the graph file's sha256 is {digest[:16]}..., its contract ({c.path}: graphs[{i}].sha256) records "
            f"{g.sha256[:16]}...",
            where=path,
            fix=fix,
        )


def verified_graph_bytes(path: Union[str, Path]) -> Tuple[bytes, Optional[Tuple[Contract, int, GraphSpec]]]:
    """Read a graph file once and check it against the contract beside it (size, then sha256) before anything
    runs it; returns the bytes and the contract entry (None when no contract lists the file)."""
    p = Path(path)
    entry = listed_graph(p)
    if not p.is_file():
        named = f" (named by {entry[0].path}: graphs[{entry[1]}].file)" if entry else ""
        what = "is not a file" if p.exists() else "not found"
        raise UserError(f"graph file {what}{named}", where=p, fix="re-export, or restore the file")
    if entry is not None and entry[2].size is not None and p.stat().st_size != entry[2].size:
        _check_digest(*entry, p, p.stat().st_size, None)  # size differs: refuse without reading the file
    data = p.read_bytes()
    if entry is not None:
        _check_digest(*entry, p, len(data), hashlib.sha256(data).hexdigest())
    return data, entry


def verify_graph_file(path: Union[str, Path]) -> Optional[Tuple[Contract, int, GraphSpec]]:
    """Like :func:`verified_graph_bytes` without keeping the bytes (the TensorRT parser and ONNX Runtime read
    the file themselves; the checksum is computed in chunks, so no copy of the graph is held)."""
    p = Path(path)
    entry = listed_graph(p)
    if not p.is_file():
        named = f" (named by {entry[0].path}: graphs[{entry[1]}].file)" if entry else ""
        what = "is not a file" if p.exists() else "not found"
        raise UserError(f"graph file {what}{named}", where=p, fix="re-export, or restore the file")
    if entry is not None:
        size = p.stat().st_size
        _check_digest(*entry, p, size, None)
        _check_digest(*entry, p, size, sha256_file(p))
    return entry
