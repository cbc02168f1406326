"""The mesh renderer: the drawn body lies where its joints project, faces are culled and shaded, backgrounds have
texture, and the offline pose model finds the rendered person at the right place."""

import numpy as np
import pytest

from humove.keypoints.base import MEDIAPIPE_POSE
from humove.motion.body_model import standin_model
from humove.motion.synthetic import demo_motion, place_motion
from humove.render import Camera, Clothing, Mesh, Scene, face_colours, render_meshes, scene_background, silhouette

CAMERA = Camera(320, 240, 380.0)
SCENE = Scene((150, 120, 90), (115, 90, 65), (185, 175, 155), (160, 150, 135), seed=1)


def rendered_person(motion="wave", frame=5, start=(0.1, 3.5), heading=0.2):
    """A stand-in body in mid-motion: (image (H, W, 3), mesh, joints (24, 3) camera frame)."""
    model = standin_model()
    pose, root, travel = demo_motion(motion, frame + 1, 20.0)
    clip, vertices = place_motion(pose, root, travel, np.zeros(10, np.float32), start, heading, floor_y=0.95)
    colours = face_colours(model.smpl.v_template.numpy(), model.faces, model.smpl.lbs_weights.numpy(), Clothing())
    mesh = Mesh(vertices[frame], model.faces, colours)
    return render_meshes(scene_background(SCENE, CAMERA), [mesh], CAMERA), mesh, clip.joints[frame]


def test_the_silhouette_covers_the_projected_joints_and_little_else():
    _, mesh, joints = rendered_person()
    mask = silhouette([mesh], CAMERA)
    xy = CAMERA.project(joints)
    assert ((xy >= 0) & (xy < [320, 240])).all(), "the test pose is fully in view"
    columns, rows = np.round(xy).astype(int).T
    assert mask[rows, columns].mean() >= 0.9  # joints lie inside the body
    ys, xs = np.nonzero(mask)
    # The body reaches past its joints only by its flesh: head top, hands, feet (< 30 px at 3.5 m).
    assert xs.min() > xy[:, 0].min() - 30 and xs.max() < xy[:, 0].max() + 30
    assert ys.min() > xy[:, 1].min() - 30 and ys.max() < xy[:, 1].max() + 15
    assert 2000 < mask.sum() < 12000  # a person about 190 px tall, not a blob or a speck


def test_faces_turned_away_are_culled_and_lit_faces_are_brighter():
    camera = Camera(64, 64, 60.0)
    toward = np.array([[-0.5, -0.5, 2.0], [0.5, -0.5, 2.0], [0.0, 0.5, 2.0]])  # clockwise on screen: faces us
    faces = np.array([[0, 2, 1]])
    grey = np.full((1, 3), 200.0, np.float32)
    black = np.zeros((64, 64, 3), np.uint8)
    front = render_meshes(black, [Mesh(toward, faces, grey)], camera, light_direction=(0, 0, -1))
    back = render_meshes(black, [Mesh(toward, faces[:, ::-1], grey)], camera, light_direction=(0, 0, -1))
    side_lit = render_meshes(black, [Mesh(toward, faces, grey)], camera, light_direction=(1, 0, -0.2))
    assert back.max() == 0, "a face turned away from the camera is not drawn"
    assert front[32, 32, 0] == 200 and 0 < side_lit[32, 32, 0] < front[32, 32, 0]


def test_backgrounds_are_textured_deterministic_and_move_with_the_camera():
    first = scene_background(SCENE, CAMERA)
    assert np.array_equal(first, scene_background(SCENE, CAMERA))
    gray = first.astype(float).mean(axis=2)
    assert np.abs(np.diff(gray, axis=1)).mean() > 3  # real texture, not a flat gradient
    moved = scene_background(SCENE, CAMERA, camera_x=0.3)
    assert np.abs(moved.astype(float) - first).mean() > 5


def test_the_offline_pose_model_finds_the_rendered_person_at_its_joints():
    from humove.keypoints.mediapipe_pose import MediaPipePoseDetector

    image, _, joints = rendered_person(motion="walk", frame=8, start=(-0.3, 3.6), heading=0.6)
    expected = CAMERA.project(joints)
    with MediaPipePoseDetector(static_image_mode=True) as detector:
        track = detector.detect_track(image[None], np.array([[0, 0, 320, 240]]))
    kp, smpl, _ = MEDIAPIPE_POSE.smpl_indices()
    names = [MEDIAPIPE_POSE.names[k] for k in kp]
    limbs = [i for i, name in enumerate(names) if name.split("_", 1)[-1] in ("shoulder", "elbow", "knee", "ankle")]
    assert len(limbs) == 8
    assert (track.scores[0, kp[limbs]] > 0.5).all()
    error = np.linalg.norm(track.xy[0, kp[limbs]] - expected[smpl[limbs]], axis=-1)
    assert np.median(error) < 8 and error.max() < 20, error  # pixels, on a person ~190 px tall


@pytest.mark.parametrize("points", [np.array([[0.0, 0.0, 2.0]]), np.zeros((2, 5, 3)) + [0.1, -0.2, 1.0]])
def test_projection_is_the_pinhole_model(points):
    camera = Camera(320, 240, 380.0, cx=150.0, cy=130.0)
    xy = camera.project(points)
    k = camera.intrinsics()
    homogeneous = points @ k.T
    np.testing.assert_allclose(xy, homogeneous[..., :2] / homogeneous[..., 2:], rtol=1e-6)
