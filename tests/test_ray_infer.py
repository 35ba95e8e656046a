"""``rcnn-deploy infer/eval --ray`` on a local Ray instance (2 CPU actors, the shipped checkpoint exported to ONNX
Runtime at 320x320): the same outputs as a local ``infer`` of 24 images, every image exactly once after an actor
is killed mid-run and after the whole job is killed and resumed (12 of the images, through a list file, to keep
the module short), ``eval --ray`` equal to a local ``eval``; the Ray instance is shut down at the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("pycocotools")
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from typer.testing import CliRunner  # noqa: E402

from rcnn_deploy.cli import app  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.full]

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "shapes_maskrcnn_r50fpn.pt"
IMAGES = 24
SUBSET = 12  # the kill and resume tests: the first 12 images, named by a list file
WORKERS = 2
RAY_ARGS = ["--ray", "--workers", str(WORKERS), "--batch", "2"]


def _cli(args: List[str]):  # type: ignore[no-untyped-def]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output + repr(res.exception)
    return res


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module (2 CPU actors + decoding on this 2-core machine), always shut down."""
    ray.init(num_cpus=WORKERS + 1, object_store_memory=300 * 1024**2, include_dashboard=False, logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def job(tmp_path_factory, ray_instance) -> Dict[str, Path]:
    """24 synthetic images, the shipped checkpoint exported at 320 (fused graph, ONNX NMS, at most 10 detections
    per image to keep the CPU mask head short), a local ``infer`` of them (the reference) and a list file naming
    the first 12."""
    if not CHECKPOINT.is_file():
        pytest.skip(f"{CHECKPOINT} not present")
    root = tmp_path_factory.mktemp("ray_job")
    _cli(["data", "synth", "-o", str(root / "data"), "-n", str(IMAGES), "--height", "256", "--width", "320"])
    _cli(
        ["export", "-m", "torchvision-maskrcnn", "-w", str(CHECKPOINT), "--height", "320", "--width", "320"]
        + ["--batch", "1:2", "--graph", "fused", "--nms", "onnx", "--max-detections", "10", "-o", str(root / "export")]
    )
    _cli(["infer", str(root / "export"), str(root / "data" / "images"), "-o", str(root / "local"), "--batch", "2"])
    images = root / "data" / "images"
    subset = root / "data" / "first12.txt"
    subset.write_text("".join(f"images/{p.name}\n" for p in sorted(images.glob("*.png"))[:SUBSET]))
    return {"root": root, "export": root / "export", "images": images, "local": root / "local", "subset": subset}


def _assert_same_outputs(local: Path, out: Path, n: int = IMAGES) -> None:
    """The local run's outputs for its first ``n`` images: results.json and summary.json equal, every per-image
    TSV and PNG byte-identical."""
    results = [r for r in json.loads((local / "results.json").read_text()) if r["image_id"] <= n]
    assert json.loads((out / "results.json").read_text()) == results
    timing = ("seconds", "images_per_s", "time_s")  # the run's own measurements, not its results

    def summary_of(d: Path) -> dict:
        return {k: v for k, v in json.loads((d / "summary.json").read_text()).items() if k not in timing}

    summary = summary_of(local)
    if n < IMAGES:
        summary.update(images=n, processed=n, written=n, detections=len(results))
    assert summary_of(out) == summary
    stems = sorted(p.stem for p in local.glob("*.tsv"))[:n]
    assert len(stems) == n and sorted(p.stem for p in out.glob("*.tsv")) == stems
    for name in [f"{s}{ext}" for s in stems for ext in (".tsv", ".png")]:
        assert (out / name).read_bytes() == (local / name).read_bytes(), name


def _manifest_ids(out: Path) -> List[int]:
    ids: List[int] = []
    for m in sorted((out / "shards").glob("[0-9]*.json")):
        ids += [r["image_id"] for r in json.loads(m.read_text())["images"]]
    return ids


def test_ray_infer_equals_a_local_infer(job):
    out = job["root"] / "ray"
    res = _cli(["infer", str(job["export"]), str(job["images"]), "-o", str(out)] + RAY_ARGS)
    _assert_same_outputs(job["local"], out)
    run = json.loads((out / "shards" / "run.json").read_text())
    assert run["images"] == run["processed"] == IMAGES and run["exactly_once"] and run["shards_resumed"] == 0
    assert len(run["workers"]) == WORKERS and sum(run["workers"].values()) == IMAGES, run["workers"]
    assert run["img_per_s"] > 0 and run["backend"] == "onnxruntime"
    assert sorted(_manifest_ids(out)) == list(range(1, IMAGES + 1))
    text = " ".join(res.output.split())
    assert "img/s" in text and "exactly once: yes" in text and f"on {WORKERS} workers" in text


def test_a_video_split_into_frame_ranges_equals_a_local_infer_of_it(job):
    """Ten frames (the job's images as an mp4), every second frame, shards of two frames on two actors: the same
    results.json (entries with frame and time_s), summary and per-frame TSVs as a local ``infer --stride 2``."""
    cv2 = pytest.importorskip("cv2")
    from rcnn_deploy.runtime.preprocess import load_rgb
    from rcnn_deploy.scale.ray_infer import infer_on_ray

    root = job["root"]
    video = root / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (320, 256))
    for p in sorted(job["images"].glob("*.png"))[:10]:
        writer.write(np.ascontiguousarray(load_rgb(p)[:, :, ::-1]))
    writer.release()
    local, out = root / "video_local", root / "video_ray"
    _cli(["infer", str(job["export"]), str(video), "-o", str(local), "--batch", "2", "--stride", "2"])
    summary, report = infer_on_ray(job["export"], video, out, batch=2, workers=WORKERS, shard_size=2, stride=2)
    results = json.loads((out / "results.json").read_text())
    assert results == json.loads((local / "results.json").read_text()) and results
    assert {(r["image_id"], r["frame"]) for r in results} <= {(i + 1, 2 * i) for i in range(5)}
    assert all(r["time_s"] == round(r["frame"] / 5.0, 6) and r["file_name"] == "clip.mp4" for r in results)
    timing = ("seconds", "images_per_s", "time_s")
    local_summary = json.loads((local / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k not in timing} == {
        k: v for k, v in local_summary.items() if k not in timing
    }
    assert summary["images"] == 5 and report.exactly_once and report.shards == 3
    stems = sorted(p.name for p in local.glob("*.tsv"))
    assert stems == [f"clip_{2 * i:06d}.tsv" for i in range(5)] and sorted(p.name for p in out.glob("*.tsv")) == stems
    for name in stems:
        assert (out / name).read_bytes() == (local / name).read_bytes(), name
    assert not list(out.glob("*.png")) and sorted(_manifest_ids(out)) == [1, 2, 3, 4, 5]
    res = CliRunner().invoke(app, ["infer", str(job["export"]), str(video), "-o", str(root / "sv"), "--ray",
                                   "--save-video", str(root / "sv.mp4")])  # fmt: skip
    assert res.exit_code == 2 and "--save-video" in " ".join(res.output.split()), res.output


def test_a_killed_actor_is_retried_and_every_image_counted_once(job):
    from rcnn_deploy.scale import infer_on_ray

    out = job["root"] / "killed"
    killed: List[int] = []

    def kill_one(done: int, total: int, workers: Dict[str, int]) -> None:
        # after the first results arrive both actors hold tasks: SIGKILL the process of one of them
        if done and not killed:
            pid = int(sorted(workers)[0].split(":")[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    summary, report = infer_on_ray(job["export"], job["subset"], out, batch=2, workers=WORKERS, progress=kill_one)
    assert killed, "no result arrived before the end"
    with pytest.raises(ProcessLookupError):
        os.kill(killed[0], 0)
    # Ray restarted the actor (a new process) and re-ran its unfinished tasks; nothing is lost or doubled
    assert report.exactly_once and report.processed == SUBSET
    assert any(int(w.split(":")[1]) not in killed for w in report.workers) and len(report.workers) > WORKERS, (
        report.workers
    )
    assert sorted(_manifest_ids(out)) == list(range(1, SUBSET + 1))
    _assert_same_outputs(job["local"], out, SUBSET)
    assert summary == json.loads((out / "summary.json").read_text())


def test_a_killed_job_resumes_without_redoing_finished_shards(job):
    out = job["root"] / "resumed"
    args = ["infer", str(job["export"]), str(job["subset"]), "-o", str(out)] + RAY_ARGS
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rcnn_deploy.cli", *args],
        env=env,
        start_new_session=True,  # its own process group: the driver and the Ray instance it started
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 180
        while not list((out / "shards").glob("[0-9]*.json")):
            assert proc.poll() is None, "the job ended before it could be stopped"
            assert time.monotonic() < deadline, "no shard finished in 180 s"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole job stops, mid-run
        proc.wait()
    deadline = time.monotonic() + 30
    with pytest.raises(ProcessLookupError):  # nothing of it is left running (the Ray instance it started included)
        while time.monotonic() < deadline:
            os.killpg(proc.pid, 0)
            time.sleep(0.5)
    finished = {m.name: m.read_bytes() for m in (out / "shards").glob("[0-9]*.json")}
    plan = json.loads((out / "shards" / "plan.json").read_text())
    shards = -(-SUBSET // plan["shard_size"])
    assert 1 <= len(finished) < shards
    assert not (out / "results.json").exists()

    res = _cli(args + ["--resume"])
    run = json.loads((out / "shards" / "run.json").read_text())
    assert run["shards_resumed"] == len(finished) and run["processed"] == SUBSET - sum(
        len(json.loads(m)["images"]) for m in finished.values()
    ), run
    for name, data in finished.items():  # the finished shards were kept, not run again
        assert (out / "shards" / name).read_bytes() == data
    assert sorted(_manifest_ids(out)) == list(range(1, SUBSET + 1))
    _assert_same_outputs(job["local"], out, SUBSET)
    assert f"{len(finished)}/{shards} shards resumed" in " ".join(res.output.split())


def test_resume_refuses_another_job_and_options_need_ray(job, tmp_path):
    out = job["root"] / "ray"  # finished by the first test (or absent when it runs alone: then the plan is new)
    if not (out / "shards" / "plan.json").is_file():
        pytest.skip("needs test_ray_infer_equals_a_local_infer's output")
    res = CliRunner().invoke(
        app,
        ["infer", str(job["export"]), str(job["images"]), "-o", str(out), "--nms-threshold", "0.9", "--resume"]
        + RAY_ARGS,
    )
    assert res.exit_code == 2 and "--resume found a different job" in " ".join(res.output.split()), res.output
    res = CliRunner().invoke(app, ["infer", str(job["export"]), str(job["images"]), "-o", str(tmp_path), "--resume"])
    assert res.exit_code == 2 and "add --ray" in res.output, res.output


def test_eval_on_ray_scores_the_merged_results_like_a_local_eval(job, tmp_path):
    ann = job["root"] / "data" / "annotations.json"
    common = ["eval", str(job["export"]), "-a", str(ann), "--batch", "2", "--max-images", "4"]
    _cli(common + ["-o", str(tmp_path / "local.json")])
    _cli(common + ["-o", str(tmp_path / "ray.json"), "--ray", "--workers", str(WORKERS)])
    local = json.loads((tmp_path / "local.json").read_text())
    on_ray = json.loads((tmp_path / "ray.json").read_text())
    assert on_ray == local
    run = json.loads((tmp_path / "ray.json.shards" / "run.json").read_text())
    assert run["images"] == 4 and run["exactly_once"]


def test_ray_detector_in_a_users_own_pipeline(job, tmp_path):
    """The README's example: ray.data.read_images -> map_batches(RayDetector) gives the local run's detections."""
    from rcnn_deploy.scale import RayDetector

    folder = tmp_path / "four"
    folder.mkdir()
    for p in sorted(job["images"].glob("*.png"))[:4]:
        (folder / p.name).write_bytes(p.read_bytes())
    ds = ray.data.read_images(str(folder), mode="RGB", include_paths=True)
    ds = ds.map_batches(
        RayDetector,
        fn_constructor_kwargs={"model_path": str(job["export"]), "batch": 2},
        batch_size=2,
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=1,
    )
    rows = sorted(ds.take_all(), key=lambda r: r["path"])
    assert [Path(r["path"]).name for r in rows] == sorted(p.name for p in folder.iterdir())
    local = json.loads((job["local"] / "results.json").read_text())
    for r in rows:
        name = Path(r["path"]).name
        want = [
            {k: v for k, v in e.items() if k not in ("image_id", "file_name")} for e in local if e["file_name"] == name
        ]
        got = [{k: v for k, v in e.items() if k != "image_id"} for e in json.loads(r["coco"])]
        assert got == want and r["num_detections"] == len(want) > 0
        assert r["boxes"].shape == (len(want), 4) and r["scores"].shape == r["classes"].shape == (len(want),)
        assert "image" not in r
