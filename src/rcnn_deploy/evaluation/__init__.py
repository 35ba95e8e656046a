"""Scoring detections: COCO mAP, checking a ground truth against a model, a detector over a COCO dataset,
and one backend against another (parity of matched detections, mAP with the reference as ground truth).

Above the runtime (it runs a :class:`~rcnn_deploy.api.Detector` through the streaming runner and scores what
comes out), below the tools. numpy only (COCO evaluation through faster-coco-eval or pycocotools, imported when
used); no torch.

``coco``          :func:`~.coco.evaluate_coco`, :func:`~.coco.pick_library`, the 12 metric names
``ground_truth``  :func:`~.ground_truth.load_ground_truth`, :func:`~.ground_truth.validate_ground_truth`, ...
``dataset``       :func:`~.dataset.evaluate_detector`
``reference``     :func:`~.reference.reference_map`: a candidate's mAP against a reference's detections
``parity``        :func:`~.parity.compare_detections`: matched detections and their differences
"""
