"""Record schema of the `smpl` stage: one record per clip, the raw (unsmoothed) SMPL fit as an artifact."""

import pyarrow as pa

from humove.schemas.records import RecordSchema

SCHEMA = RecordSchema(
    stage="smpl",
    version=2,
    key="clip_id",
    fields=(
        pa.field("smpl_model", pa.string()),          # "camerahmr+flnet" or "offline-fitter"
        pa.field("smpl_model_sha256", pa.string()),   # of the CameraHMR checkpoint (null for the fitter)
        pa.field("smpl_body_model", pa.string()),     # "smpl-neutral", "standin-smpl", …
        pa.field("smpl_body_model_file", pa.string()),  # the SMPL file it was read from (null: the stand-in)
        pa.field("smpl_body_model_sha256", pa.string()),  # of its arrays (body_model.arrays_sha256): smooth checks it
        pa.field("smpl_motion_path", pa.string()),    # artifact: raw motion file (schemas/motion.py)
        pa.field("smpl_motion_sha256", pa.string()),
        pa.field("smpl_num_frames", pa.int64()),
        pa.field("smpl_focal_px", pa.float64()),      # median focal length (per frame in the file)
        pa.field("smpl_valid_fraction", pa.float64()),
    ),
)
