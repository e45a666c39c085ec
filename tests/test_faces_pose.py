"""Head pose on real faces: mirror symmetry, in-plane rotation, simulated turns."""

import numpy as np
import pytest
from _faces_helpers import face_image, perspective_turn, rotate

from mfhq_faces.detection import MediapipeFaceDetector
from mfhq_faces.geometry import face_size
from mfhq_faces.landmarks import FaceMeshLandmarker
from mfhq_faces.pose import canonical_model, euler_from_rotation, head_pose

FACES = ["astronaut", "tom", "t1_face"]


@pytest.fixture(scope="module")
def models():
    detector, landmarker = MediapipeFaceDetector(), FaceMeshLandmarker()
    yield detector, landmarker
    detector.close()
    landmarker.close()


def pose_of(models, image):
    detector, landmarker = models
    faces = detector.detect(image)
    assert faces, "no face detected"
    box = max(faces, key=lambda d: face_size(d.bbox)).bbox
    landmarks = landmarker.landmarks(image, box)
    assert landmarks is not None
    return np.array(head_pose(landmarks, image.shape[1], image.shape[0])), box


@pytest.mark.parametrize("name", FACES)
def test_mirroring_negates_yaw_and_roll(models, name):
    image = face_image(name)
    (yaw, pitch, roll), _ = pose_of(models, image)
    (m_yaw, m_pitch, m_roll), _ = pose_of(models, np.ascontiguousarray(image[:, ::-1]))
    assert abs(m_yaw + yaw) <= 3
    assert abs(m_roll + roll) <= 3
    assert abs(m_pitch - pitch) <= 3


@pytest.mark.parametrize("name", FACES)
def test_in_plane_rotation_changes_roll_by_the_angle(models, name):
    image = face_image(name)
    (_, _, roll), _ = pose_of(models, image)
    (_, _, rotated_roll), _ = pose_of(models, rotate(image, 20))
    assert abs((rotated_roll - roll) - 20) <= 3


@pytest.mark.parametrize("name", ["astronaut", "tom"])
def test_stronger_simulated_turn_gives_larger_yaw(models, name):
    image = face_image(name)
    _, box = pose_of(models, image)
    yaws = [abs(pose_of(models, perspective_turn(image, box, s))[0][0]) for s in (0.0, 0.2, 0.4)]
    assert yaws[0] + 2 < yaws[1] and yaws[1] + 2 < yaws[2], yaws


def test_euler_angles_follow_the_documented_signs():
    def about_y(deg):
        a = np.radians(deg)
        return np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])

    def about_z(deg):
        a = np.radians(deg)
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])

    assert np.allclose(euler_from_rotation(np.eye(3)), 0)
    assert np.allclose(euler_from_rotation(about_y(-30)), (30, 0, 0))   # nose to image right
    assert np.allclose(euler_from_rotation(about_z(-15)), (0, 0, 15))   # counter-clockwise


def test_canonical_model_is_left_right_symmetric():
    indices, points, source = canonical_model()
    assert source
    mirrored = points * np.array([-1, 1, 1])
    # every mirrored point has a partner in the model
    distances = np.linalg.norm(mirrored[:, None] - points[None], axis=2).min(axis=1)
    assert distances.max() < 1e-6 or "obj" in source
