"""The face toolkit both halves stand on: the build that chooses faces and the evaluation that
scores generated ones measure alignment, pose and identity with the same code.

    geometry    boxes: face size, IoU, centre
    detection   SCRFD (insightface, buffalo_l) and mediapipe face detectors
    landmarks   mediapipe FaceMesh around a face box (weights ship in the wheel)
    align       five points, the similarity onto the crop template, crops and face masks
    pose        head pose (yaw, pitch, roll) from FaceMesh landmarks
    embedders   ArcFace (w600k_r50.onnx) and dlib ResNet identity embeddings, their thresholds
    measure     one face's landmarks, pose and alignment: the path both halves call

Pure of Ray and of the trainer: it imports only numpy, OpenCV and the face libraries (each
imported where a model is built), and `mfhq_contract` for its errors.
"""
