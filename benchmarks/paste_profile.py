"""Where gpu_post.paste_runs' time goes on a GPU (ad hoc): cProfile of the kernel path over 100 masks of a
1920x1080 image (gpu_post_bench's lognormal case), and the wall time of each call with a sync."""

import cProfile
import io
import pstats
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_post_bench import make_case, timed  # noqa: E402

from rcnn_deploy.glue.gpu_post import paste_runs  # noqa: E402


def main() -> None:
    rng = np.random.default_rng(0)
    case = make_case(rng, 100, 1080, 1920, 28, "lognormal")
    probs = torch.from_numpy(case["probs"]).cuda()
    boxes = torch.from_numpy(case["boxes"]).cuda()
    for _ in range(4):  # with timed()'s own: the kernel compiled, the allocator warm
        paste_runs(probs, boxes, (1080, 1920))
    wall = timed(lambda: paste_runs(probs, boxes, (1080, 1920)), 30, torch.cuda.synchronize)
    print("wall ms min/median", wall["min_ms"], wall["median_ms"])
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(30):
        paste_runs(probs, boxes, (1080, 1920))
    torch.cuda.synchronize()
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25)
    print(s.getvalue())
    print("threads", torch.get_num_threads())


if __name__ == "__main__":
    main()
