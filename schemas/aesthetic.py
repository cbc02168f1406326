"""Record schema of the `aesthetic` stage: one record per clip, the scores of a few of its frames."""

import pyarrow as pa

from humove.schemas.records import RecordSchema

SCHEMA = RecordSchema(
    stage="aesthetic",
    version=2,
    key="clip_id",
    fields=(
        pa.field("aesthetic_scores", pa.list_(pa.float64())),  # raw score per scored frame, on aesthetic_scale
        pa.field("aesthetic_frames", pa.list_(pa.int64())),    # the scored frames (of the clip that was read)
        pa.field("aesthetic_mean", pa.float64()),              # mean of aesthetic_scores: what min_score tests
        pa.field("aesthetic_scale", pa.string()),              # "laion-aesthetic-v2 (1–10)", "technical-quality (0–10)"
        pa.field("aesthetic_model", pa.string()),              # encoder id + head file, or the formula's name
        pa.field("aesthetic_model_sha256", pa.string()),       # weights (or formula constants) hash
        # technical-quality only (null for the model backends): mean of each term over the frames, 0–1, 1 = good
        pa.field("aesthetic_sharpness", pa.float64()),
        pa.field("aesthetic_exposure", pa.float64()),
        pa.field("aesthetic_contrast", pa.float64()),
        pa.field("aesthetic_noise", pa.float64()),
        # Zero-shot content type from the same embeddings (model backends with content_prompts; null otherwise):
        # per-label probability, mean over the scored frames, labels in the config's order.
        pa.field("synthetic_score", pa.float64()),              # highest probability of a non-photo label: 0–1
        pa.field("content_type", pa.string()),                  # the most probable label ("photo", "cartoon", …)
        pa.field("content_type_labels", pa.list_(pa.string())),
        pa.field("content_type_scores", pa.list_(pa.float64())),
    ),
)
