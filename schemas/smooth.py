"""Record schema of the `smooth` stage: the final motion file of a clip and its motion-quality measures.

Measures are raw (decisions apply the thresholds, so they can change without recomputing):
- `motion_jitter_mps2`: mean joint acceleration (m/s²) over valid frames;
- `motion_foot_sliding_m`: mean horizontal foot displacement per frame while in contact (m);
- `motion_reprojection_rel`: mean distance of projected SMPL joints to the pose keypoints / person height;
- `motion_agreement_pck`: share of confident keypoints within `pck_alpha` person heights of their SMPL joint;
- `motion_limb_length_error`: median |log| ratio of projected SMPL limb lengths to keypoint limb lengths;
- `motion_valid_fraction`, `motion_longest_valid_s`: frames where the person is really seen and the fit agrees.
"""

import pyarrow as pa

from humove.schemas.records import RecordSchema

SCHEMA = RecordSchema(
    stage="smooth",
    version=1,
    key="clip_id",
    fields=(
        pa.field("motion_path", pa.string()),         # artifact: final motion file, frames = the clip's frames
        pa.field("motion_sha256", pa.string()),
        pa.field("motion_body_model", pa.string()),
        pa.field("motion_num_frames", pa.int64()),
        pa.field("motion_settings", pa.string()),     # JSON: smoothing and validity settings used
        pa.field("motion_jitter_mps2", pa.float64()),
        pa.field("motion_foot_sliding_m", pa.float64()),
        pa.field("motion_reprojection_rel", pa.float64()),
        pa.field("motion_agreement_pck", pa.float64()),
        pa.field("motion_limb_length_error", pa.float64()),
        pa.field("motion_valid_fraction", pa.float64()),
        pa.field("motion_longest_valid_s", pa.float64()),
    ),
)
