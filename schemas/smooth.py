"""Record schema of the `smooth` stage: the final motion file of a clip and its motion-quality measures.

Measures are raw (decisions apply the thresholds, so they can change without recomputing):
- `motion_jitter_mps2`: mean joint acceleration (m/s²) over valid frames;
- `motion_foot_sliding_mps`: mean horizontal speed of the feet while they stand on the floor (m/s);
- `motion_depth_drift_mps`: root depth change per second beyond what the person's size in the image supports;
- `motion_max_abs_beta`: the largest |β| of the body shape (SMPL's shape coefficients are standard normal);
- `motion_reprojection_rel`: mean distance of projected SMPL joints to the pose keypoints / person height;
- `motion_agreement_pck`: share of confident keypoints within `pck_alpha` person heights of their SMPL joint;
- `motion_limb_length_error`: median |log| ratio of projected SMPL limb lengths to keypoint limb lengths;
- `motion_required_parts_fraction`: frames where the person and the body parts of `required_parts` are seen;
- `motion_valid_fraction`, `motion_longest_valid_s`: frames where the person is really seen and the fit agrees;
- `motion_joint_valid_fraction`: per SMPL joint (24), the share of valid frames where keypoints show it.
"""

import pyarrow as pa

from humove.schemas.records import RecordSchema

SCHEMA = RecordSchema(
    stage="smooth",
    version=3,
    key="clip_id",
    fields=(
        pa.field("motion_path", pa.string()),         # artifact: final motion file, frames = the clip's frames
        pa.field("motion_sha256", pa.string()),
        pa.field("motion_body_model", pa.string()),
        pa.field("motion_num_frames", pa.int64()),
        pa.field("motion_settings", pa.string()),     # JSON: smoothing and validity settings used
        pa.field("motion_jitter_mps2", pa.float64()),
        pa.field("motion_foot_sliding_mps", pa.float64()),
        pa.field("motion_depth_drift_mps", pa.float64()),
        pa.field("motion_max_abs_beta", pa.float64()),
        pa.field("motion_reprojection_rel", pa.float64()),
        pa.field("motion_agreement_pck", pa.float64()),
        pa.field("motion_limb_length_error", pa.float64()),
        pa.field("motion_required_parts_fraction", pa.float64()),
        pa.field("motion_valid_fraction", pa.float64()),
        pa.field("motion_longest_valid_s", pa.float64()),
        pa.field("motion_joint_valid_fraction", pa.list_(pa.float32())),  # (24,) SMPL joint order
    ),
)
