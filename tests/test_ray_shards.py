"""The Ray runner's bookkeeping without Ray (fast): the driver's shard collector (duplicates dropped, shards
committed when complete), the shard store (what counts as finished, resume, merge's exactly-once check), the
plan's inputs, and the shared per-image sinks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import numpy as np
import pytest

from rcnn_deploy.errors import UserError
from rcnn_deploy.runtime.detections import Detections
from rcnn_deploy.scale.ray_infer import (
    ImageRecord,
    Plan,
    ShardCollector,
    ShardStore,
    default_shard_size,
    infer_items,
    list_inputs,
)


def _plan(n: int = 5, shard_size: int = 2, **settings) -> Plan:  # type: ignore[no-untyped-def]
    paths = [Path(f"/data/{i:03d}.png") for i in range(n)]
    return Plan("infer", infer_items(paths), shard_size, {"model_path": "/m", **settings})


def _record(plan: Plan, image_id: int, worker: str = "w:1", dets: int = 1) -> ImageRecord:
    it = plan.items[image_id - 1]
    entries = [
        {"image_id": image_id, "category_id": 1, "score": 0.9 - 0.1 * k, "file_name": it.name} for k in range(dets)
    ]
    return ImageRecord.from_entries(it.index, image_id, worker, entries)


def test_collector_drops_duplicates_commits_complete_shards_and_merge_keeps_plan_order(tmp_path):
    plan = _plan(5, 2)  # shards: [1, 2], [3, 4], [5]
    store = ShardStore(tmp_path)
    plan, done = store.start(plan, resume=False)
    assert done == []
    col = ShardCollector(store, dict(enumerate(plan.shards())))
    # out of order, one row twice (a re-run task), one image failed
    assert col.add(1, _record(plan, 4, "w:2", dets=2), "onnxruntime")
    assert col.add(0, _record(plan, 2), "onnxruntime")
    assert not col.add(1, _record(plan, 4, "w:3", dets=2), "onnxruntime")
    assert col.committed == set() and col.missing() == 3
    assert col.add(0, _record(plan, 1, dets=0), "onnxruntime")
    assert col.committed == {0}
    assert not col.add(0, _record(plan, 1, "w:9"), "onnxruntime")  # after its shard was committed
    assert col.add(2, ImageRecord(4, 5, "w:2", error="cannot read image"), "onnxruntime")
    assert col.add(1, _record(plan, 3, "w:2"), "onnxruntime")
    assert col.committed == {0, 1, 2} and col.missing() == 0 and col.duplicates == 2
    assert dict(col.workers) == {"w:1": 2, "w:2": 3}
    with pytest.raises(RuntimeError, match="does not hold it"):
        ShardCollector(store, dict(enumerate(plan.shards()))).add(0, _record(plan, 3), "onnxruntime")

    merged = store.merge(plan)
    assert [r["image_id"] for r in merged.results] == [2, 3, 4, 4]  # image id order, each image's as produced
    assert [r["score"] for r in merged.results if r["image_id"] == 4] == [0.9, 0.8]
    assert [r["image_id"] for r in merged.records] == [1, 2, 3, 4, 5] and merged.records[4]["error"]
    assert merged.backend == "onnxruntime" and merged.workers == {"w:1": 2, "w:2": 3}
    # one JSON line per COCO entry
    assert len((tmp_path / "00001.jsonl").read_text().splitlines()) == 3


def _finish(store: ShardStore, plan: Plan, shards: List[int]) -> None:
    col = ShardCollector(store, {k: plan.shards()[k] for k in shards})
    for k in shards:
        for it in plan.shards()[k]:
            col.add(k, _record(plan, it.image_id), "onnxruntime")


def test_store_resume_keeps_only_consistent_shards_and_refuses_another_job(tmp_path):
    plan = _plan(6, 2)
    store = ShardStore(tmp_path)
    store.start(plan, resume=False)
    _finish(store, plan, [0, 1, 2])
    # shard 1 lost a JSON line (a torn copy), shard 2's manifest is gone: neither counts as finished
    lines = (tmp_path / "00001.jsonl").read_text().splitlines()
    (tmp_path / "00001.jsonl").write_text(lines[0] + "\n")
    (tmp_path / "00002.json").unlink()
    (tmp_path / ".00003.json.abc.tmp").write_text("partial")  # a killed run's half-written file
    (tmp_path / "notes.txt").write_text("mine")
    resumed, done = ShardStore(tmp_path).start(_plan(6, 4), resume=True)  # the recorded plan's shard size wins
    assert done == [0] and resumed.shard_size == 2
    assert not (tmp_path / ".00003.json.abc.tmp").exists()
    with pytest.raises(RuntimeError, match="inconsistent"):
        store.merge(resumed)
    for other, what in ((_plan(7, 2), "inputs differ"), (_plan(6, 2, visualize=False), "settings differ (visualize)")):
        with pytest.raises(UserError, match=r"--resume found a different job") as e:
            ShardStore(tmp_path).start(other, resume=True)
        assert what in str(e.value)
    # a fresh run removes the store's own files only
    ShardStore(tmp_path).start(plan, resume=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "plan.json"]


def test_merge_refuses_an_image_missing_or_twice(tmp_path):
    plan = _plan(4, 2)
    store = ShardStore(tmp_path)
    store.start(plan, resume=False)
    _finish(store, plan, [0])
    with pytest.raises(FileNotFoundError):  # shard 1 never finished
        store.merge(plan)
    _finish(store, plan, [1])
    store.merge(plan)
    man = json.loads((tmp_path / "00001.json").read_text())
    man["images"][1] = dict(man["images"][0])  # image 3 listed twice, image 4 not at all
    (tmp_path / "00001.json").write_text(json.dumps(man))
    with pytest.raises(RuntimeError):
        store.merge(plan)


def test_inputs_list_file_ids_and_shard_size(tmp_path):
    (tmp_path / "imgs").mkdir()
    for name in ("b.png", "a.png"):
        (tmp_path / "imgs" / name).write_bytes(b"")
    lst = tmp_path / "list.txt"
    lst.write_text("# two images, in this order\nimgs/b.png\n\n" + str(tmp_path / "imgs" / "a.png") + "\n")
    paths = list_inputs(lst)
    assert paths == [tmp_path / "imgs" / "b.png", tmp_path / "imgs" / "a.png"]
    items = infer_items(paths)
    assert [(it.image_id, it.name) for it in items] == [(1, "b.png"), (2, "a.png")]
    assert [p.name for p in list_inputs(tmp_path / "imgs")] == ["a.png", "b.png"]  # find_images order
    with pytest.raises(UserError, match="does not exist"):
        list_inputs(tmp_path / "nothing_here")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(UserError, match="names no images"):
        list_inputs(tmp_path / "empty.txt")
    assert default_shard_size(24, 2, 2) == 3 and default_shard_size(10**6, 64, 8) == 256
    assert default_shard_size(5, 8, 4) == 4 and default_shard_size(1, 1, 1) == 1


def test_image_outputs_write_what_the_local_infer_writes(tmp_path):
    from rcnn_deploy import get_spec
    from rcnn_deploy.runtime.sinks import ImageOutputs, coco_entries, failure_record, infer_summary
    from rcnn_deploy.runtime.visualize import draw, write_tsv

    pytest.importorskip("pycocotools")
    spec = get_spec("torchvision-maskrcnn")
    rgb = np.full((40, 50, 3), 90, np.uint8)
    masks = np.zeros((2, 40, 50), bool)
    masks[0, 5:20, 5:30] = masks[1, 20:35, 10:40] = True
    det = Detections(
        np.array([[5, 5, 30, 20], [10, 20, 40, 35]], np.float32),
        np.array([0.9, 0.4], np.float32),
        np.array([1, 3], np.int32),
        masks,
    )
    entries = ImageOutputs(tmp_path / "a", spec, score_threshold=0.5).write(7, "x/img.png", rgb, det)
    kept = det.above(0.5)
    write_tsv(tmp_path / "ref.tsv", kept, spec.class_names, spec.label_ids)
    draw(rgb, kept, spec.class_names, spec.label_ids, tmp_path / "ref.png")
    assert (tmp_path / "a" / "img.tsv").read_bytes() == (tmp_path / "ref.tsv").read_bytes()
    assert (tmp_path / "a" / "img.png").read_bytes() == (tmp_path / "ref.png").read_bytes()
    assert entries == coco_entries(kept, spec, 7, "img.png") and len(entries) == 1
    assert entries[0]["file_name"] == "img.png" and entries[0]["image_id"] == 7 and "segmentation" in entries[0]
    assert "file_name" not in coco_entries(kept, spec, 7)[0]
    ImageOutputs(tmp_path / "b", spec, visualize=False).write(1, "y.png", rgb, det)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["y.tsv"]
    fail = failure_record("bad.png", ValueError("cannot read image bad.png"))
    assert infer_summary(3, [fail], 5, "torch") == {
        "images": 3,
        "processed": 3,
        "written": 2,
        "failures": [{"image": "bad.png", "error": "cannot read image bad.png"}],
        "detections": 5,
        "backend": "torch",
        "complete": True,
    }


# ------------------------------------------------------------------------------------ video frame ranges
def _clip(path: Path, frames: int = 11, hw=(48, 64)) -> Path:  # type: ignore[no-untyped-def]
    """A small mp4 whose frames differ (a bar moving right), so a wrong frame is caught."""
    cv2 = pytest.importorskip("cv2")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (hw[1], hw[0]))
    for k in range(frames):
        f = np.full((*hw, 3), 40, np.uint8)
        f[:, 4 * k : 4 * k + 6] = (200, 30 + 10 * k, 90)
        writer.write(f)
    writer.release()
    return path


def test_a_video_becomes_frame_items_and_shards_decode_the_frames_the_local_reader_decodes(tmp_path):
    from rcnn_deploy.runtime.sources import open_source
    from rcnn_deploy.scale.ray_infer import _decode_shards

    video = _clip(tmp_path / "clip.mp4")
    (tmp_path / "a.png").write_bytes(b"")
    lst = tmp_path / "inputs.txt"
    lst.write_text("a.png\nclip.mp4\n")
    assert list_inputs(video) == [video]
    items = infer_items(list_inputs(lst), stride=2)
    local = list(open_source(video, stride=2))  # what a local infer of the video runs
    assert items[0].frame == -1 and items[0].name == "a.png"
    frames = items[1:]
    assert [(it.image_id, it.frame) for it in frames] == [(i + 2, 2 * i) for i in range(6)]
    assert [it.frame for it in frames] == [it.frame for it in local]
    assert [round(it.time_s, 6) for it in frames] == [round(float(it.time_s), 6) for it in local]
    assert frames[3].path == f"{video}#6" and frames[3].name == "clip.mp4" and frames[3].file == str(video.resolve())
    plan = Plan("infer", frames, 2, {"model_path": "/m"})
    # shards out of order, a range that starts mid-video after a later one (a seek back), one frame far ahead
    shards = plan.shards()
    order = [2, 0, 1]
    rows = {"shard": np.array(order), "items": np.array([json.dumps([vars(it) for it in shards[k]]) for k in order])}
    out = _decode_shards(rows, "infer")
    assert list(out["error"]) == [""] * 6
    want = {it.frame: it.array for it in local}
    for k, frame, t, img, path in zip(out["shard"], out["frame"], out["time_s"], out["image"], out["path"]):
        assert frame in [it.frame for it in shards[int(k)]]
        np.testing.assert_array_equal(img, want[int(frame)])
        assert t == pytest.approx(int(frame) / 10.0) and path == str(video.resolve())
    # a frame past the end is that image's error, not the batch's
    late = [dict(vars(frames[0]), frame=99, index=9, image_id=10)]
    bad = _decode_shards({"shard": np.array([0]), "items": np.array([json.dumps(late)])}, "infer")
    assert "frame 99" in str(bad["error"][0]) and bad["image"][0].shape == (1, 1, 3)


def test_frame_outputs_are_named_and_tagged_as_a_local_video_run_names_them(tmp_path):
    from rcnn_deploy import get_spec
    from rcnn_deploy.runtime.sinks import ImageOutputs, coco_entries

    pytest.importorskip("pycocotools")
    spec = get_spec("torchvision-maskrcnn")
    rgb = np.full((40, 50, 3), 90, np.uint8)
    masks = np.zeros((1, 40, 50), bool)
    masks[0, 5:20, 5:30] = True
    box, score = np.array([[5, 5, 30, 20]], np.float32), np.array([0.9], np.float32)
    det = Detections(box, score, np.array([1], np.int32), masks)
    entries = ImageOutputs(tmp_path, spec).write(3, "videos/clip.mp4", rgb, det, frame=12, time_s=1.2000001)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip_000012.tsv"]  # no PNG, as a local video run
    assert entries == [dict(e, frame=12, time_s=1.2) for e in coco_entries(det, spec, 3, "clip.mp4")]
