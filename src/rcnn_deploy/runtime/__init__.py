"""Runtime pieces shared by every backend: image sources and preprocessing, the streaming runner, detections,
mask pasting, COCO results and writers, timing. numpy only (no torch), so they also run beside TensorRT on
Python 3.9. Scoring detections is :mod:`rcnn_deploy.evaluation`; the split pipeline's torch glue is
:mod:`rcnn_deploy.glue.split`."""
