"""Runtime pieces shared by every backend: detections, mask pasting, parity checks. numpy only (no torch),
so they also run beside TensorRT on Python 3.9."""
