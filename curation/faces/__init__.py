"""Per-clip face analysis: sampled decoding, detection, the clip's own person, FaceMesh
landmarks, head pose, aligned crop + mask, sharpness, quality and identity models.

Nothing here knows about Ray, shards or the build folder: `analysis.FaceAnalyzer` turns one
ClipRecord into a ClipAnalysis and never raises for bad input.
"""
