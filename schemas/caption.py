"""Record schema of the `caption` stage: one record per clip, keyed by `clip_id`.

`caption` is the full text (what the shards stage writes as the sample caption); its three parts follow the
paper: the subject's appearance and attire, the background, the action. A template caption says so in
`backend` ("template") and in `caption_is_template`.
"""

import pyarrow as pa

from humove.schemas.records import RecordSchema

SCHEMA = RecordSchema(
    stage="caption",
    version=2,                                            # 2: caption_fps
    key="clip_id",
    fields=(
        pa.field("caption", pa.string()),
        pa.field("caption_appearance", pa.string()),
        pa.field("caption_background", pa.string()),
        pa.field("caption_action", pa.string()),
        pa.field("caption_is_template", pa.bool_()),
        pa.field("caption_model", pa.string()),
        pa.field("caption_prompt_hash", pa.string()),
        pa.field("caption_prompt_tokens", pa.int64()),
        pa.field("caption_output_tokens", pa.int64()),
        pa.field("caption_frames", pa.int32()),           # frames the model saw
        pa.field("caption_fps", pa.float64()),            # the rate they were sampled at (and told to the model)
        pa.field("caption_tries", pa.int32()),            # 2 when the first answer was malformed
        pa.field("caption_words", pa.int32()),
        pa.field("caption_raw", pa.string()),             # the model's last raw answer (kept for audits)
    ),
)
