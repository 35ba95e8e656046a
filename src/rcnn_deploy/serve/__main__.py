"""``python -m rcnn_deploy.serve REPO``: run the real ``tritonserver`` on a model repository that
``rcnn-deploy triton-repo`` wrote, in the foreground, from an interpreter that lacks the CLI's dependencies.

The ``python`` flavour's model runs in the Python-backend stub built for the Python version of the process
that starts the server (:func:`rcnn_deploy.serve.server.prepare_bundle`), with that process's ``PYTHONPATH``
and site-packages. So the interpreter that has the backend's runtime must start the server. The case this is for
is TensorRT 8.6, whose wheels stop at CPython 3.10. There, write the repository with the CLI from any environment
and serve it from the TensorRT interpreter::

    rcnn-deploy triton-repo runs/fused/model_fp16.engine -o repo --max-batch 8      # any environment
    python3.9 -m rcnn_deploy.serve repo --http-port 8000                          # the one with tensorrt

This needs only the standard library (and the bundled server, found as :func:`find_tritonserver` says);
``rcnn-deploy serve`` remains the one-step command where the CLI is installed. SIGINT/SIGTERM stop the server
cleanly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    from ..errors import UserError
    from .server import TritonServer, run_foreground

    ap = argparse.ArgumentParser(prog="python -m rcnn_deploy.serve", description=__doc__.split("\n\n")[0])
    ap.add_argument("repository", type=Path, help="A model repository (rcnn-deploy triton-repo's output).")
    ap.add_argument("--http-port", type=int, default=8000)
    ap.add_argument("--grpc-port", type=int, default=8001)
    ap.add_argument("--metrics-port", type=int, default=8002)
    ap.add_argument("--address", default="0.0.0.0", help="Address the three endpoints listen on.")
    ap.add_argument("--tritonserver", default=None, help="The tritonserver binary (default: found).")
    ap.add_argument("--log-verbose", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        if not (args.repository.is_dir() and any(args.repository.glob("*/config.pbtxt"))):
            raise UserError(
                "not a model repository (no <model>/config.pbtxt inside)",
                where=args.repository,
                fix="write one with: rcnn-deploy triton-repo MODEL_PATH -o REPO",
            )
        server = TritonServer(
            args.repository, http_port=args.http_port, grpc_port=args.grpc_port, metrics_port=args.metrics_port,
            address=args.address, tritonserver=args.tritonserver, log_verbose=args.log_verbose,
        )  # fmt: skip

        def ready(s: TritonServer) -> None:
            print(f"ready: http {s.http_url}, grpc {s.grpc_url}, metrics {s.metrics_url} "
                  f"(Python {sys.version_info[0]}.{sys.version_info[1]} stub)", flush=True)  # fmt: skip

        return run_foreground(server, on_ready=ready)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
