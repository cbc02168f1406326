"""Record schema of the `keywords` stage: one record per search keyword, keyed by `keyword_id`.

A keyword comes from one major category of the taxonomy (one input per category) and names one fine-grained
category of it; `backend`/`keyword_model`/`keyword_prompt_hash` say how it was produced.
"""

import pyarrow as pa

from humove.schemas.records import RecordSchema

SCHEMA = RecordSchema(
    stage="keywords",
    version=1,
    key="keyword_id",
    fields=(
        pa.field("keyword_text", pa.string()),            # normalised search query
        pa.field("keyword_category", pa.string()),        # major category (taxonomy)
        pa.field("keyword_fine_category", pa.string()),   # fine-grained category (taxonomy); None if unknown
        pa.field("keyword_rank", pa.int32()),             # position in the model's answer for the category
        pa.field("keyword_model", pa.string()),           # model id / path, or "template"
        pa.field("keyword_prompt_hash", pa.string()),     # sha256[:16] of the exact messages sent
        pa.field("keyword_seed", pa.int64()),
        pa.field("keyword_temperature", pa.float64()),
    ),
)
