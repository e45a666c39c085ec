"""Five-point similarity alignment and the face mask, on a real face."""

import numpy as np
from _faces_helpers import face_image, rotate

from mfhq_faces.align import (
    ALIGN_TEMPLATE,
    aligned_crop,
    alignment_matrix,
    face_mask,
    five_points,
    similarity_transform,
    transform_points,
)
from mfhq_faces.detection import MediapipeFaceDetector
from mfhq_faces.landmarks import FaceMeshLandmarker, face_oval_indices


def test_similarity_transform_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = np.radians(25), 1.7, np.array([12.0, -4.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)],
                                 [np.sin(angle), np.cos(angle)]])
    target = source @ rotation.T + shift
    matrix = similarity_transform(source, target)
    assert np.allclose(matrix[:, :2], rotation, atol=1e-9)
    assert np.allclose(matrix[:, 2], shift, atol=1e-9)


def test_aligned_crop_puts_the_face_on_the_template_whatever_the_roll():
    image = rotate(face_image("astronaut"), 25)
    box = MediapipeFaceDetector().detect(image)[0].bbox
    landmarks = FaceMeshLandmarker().landmarks(image, box)
    size = 256
    points = five_points(landmarks)
    matrix = alignment_matrix(points, size)
    crop = aligned_crop(image, matrix, size)
    mask = face_mask(landmarks, face_oval_indices(), matrix, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    assert mask.shape == (size, size) and set(np.unique(mask)) <= {0, 255}
    in_crop = transform_points(matrix, points)
    assert np.abs(in_crop - ALIGN_TEMPLATE * size).max() < 0.06 * size
    eyes = in_crop[:2]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 0.02 * size   # level eyes: roll is undone
    covered = (mask > 0).mean()
    assert 0.25 < covered < 0.8        # the face, not the whole crop, not a sliver
    assert mask[int(0.6 * size), size // 2] == 255   # nose area is inside the mask
    assert mask[2, 2] == 0 and mask[-3, -3] == 0
    # the face region is brighter/more textured than the black border would be
    assert crop[mask > 0].mean() > 40
