"""Record schema of the `pose` stage: one record per clip (keypoint visibility of the main person)."""

import pyarrow as pa

from humove.schemas.records import RecordSchema

SCHEMA = RecordSchema(
    stage="pose",
    version=2,
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
        # Body parts in the picture (head, shoulders, hips, knees, ankles; see stages/pose.py), over the frames
        # where the keypoint model found the body:
        pa.field("pose_part_seen", pa.list_(pa.float32())),   # (5,) fraction of frames each part is seen in it
        pa.field("pose_part_cut", pa.list_(pa.float32())),    # (5,) fraction of frames each is cut by the frame
        pa.field("pose_full_body_fraction", pa.float64()),    # all five parts seen at once
        pa.field("pose_outside_fraction", pa.float64()),      # a nose/shoulder/hip/knee/ankle point off the picture
        pa.field("pose_score_mean", pa.float64()),            # mean body keypoint score
        pa.field("pose_in_box_fraction", pa.float64()),       # visible body keypoints inside the person box
        pa.field("pose_keypoints_path", pa.string()),         # artifact (see stages/pose.py)
    ),
)
