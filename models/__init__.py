"""Recognition models shared by the device and the cloud gallery builder.

Public API (so both sides embed faces the same way):

    from models.recognizer import FaceModels
    from models.images import load_image, ImageError

    models = FaceModels.load()            # verifies pinned sha256s; raises ModelFileError
    image = load_image(path_or_bytes)     # BGR uint8, EXIF applied; raises ImageError
    faces = models.detect(image)          # list[models.faces.Face], original coordinates
    faces = models.gate(faces, image)     # sets Face.quality and Face.rejected (reason)
    vector = models.embed(image, face)    # float32 (128,), L2-normalised (a probe: camera frame, query photo)
    template = models.embed_template(image, face)   # a gallery photo: face and mirror image averaged
    # Scoring against a gallery (score normalisation, cohort): models/scoring.py;
    # the threshold for a gallery of N persons: models.thresholds.threshold_for_gallery(N).
    models.detector_ref, models.embedder_ref   # {"id": ..., "sha256": ...} for manifests
"""
