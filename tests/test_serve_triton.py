"""Serving with a real Triton Inference Server (``rcnn-deploy triton-repo`` / ``serve``), on the CPU.

The model: the project's shipped checkpoint exported (fused, ONNX Runtime) at 320 x 320, batch 1:4, with 200
RPN proposals and 16 detections per image so a CPU inference takes about a second; the served path — bytes
in, decode, letterbox, model, un-letterbox, mask paste, RLE out — is what is tested, against
``rcnn_deploy.api.Detector`` on the same export. The server is the real ``tritonserver`` (the
``nvidia-pytriton`` wheel's, installed by .ci/run; see README "Serving"), started on free ports of 127.0.0.1
and always stopped. Select with ``-m triton``; the server tests skip only when no tritonserver is found.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("pycocotools")
pytest.importorskip("tritonclient", reason="the [serve] extra (tritonclient) is not installed")

from rcnn_deploy.errors import UserError  # noqa: E402
from rcnn_deploy.serve import contract as C  # noqa: E402
from rcnn_deploy.serve.repository import RepoOptions, validate_config, write_python_repo, write_tensorrt_repo  # noqa: E402
from rcnn_deploy.serve.server import TritonServer, free_port, tritonserver_available  # noqa: E402

pytestmark = pytest.mark.triton
ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"
needs_server = pytest.mark.skipif(
    not tritonserver_available(),
    reason="no tritonserver binary (install: see README 'Serving'; .ci/run installs the nvidia-pytriton wheel's)",
)
MODEL = "rcnn_detector"
#: 8 concurrent clients x this many requests each (RCNN_DEPLOY_TRITON_LOAD_REQUESTS=25 for the full 200).
LOAD_REQUESTS = int(os.environ.get("RCNN_DEPLOY_TRITON_LOAD_REQUESTS", "3"))


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The 320 export and test images: three 320x240 PNGs, a 200x300 one and a JPEG."""
    pytest.importorskip("torch")
    from PIL import Image

    from rcnn_deploy.data.synth import generate_synthetic_coco
    from rcnn_deploy.export import export_onnx
    from rcnn_deploy.models.build import build_model

    root = tmp_path_factory.mktemp("serve")
    net = build_model(
        "torchvision-maskrcnn", str(CHECKPOINT), detections_per_img=16, rpn_pre_nms_top_n=200, rpn_post_nms_top_n=200
    )
    export_onnx(net, root / "export", height=320, width=320, batch="1:4", graph="fused", nms="onnx")
    generate_synthetic_coco(root / "a", num_images=3, height=240, width=320, seed=3)
    generate_synthetic_coco(root / "b", num_images=1, height=300, width=200, seed=4)
    images = sorted((root / "a" / "images").iterdir()) + sorted((root / "b" / "images").iterdir())
    jpeg = root / "photo.jpg"
    Image.open(images[0]).convert("RGB").save(jpeg, quality=90)
    return root, images + [jpeg]


@pytest.fixture(scope="module")
def reference(work):
    """Detector (batch 1) on every test image: what the server must return."""
    from rcnn_deploy.api import Detector

    root, images = work
    det = Detector.load(root / "export", batch=1)
    return det, det(images)


def _start(repo: Path, log: Path) -> TritonServer:
    server = TritonServer(
        repo, http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(), address="127.0.0.1", log=log
    )
    server.start()
    try:
        server.wait_ready(timeout_s=300)
    except BaseException:
        server.stop()
        raise
    return server


def _assert_stopped(server: TritonServer) -> None:
    """The server and every process of its group (the backend stubs) are gone."""
    assert server.proc is not None and server.proc.poll() is not None
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.killpg(server.proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    pytest.fail(f"processes of tritonserver's group {server.proc.pid} outlived it")


@pytest.fixture(scope="module")
def served(work, tmp_path_factory):
    root, _ = work
    repo = tmp_path_factory.mktemp("repo") / "repo"
    write_python_repo(root / "export", repo, RepoOptions(name=MODEL, max_batch=4, instances=1))
    server = _start(repo, root / "python_flavour.log")
    try:
        yield server
    finally:
        code = server.stop()
        _assert_stopped(server)
        assert server.workdir is None
        print(f"tritonserver exit status {code}")


def _http(server: TritonServer):  # type: ignore[no-untyped-def]
    import tritonclient.http as http

    return http.InferenceServerClient(server.http_url, network_timeout=300.0, connection_timeout=300.0)


def _grpc(server: TritonServer):  # type: ignore[no-untyped-def]
    import tritonclient.grpc as grpc

    return grpc.InferenceServerClient(server.grpc_url)


def _infer(client, paths_or_bytes, protocol: str = "http") -> List[C.ServedDetections]:  # type: ignore[no-untyped-def]
    if protocol == "http":
        import tritonclient.http as tc
    else:
        import tritonclient.grpc as tc
    data = np.array([[p if isinstance(p, bytes) else Path(p).read_bytes()] for p in paths_or_bytes], dtype=object)
    inp = tc.InferInput(C.INPUT, list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    res = client.infer(MODEL, [inp], outputs=[tc.InferRequestedOutput(n) for n in C.OUTPUTS])
    return C.unpack_outputs({n: res.as_numpy(n) for n in C.OUTPUTS})


def _check_same(served: C.ServedDetections, ref, names: Dict[int, str], box_atol: float = 1e-3) -> None:  # type: ignore[no-untyped-def]
    assert len(served) == len(ref) > 0
    np.testing.assert_array_equal(served.classes, ref.classes)
    np.testing.assert_allclose(served.boxes, ref.boxes, atol=box_atol, rtol=0)
    np.testing.assert_allclose(served.scores, ref.scores, atol=1e-5, rtol=0)
    assert served.class_names == [names[int(c)] for c in ref.classes]
    masks = served.decoded_masks()
    assert masks is not None and masks.shape == ref.masks.shape  # pasted into the original image
    agree = (masks == ref.masks).mean()
    assert agree > 0.9995, agree


# ------------------------------------------------------------------------------------ repository configs
def _fake_engine(export: Path, dst: Path, batch=(1, 2, 4), trt: str = "tensorrt") -> Path:
    """An export folder with a file standing in for a built engine (the writer copies it and reads its sidecar,
    it never deserialises it) — the tensorrt flavour's configs are checked without TensorRT."""
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "contract.json").write_bytes((export / "contract.json").read_bytes())
    engine = dst / "model_fp16.engine"
    engine.write_bytes(b"not a real engine")
    side = {"engine": engine.name, "trt": trt, "trt_version": "10.5.0", "build_config": {"batch": list(batch)}}
    Path(str(engine) + ".json").write_text(json.dumps(side))
    return engine


def _configs(repo: Path) -> Dict[str, object]:
    return {p.parent.name: validate_config(p.read_text(), p) for p in sorted(repo.glob("*/config.pbtxt"))}


@pytest.mark.full
def test_python_repository_config_parses_and_bundles_code_and_model(work, tmp_path):
    root, _ = work
    repo = tmp_path / "repo"
    write_python_repo(root / "export", repo, RepoOptions(name="det", max_batch=8, instances=3, max_queue_delay_us=500))
    cfgs = _configs(repo)
    assert list(cfgs) == ["det"]
    cfg = cfgs["det"]
    assert cfg.backend == "python" and cfg.max_batch_size == 8
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(3, 2)]  # KIND_CPU
    (inp,) = cfg.input
    assert (inp.name, inp.data_type, list(inp.dims)) == ("IMAGE", 13, [1])  # TYPE_STRING
    assert [o.name for o in cfg.output] == list(C.OUTPUTS)
    assert cfg.parameters["model_path"].string_value == "model"
    v = repo / "det" / "1"
    assert (v / "model.py").is_file() and (v / "rcnn_deploy" / "api.py").is_file()
    assert not list((v / "rcnn_deploy").rglob("__pycache__"))
    # the export's contract and graphs (not letterbox.onnx: only a TensorRT engine with --gpu-decode reads it)
    exported = sorted(p.name for p in (root / "export").iterdir() if p.name != "letterbox.onnx")
    assert sorted(p.name for p in (v / "model").iterdir()) == exported
    with pytest.raises(UserError, match="not empty"):
        write_python_repo(root / "export", repo, RepoOptions())
    # a checkpoint: the model name it records, the file copied, the input size as a parameter
    ck = write_python_repo(CHECKPOINT, tmp_path / "ck", RepoOptions(input_hw=(320, 320)))
    params = {k: v.string_value for k, v in _configs(tmp_path / "ck")["rcnn_detector"].parameters.items()}
    assert params["model"] == "torchvision-maskrcnn" and params["input_hw"] == "320,320"
    assert params["model_path"] == f"model/{CHECKPOINT.name}" and (ck / "1" / "model" / CHECKPOINT.name).is_file()
    with pytest.raises(UserError, match="no contract.json"):
        write_python_repo(tmp_path, tmp_path / "other", RepoOptions())
    with pytest.raises(UserError, match="max-batch"):
        write_python_repo(root / "export", tmp_path / "r2", RepoOptions(max_batch=0))


@pytest.mark.full
def test_tensorrt_repository_configs_parse_and_the_ensemble_is_wired(work, tmp_path):
    root, _ = work
    engine = _fake_engine(root / "export", tmp_path / "built")
    repo = tmp_path / "repo"
    write_tensorrt_repo(engine, repo, RepoOptions(name="det", max_batch=8, instances=2))
    cfgs = _configs(repo)
    assert sorted(cfgs) == ["det", "det_engine", "det_postprocess", "det_preprocess"]
    ens, eng = cfgs["det"], cfgs["det_engine"]
    assert all(c.max_batch_size == 4 for c in cfgs.values())  # capped at the engine profile's maximum
    assert eng.platform == "tensorrt_plan" and [(g.count, g.kind) for g in eng.instance_group] == [(2, 1)]  # GPU
    contract = json.loads((root / "export" / "contract.json").read_text())
    graph = contract["graphs"][0]
    assert [(i.name, list(i.dims)) for i in eng.input] == [("images", [3, 320, 320])]
    assert [(o.name, list(o.dims)) for o in eng.output] == [(t["name"], t["shape"][1:]) for t in graph["outputs"]]
    assert (repo / "det_engine" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    for m in ("det_preprocess", "det_postprocess"):
        assert cfgs[m].backend == "python" and (repo / m / "1" / "contract.json").is_file()
        assert (repo / m / "1" / "rcnn_deploy" / "serve" / "stages.py").is_file()
    # the ensemble: client contract outside; every step's inputs are the ensemble's input or an earlier output
    assert ens.platform == "ensemble" and [i.name for i in ens.input] == ["IMAGE"]
    assert [o.name for o in ens.output] == list(C.OUTPUTS)
    io = {name: ({i.name: i for i in c.input}, {o.name: o for o in c.output}) for name, c in cfgs.items()}
    available = {"IMAGE"}
    for step in ens.ensemble_scheduling.step:
        ins, outs = io[step.model_name]
        assert set(step.input_map) == set(ins), step.model_name
        assert set(step.input_map.values()) <= available, step.model_name
        assert set(step.output_map) <= set(outs)
        available |= set(step.output_map.values())
    assert set(C.OUTPUTS) <= available
    with pytest.raises(UserError, match="starts at 2"):
        write_tensorrt_repo(_fake_engine(root / "export", tmp_path / "b2", (2, 4, 8)), tmp_path / "r2", RepoOptions())
    with pytest.raises(UserError, match="TensorRT-RTX"):
        write_tensorrt_repo(
            _fake_engine(root / "export", tmp_path / "rtx", trt="tensorrt_rtx"), tmp_path / "r3", RepoOptions()
        )
    with pytest.raises(UserError, match="built TensorRT engine"):
        write_tensorrt_repo(root / "export" / "contract.json", tmp_path / "r4", RepoOptions())


@pytest.mark.full
def test_host_stages_are_the_detectors_pre_and_post_processing(work, reference):
    """The tensorrt flavour's Python models compute exactly what Detector does around the model."""
    from rcnn_deploy.serve.stages import host_stages

    root, images = work
    det, refs = reference
    stages = host_stages(root / "export")
    rgb = [C.decode_image(Path(p).read_bytes()) for p in images[:2]]
    batch, _ = stages.preprocess(rgb)
    raw = {}
    for i in range(len(rgb)):  # batch 1 each, like the reference
        for k, v in _raw_fused(root, batch[i : i + 1]).items():
            raw.setdefault(k, []).append(v)
    raw = {k: np.concatenate(v) for k, v in raw.items()}
    dets = stages.postprocess_raw(raw, np.array([im.shape[:2] for im in rgb], np.int32))
    for d, ref in zip(dets, refs[:2]):
        np.testing.assert_array_equal(d.boxes, ref.boxes)
        np.testing.assert_array_equal(d.scores, ref.scores)
        np.testing.assert_array_equal(d.masks, ref.masks)


def _raw_fused(root: Path, batch: np.ndarray) -> Dict[str, np.ndarray]:
    from rcnn_deploy.backends.onnxruntime import OnnxRuntimeBackend
    from rcnn_deploy.contract import Contract

    c = Contract.load(root / "export")
    return OnnxRuntimeBackend(root / "export" / c.graph_for("fused").file)(images=batch)


def test_decode_image_limits():
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (30, 20), (1, 2, 3)).save(buf, format="PNG")
    assert C.decode_image(buf.getvalue()).shape == (20, 30, 3)
    with pytest.raises(C.BadImage, match="empty image"):
        C.decode_image(b"")
    with pytest.raises(C.BadImage, match="cannot read image"):
        C.decode_image(b"GIF89a? no")
    with pytest.raises(C.BadImage, match="above the limit of 500"):
        C.decode_image(buf.getvalue(), max_pixels=500)
    with pytest.raises(C.BadImage, match="damaged or truncated"):
        C.decode_image(buf.getvalue()[:60])


def test_cli_defaults_match_the_library():
    from rcnn_deploy.tools import serve as tools

    assert tools.DEFAULT_MAX_PIXELS == C.DEFAULT_MAX_PIXELS


@pytest.mark.full
def test_triton_repo_command(work, tmp_path):
    from typer.testing import CliRunner

    from rcnn_deploy.cli import app

    root, _ = work
    out = tmp_path / "repo"
    args = ["triton-repo", str(root / "export"), "-o", str(out), "--max-batch", "2", "--instances", "2"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    cfg = _configs(out)["rcnn_detector"]
    assert cfg.max_batch_size == 2 and cfg.instance_group[0].count == 2
    res = CliRunner().invoke(app, [*args, "--flavour", "onnx"])
    assert res.exit_code == 2 and "unknown flavour 'onnx'" in res.output, res.output
    res = CliRunner().invoke(
        app, ["triton-repo", str(root / "export"), "-o", str(tmp_path / "t"), "--flavour", "tensorrt"]
    )
    assert res.exit_code == 2 and "needs one fused engine" in " ".join(res.output.split()), res.output


def test_serve_without_a_tritonserver_says_how_to_install_one(tmp_path):
    env = {**os.environ, "RCNN_DEPLOY_TRITONSERVER": str(tmp_path / "missing"), "PYTHONPATH": str(ROOT / "src")}
    p = subprocess.run(
        [sys.executable, "-m", "rcnn_deploy.cli", "serve", str(tmp_path)], capture_output=True, text=True, env=env
    )
    assert p.returncode == 2, p.stderr
    assert "not an executable tritonserver" in p.stderr and "nvidia-pytriton" in "".join(p.stderr.split())


@needs_server
def test_the_stub_environment_imports_what_pythonpath_gives_the_serving_process(tmp_path, monkeypatch):
    """The backend stub runs isolated from PYTHONPATH; packages the serving process finds through it (``pip install
    --target`` folders, as on the GPU machine) must reach the served model too."""
    from rcnn_deploy.serve.server import find_tritonserver, prepare_bundle

    extra = tmp_path / "extra site"
    extra.mkdir()
    (extra / "only_on_pythonpath.py").write_text("VALUE = 17\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(extra), str(tmp_path / "missing"), str(extra)]))
    setup = prepare_bundle(find_tritonserver(), tmp_path / "work")
    env = {k: v for k, v in setup["env"].items() if k != "PYTHONPATH"}  # what the stub sees: no PYTHONPATH
    python = tmp_path / "work" / "pyenv" / "bin" / "python"
    code = "import only_on_pythonpath, numpy; print(only_on_pythonpath.VALUE, numpy.__version__)"
    p = subprocess.run([str(python), "-c", code], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0] == "17"
    pth = next((tmp_path / "work" / "pyenv").rglob("_rcnn_deploy_triton.pth")).read_text()
    assert pth.count(str(extra)) == 1 and str(tmp_path / "missing") not in pth


# ------------------------------------------------------------------------------------ a real tritonserver
@pytest.mark.full
@needs_server
def test_http_and_grpc_return_the_detectors_detections(served, reference, work):
    det, refs = reference
    names = C.class_name_lookup(det.spec.class_names, det.spec.label_ids)
    paths = work[1]
    http, grpc = _http(served), _grpc(served)
    try:
        for path, ref in zip(paths, refs):
            (via_http,) = _infer(http, [path], "http")
            (via_grpc,) = _infer(grpc, [path], "grpc")
            _check_same(via_http, ref, names)
            _check_same(via_grpc, ref, names)
        # one request of two images of different sizes: rows padded to the larger count, each its own image's
        two = _infer(http, [paths[0], paths[3]], "http")
        assert [d.masks[0]["size"] for d in two] == [[240, 320], [300, 200]]
        for d, ref in zip(two, [refs[0], refs[3]]):
            _check_same(d, ref, names, box_atol=0.05)
    finally:
        http.close()
        grpc.close()


def _batch_stats(client) -> Dict[int, int]:  # type: ignore[no-untyped-def]
    stats = client.get_inference_statistics(MODEL)["model_stats"][0]
    return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}


def _metric(server: TritonServer, name: str) -> float:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        text = r.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{MODEL}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.full
@needs_server
def test_dynamic_batching_forms_batches_under_concurrent_requests(served, work):
    http = _http(served)
    before = _batch_stats(http)
    execs0, infers0 = _metric(served, "nv_inference_exec_count"), _metric(served, "nv_inference_count")
    paths = work[1]
    errors: List[BaseException] = []

    def one(i: int) -> None:
        c = _http(served)
        try:
            _infer(c, [paths[i % 4]])
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    # the statistics API counts an execution a moment after its responses went out: poll until all 8 requests
    # are counted (or the deadline passes and the assertion below says what was seen)
    deadline = time.monotonic() + 30
    while True:
        after = _batch_stats(http)
        grown = {b: after.get(b, 0) - before.get(b, 0) for b in after if after.get(b, 0) > before.get(b, 0)}
        if sum(b * n for b, n in grown.items()) >= 8 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    http.close()
    print(f"batch sizes executed (size: executions): {grown}")
    assert sum(b * n for b, n in grown.items()) == 8
    assert max(grown) > 1, grown  # the statistics API saw a batch of more than one request
    execs, infers = _metric(served, "nv_inference_exec_count") - execs0, _metric(served, "nv_inference_count") - infers0
    print(f"Prometheus metrics: {infers:.0f} inferences in {execs:.0f} executions")
    assert infers == 8 and execs < 8


@pytest.mark.full
@needs_server
def test_bounded_load_on_loopback_has_no_errors(served, reference, work):
    """8 concurrent clients x LOAD_REQUESTS requests each, to 127.0.0.1 only; every answer checked."""
    _, refs = reference
    paths = work[1]
    latencies: List[float] = []
    errors: List[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        c = _http(served)
        try:
            for r in range(LOAD_REQUESTS):
                i = (k + r) % 4
                t0 = time.perf_counter()
                try:
                    (d,) = _infer(c, [paths[i]])
                    ok = len(d) == len(refs[i]) and np.allclose(d.boxes, refs[i].boxes, atol=0.05)
                    problem = None if ok else f"image {i}: {len(d)} detections, expected {len(refs[i])}"
                except Exception as e:  # noqa: BLE001
                    problem = f"{type(e).__name__}: {e}"
                dt = time.perf_counter() - t0
                with lock:
                    latencies.append(dt)
                    if problem:
                        errors.append(problem)
        finally:
            c.close()

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=1800)
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    print(
        f"\nload: 8 clients x {LOAD_REQUESTS} requests = {len(lat)} in {wall:.1f} s, {len(errors)} errors; "
        f"latency p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms; "
        f"throughput {len(lat) / wall:.2f} img/s"
    )
    assert len(lat) == 8 * LOAD_REQUESTS and not errors, errors[:5]


def _png_bomb(width: int, height: int) -> bytes:
    """A real PNG of ``width x height`` black 8-bit grey pixels: a few hundred KB that decode to w*h bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.full
@needs_server
def test_bad_requests_get_an_error_naming_the_problem_and_the_server_keeps_serving(served, reference, work):
    import tritonclient.http as tc
    from tritonclient.utils import InferenceServerException

    det, refs = reference
    names = C.class_name_lookup(det.spec.class_names, det.spec.label_ids)
    http = _http(served)
    bomb = _png_bomb(12000, 12000)  # 144 megapixels in
    assert len(bomb) < 1_000_000
    cases = {
        "non-image bytes": (b"this is not an image", "cannot read image"),
        "empty image": (b"", "empty image"),
        "decompression bomb": (bomb, "above the limit of"),
    }
    try:
        for what, (data, message) in cases.items():
            with pytest.raises(InferenceServerException, match=message) as e:
                _infer(http, [data])
            assert e.value.status() == "400", (what, e.value)  # INVALID_ARG: the client's fault, not the server's
            assert http.is_server_ready(), what
        grpc = _grpc(served)  # the same over gRPC: INVALID_ARGUMENT with the message
        with pytest.raises(InferenceServerException, match="cannot read image") as e:
            _infer(grpc, [b"plain text, not an image"], "grpc")
        assert e.value.status() == "StatusCode.INVALID_ARGUMENT", e.value
        grpc.close()
        # a good image and a bad one in the same request: the request fails, naming the bad row
        with pytest.raises(InferenceServerException, match=r"IMAGE\[1\]: cannot read image"):
            _infer(http, [work[1][0], b"junk"])
        # a wrong datatype: Triton itself refuses it before the model sees it
        x = tc.InferInput(C.INPUT, [1, 1], "FP32")
        x.set_data_from_numpy(np.zeros((1, 1), np.float32))
        with pytest.raises(InferenceServerException, match="(?i)datatype|data type|TYPE_STRING|BYTES") as e:
            http.infer(MODEL, [x])
        print(f"wrong datatype: {e.value}")
        # an empty HTTP body (no JSON header): Triton hands the model an empty IMAGE, refused like the empty image
        req = urllib.request.Request(f"http://{served.http_url}/v2/models/{MODEL}/infer", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=60)
        body = e.value.read().decode()
        print(f"empty body: HTTP {e.value.code} {body}")
        assert e.value.code == 400 and "empty image" in json.loads(body)["error"]
        assert http.is_server_ready() and http.is_model_ready(MODEL)
        (good,) = _infer(http, [work[1][1]])
        _check_same(good, refs[1], names)
    finally:
        http.close()


@pytest.mark.full
@needs_server
def test_python_flavour_serves_a_pytorch_checkpoint(work, tmp_path):
    """Any backend Detector.load takes: here the checkpoint itself, run by torch inside the Python backend."""
    from rcnn_deploy.api import Detector

    root, images = work
    repo = tmp_path / "repo"
    write_python_repo(CHECKPOINT, repo, RepoOptions(name=MODEL, input_hw=(320, 320), link=True))
    det = Detector.load(CHECKPOINT, input_hw=(320, 320))
    (ref,) = det([images[3]])
    names = C.class_name_lookup(det.spec.class_names, det.spec.label_ids)
    server = _start(repo, tmp_path / "torch.log")
    try:
        http = _http(server)
        (served,) = _infer(http, [images[3]])
        http.close()
    finally:
        server.stop()
    _assert_stopped(server)
    _check_same(served, ref, names, box_atol=1e-2)


# --------------------------------------------------------------------- tensorrt flavour, engine stand-in
_ORT_ENGINE = """
import json, os
import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

class TritonPythonModel:  # test stand-in for the tensorrt_plan model: the same fused graph in ONNX Runtime
    def initialize(self, args):
        d = os.path.join(args["model_repository"], args["model_version"])
        self.session = ort.InferenceSession(os.path.join(d, "model.onnx"), providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        res = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "images").as_numpy()
            out = self.session.run(self.outputs, {"images": x})
            res.append(pb_utils.InferenceResponse([pb_utils.Tensor(n, v) for n, v in zip(self.outputs, out)]))
        return res
"""


@pytest.mark.full
@needs_server
def test_tensorrt_flavour_ensemble_runs_with_onnxruntime_standing_in_for_tensorrt(work, reference, tmp_path):
    """The tensorrt flavour's ensemble, pre- and post-processing models on a real Triton. The bundled server
    has no TensorRT backend, so the engine model is replaced by a Python model running the same fused ONNX
    graph (same tensor names, dims and types as the tensorrt_plan config); everything else is as written."""
    root, _ = work
    det, refs = reference
    engine = _fake_engine(root / "export", tmp_path / "built")
    repo = tmp_path / "repo"
    write_tensorrt_repo(engine, repo, RepoOptions(name=MODEL, max_batch=4))
    cfg = (repo / f"{MODEL}_engine" / "config.pbtxt").read_text()
    cfg = cfg.replace('platform: "tensorrt_plan"', 'backend: "python"').replace("KIND_GPU", "KIND_CPU")
    (repo / f"{MODEL}_engine" / "config.pbtxt").write_text(cfg)
    validate_config(cfg)
    v = repo / f"{MODEL}_engine" / "1"
    (v / "model.plan").unlink()
    os.symlink(
        root / "export" / json.loads((root / "export" / "contract.json").read_text())["graphs"][0]["file"],
        v / "model.onnx",
    )
    (v / "model.py").write_text(_ORT_ENGINE)
    server = _start(repo, tmp_path / "ensemble.log")
    try:
        names = C.class_name_lookup(det.spec.class_names, det.spec.label_ids)
        http, grpc = _http(server), _grpc(server)
        paths = work[1]
        _check_same(_infer(http, [paths[3]])[0], refs[3], names)
        _check_same(_infer(grpc, [paths[4]], "grpc")[0], refs[4], names)
        from tritonclient.utils import InferenceServerException

        with pytest.raises(InferenceServerException, match="cannot read image"):
            _infer(http, [b"\x89PNG broken"])
        assert http.is_server_ready()
        http.close()
        grpc.close()
    finally:
        server.stop()
    _assert_stopped(server)


# ------------------------------------------------------------------------------------ rcnn-deploy serve
@pytest.mark.full
@needs_server
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_command_runs_tritonserver_and_stops_cleanly_on_a_signal(work, sig):
    root, images = work
    ports = [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "rcnn_deploy.cli", "serve", str(root / "export"), "--address", "127.0.0.1"]
    cmd += ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    cmd += ["--instances", "1", "--max-batch", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    log = root / f"serve_{int(sig)}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        else:
            pytest.fail(f"serve not ready: {log.read_text()[-3000:]}")
        children = _children(proc.pid)
        assert children, "no tritonserver child"
        import tritonclient.http as http

        c = http.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        (d,) = _infer(c, [images[0]])
        assert len(d) > 0
        c.close()
        want = f'nv_inference_request_success{{model="{MODEL}",version="1"}} 1'
        deadline = time.monotonic() + 30  # Prometheus metrics are refreshed every 2 s (Triton's default)
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{ports[2]}/metrics", timeout=10) as r:
                metrics = r.read().decode()
            if want in metrics or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert want in metrics
        proc.send_signal(sig)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "ready" in text and "tritonserver stopped" in text
    tmp = Path(text.split("removed ")[-1].split()[0])
    assert tmp.name.startswith("rcnn-deploy-serve-") and not tmp.exists()
    for pid in children:  # tritonserver and its stubs are gone
        assert not _alive(pid), (pid, text[-3000:])


def _children(pid: int) -> List[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.split(")")[-1].split()[0] != "Z"  # a zombie awaiting its reaper is not running


# ------------------------------------------------------------------------ python -m rcnn_deploy.serve REPO
def test_serving_module_refuses_a_folder_that_is_no_repository(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "rcnn_deploy.serve", str(tmp_path)], capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")}, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "not a model repository" in proc.stderr and "rcnn-deploy triton-repo" in proc.stderr


@pytest.mark.full
@needs_server
def test_serving_module_serves_a_written_repository_from_its_own_interpreter(work, reference, tmp_path):
    """What serves a TensorRT 8.6 engine from CPython 3.9 on the GPU machine (device_serve.sh bench_trt): the
    repository written by the CLI's environment, the server started by another process through
    ``python -m rcnn_deploy.serve`` (here the same interpreter), whose stub runs the model; SIGINT stops it all."""
    root, images = work
    repo = tmp_path / "repo"
    write_python_repo(root / "export", repo, RepoOptions(name=MODEL, max_batch=2, instances=1))
    ports = [free_port() for _ in range(3)]
    cmd = [sys.executable, "-m", "rcnn_deploy.serve", str(repo), "--address", "127.0.0.1"]
    cmd += ["--http-port", str(ports[0]), "--grpc-port", str(ports[1]), "--metrics-port", str(ports[2])]
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT / "src")})  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while "ready: http" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"not ready: {log.read_text()[-3000:]}")
            time.sleep(0.5)
        assert f"(Python {sys.version_info[0]}.{sys.version_info[1]} stub)" in log.read_text()
        children = _children(proc.pid)
        import tritonclient.http as http

        c = http.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        (d,) = _infer(c, [images[0]])
        c.close()
        det, ref = reference
        _check_same(d, ref[0], C.class_name_lookup(det.spec.class_names, det.spec.label_ids))
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, log.read_text()[-3000:]
    for pid in children:
        assert not _alive(pid), (pid, log.read_text()[-3000:])
