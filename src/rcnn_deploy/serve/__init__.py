"""Serving with NVIDIA Triton Inference Server.

* :mod:`.contract` — the client-facing tensors (encoded image bytes in; boxes, scores, classes, class names,
  COCO-RLE masks out) and the image decoding with its size limit;
* :mod:`.repository` — ``rcnn-deploy triton-repo``: model repositories of the ``python`` flavour (the project's
  ``Detector`` in Triton's Python backend) and the ``tensorrt`` flavour (engine + Python pre/post + ensemble);
* :mod:`.server` — finding and running a real ``tritonserver`` (``rcnn-deploy serve``);
* ``model.py``, ``pre_model.py``, ``post_model.py`` — the Python-backend model files copied into repositories
  (they import ``triton_python_backend_utils`` and run only inside Triton).

Nothing heavy is imported here.
"""
