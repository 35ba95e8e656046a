"""A user's run of a fused TensorRT engine over a folder with bad files mixed in, in the TensorRT process (CPython
3.9 + TensorRT 8.6, no torch), as ``infer`` writes it: ``Detector.from_engine(...).stream(folder)`` with an
``InferWriter`` (TSV per image, ``results.jsonl`` flushed per image, ``results.json`` / ``summary.json`` at the end).

    py39 benchmarks/trt_user_check.py --engine out/b1/model_fp16.engine --images DIR --out check.json [-n 12]

The folder: ``-n`` good JPEGs of DIR (copied) with four bad files between them: random bytes named ``.jpg``, a JPEG
cut in half, an empty ``.jpg`` and a text file named ``.png``. Each configuration runs over it:
  host          host decode, host mask paste (the reference)
  host_kernel   host decode, masks pasted by the CUDA kernel (``gpu_post="kernel"``)
  gpu_kernel    nvImageCodec decode + GPU letterbox, kernel paste (only when nvImageCodec imports)
each in a process of its own (a TensorRT 8.6 process that made a second detector of the engine died in run
36), and the script records, per configuration: whether every bad file is in ``summary.json``'s failures with
a reason and no good file is; whether results came back in input order; that ``results.jsonl`` has a line per
image; and the COCO results per good image against the ``host`` run's (``vs_host``: equal RLE strings and boxes,
required for ``host_kernel``; for ``gpu_kernel``, whose JPEG decoder differs, for reference only). ``ok`` is all
of these.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _tree import tree  # noqa: E402

from rcnn_deploy._io import atomic_write_json  # noqa: E402
from rcnn_deploy.api import Detector  # noqa: E402
from rcnn_deploy.runtime.preprocess import find_images  # noqa: E402
from rcnn_deploy.runtime.stream import StreamStats  # noqa: E402
from rcnn_deploy.runtime.writers import InferWriter  # noqa: E402

BAD = ("b_random_bytes.jpg", "b_truncated.jpg", "b_empty.jpg", "b_text.png")


def make_folder(images, n, root):
    """``n`` good JPEGs with the bad files among them (names sort them in between); returns the bad names."""
    good = find_images(images)[:n]
    if len(good) < 2:
        raise SystemExit(f"--images {images}: need at least 2 JPEGs, found {len(good)}")
    os.makedirs(root)
    names = []
    for i, p in enumerate(good):
        name = f"g{i:03d}.jpg"
        shutil.copyfile(str(p), os.path.join(root, name))
        names.append(name)
    with open(str(good[0]), "rb") as f:
        data = f.read()
    bad = {
        BAD[0]: os.urandom(4096),
        BAD[1]: data[: len(data) // 2],
        BAD[2]: b"",
        BAD[3]: b"not an image\n",
    }
    for name, blob in bad.items():
        with open(os.path.join(root, name), "wb") as f:
            f.write(blob)
    return names


def run(det, folder, out_dir):
    """One ``infer``-like run; the results in the order they came and what the writer left on disk."""
    writer = InferWriter(out_dir, det.spec, backend=det.backend, visualize=False)
    stats = StreamStats()
    order, errors = [], {}
    t0 = time.perf_counter()
    for r in det.stream(folder, per_image=writer.per_image, stats=stats, return_masks=False):
        writer.add(r)
        order.append(r.index)
        if not r.ok:
            errors[r.name] = r.error
    summary = writer.close(stats)
    seconds = time.perf_counter() - t0
    with open(os.path.join(out_dir, "results.json")) as f:
        coco = json.load(f)
    with open(os.path.join(out_dir, "results.jsonl")) as f:
        lines = [json.loads(x) for x in f if x.strip()]
    return {"order": order, "errors": errors, "summary": summary, "coco": coco, "lines": lines, "seconds": seconds}


def by_image(coco):
    out = {}
    for e in coco:
        out.setdefault(e["image_id"], []).append(e)
    return out


def compare_exact(a, b):
    """Per image: the same entries (category, score, box to 1e-3, RLE string) in the same order."""
    ia, ib = by_image(a), by_image(b)
    same = 0
    differ = []
    for k in sorted(set(ia) | set(ib), key=str):
        ea, eb = ia.get(k, []), ib.get(k, [])
        ok = len(ea) == len(eb) and all(
            x["category_id"] == y["category_id"]
            and abs(x["score"] - y["score"]) < 1e-6
            and all(abs(p - q) < 1e-3 for p, q in zip(x["bbox"], y["bbox"]))
            and x.get("segmentation") == y.get("segmentation")
            for x, y in zip(ea, eb)
        )
        same += ok
        if not ok:
            differ.append(str(k))
    return {"images_equal": same, "images": len(set(ia) | set(ib)), "differ": differ[:10]}


def failures_row(res, bad, good):
    """Whether the summary names every bad file (with a reason) and only those."""
    fails = res["summary"].get("failures", [])
    named = {os.path.basename(str(f["image"])): f for f in fails}
    reasons = {k: str(v["error"] or "") for k, v in named.items()}
    return {
        "bad_reported": sorted(k for k in bad if k in named and reasons[k]),
        "bad_missing": sorted(k for k in bad if k not in named),
        "good_reported": sorted(k for k in good if k in named),
        "reasons": reasons,
        "stream_errors": res["errors"],
    }


CONFIGS = {"host": (False, False), "host_kernel": (False, "kernel"), "gpu_kernel": (True, "kernel")}


def child(a):
    """One configuration over ``--folder`` in this process: what the parent compares, as JSON in ``--out``."""
    gpu_decode, gpu_post = CONFIGS[a.child]
    det = Detector.from_engine(a.engine, gpu_decode=gpu_decode, gpu_post=gpu_post)
    res = run(det, a.folder, os.path.join(os.path.dirname(a.out), a.child))
    if det.batch_model is not None:
        det.batch_model.close()
    atomic_write_json(a.out, res)


def in_child(a, name, folder, tmp):
    """Configuration ``name`` in a process of its own (a TensorRT 8.6 process that made a second detector of the
    engine died with SIGSEGV in run 36; run 20's likewise); its output goes to a file, not a pipe (the workers of a
    process that dies could hold a pipe open). Returns its results, or raises with its exit status and log."""
    out, log = os.path.join(tmp, name + ".json"), os.path.join(tmp, name + ".log")
    cmd = [sys.executable, os.path.abspath(__file__), "--engine", a.engine, "--images", a.images, "--out", out,
           "--child", name, "--folder", folder]  # fmt: skip
    with open(log, "w") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    if code != 0 or not os.path.isfile(out):
        with open(log) as f:
            raise RuntimeError(f"the {name} process exited with {code}: {f.read()[-1500:]}")
    with open(out) as f:
        return json.load(f)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("-n", type=int, default=12)
    ap.add_argument("--only", default="", help="comma-separated configurations to run (default: all)")
    ap.add_argument("--child", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a)
    tmp = tempfile.mkdtemp(prefix="trt_user_check_")
    folder = os.path.join(tmp, "images")
    good = make_folder(a.images, a.n, folder)
    total = len(good) + len(BAD)
    names = ["host", "host_kernel"]
    try:
        import nvidia.nvimgcodec  # noqa: F401

        names.append("gpu_kernel")
    except ImportError as e:
        print(f"gpu_kernel skipped: {e}")
    if a.only:
        names = [n for n in names if n in a.only.split(",")]
    doc = {"script": "benchmarks/trt_user_check.py", "commit": tree(), "engine": a.engine, "good": len(good),
           "bad": list(BAD), "configs": {}}  # fmt: skip
    results = {}
    for name in names:
        gpu_decode, gpu_post = CONFIGS[name]
        row = doc["configs"].setdefault(name, {"gpu_decode": gpu_decode, "gpu_post": gpu_post})
        try:
            res = in_child(a, name, folder, tmp)
        except Exception as e:  # noqa: BLE001 - recorded: the check failed as a whole
            row["error"] = f"{type(e).__name__}: {e}"
            print(f"{name}: {row['error']}")
            continue
        results[name] = res
        row.update(failures_row(res, BAD, good))
        row["in_order"] = res["order"] == sorted(res["order"]) and len(res["order"]) == total
        row["jsonl_lines"] = len(res["lines"])
        row["summary"] = {k: v for k, v in res["summary"].items() if k != "failures"}
        row["seconds"] = round(res["seconds"], 2)
        row["detections"] = len(res["coco"])
        if name != "host" and "host" in results:  # gpu_kernel: for reference (another JPEG decoder)
            row["vs_host"] = compare_exact(results["host"]["coco"], res["coco"])
        row["ok"] = (
            not row["bad_missing"]
            and not row["good_reported"]
            and row["in_order"]
            and row["jsonl_lines"] == total
            and (name != "host_kernel" or row["vs_host"]["images_equal"] == row["vs_host"]["images"])
        )
        print(name, json.dumps({k: row[k] for k in ("ok", "bad_reported", "in_order", "jsonl_lines", "detections")}))
    doc["ok"] = bool(doc["configs"]) and all(r.get("ok") for r in doc["configs"].values())
    atomic_write_json(a.out, doc)
    shutil.rmtree(tmp, ignore_errors=True)
    print("ok" if doc["ok"] else "NOT ok", a.out)


if __name__ == "__main__":
    main()
