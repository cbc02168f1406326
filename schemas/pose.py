"""Record schema of the `pose` stage: one record per clip (keypoint visibility of the main person)."""

import pyarrow as pa

from humove.schemas.records import RecordSchema

SCHEMA = RecordSchema(
    stage="pose",
    version=1,
    key="clip_id",
    fields=(
        pa.field("pose_model", pa.string()),                  # weight file name (or builtin:…)
        pa.field("pose_model_sha256", pa.string()),
        pa.field("pose_layout", pa.string()),                 # "coco17" or "coco_wholebody133"
        pa.field("pose_score_threshold", pa.float64()),       # a keypoint is visible above this score
        pa.field("pose_num_frames", pa.int64()),              # frames of the current clip
        pa.field("pose_frames_seen", pa.int64()),             # frames where the main person is seen
        # Over the frames where the main person is seen, COCO-17 body keypoints:
        pa.field("pose_visible_mean", pa.float64()),          # visible body keypoints per frame (of 17)
        pa.field("pose_visible_p10", pa.float64()),           # 10th percentile of that count
        pa.field("pose_joint_visibility", pa.list_(pa.float32())),  # (17,) fraction of frames each is visible
        pa.field("pose_full_body_fraction", pa.float64()),    # shoulders, hips, knees and ankles all visible
        pa.field("pose_lower_body_fraction", pa.float64()),   # a knee or an ankle visible
        pa.field("pose_score_mean", pa.float64()),            # mean body keypoint score
        pa.field("pose_in_box_fraction", pa.float64()),       # visible body keypoints inside the person box
        pa.field("pose_keypoints_path", pa.string()),         # artifact (see stages/pose.py)
    ),
)
