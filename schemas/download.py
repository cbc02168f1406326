"""Record schema of the `download` stage: one record per downloaded video, keyed by `video_id`.

The id is the content hash of the downloaded file, the same id `ingest` computes for it, so the ingest record
of a downloaded video joins back to its download (and to the keyword that found it). Rejections before a file
exists are keyed by a hash of the URL (`u…`).
"""

import pyarrow as pa

from humove.schemas.records import RecordSchema

SCHEMA = RecordSchema(
    stage="download",
    version=1,
    key="video_id",
    fields=(
        pa.field("keyword_id", pa.string()),              # the keyword that found it (joins to keywords); None
        pa.field("download_query", pa.string()),          # the search query or the listed URL
        pa.field("download_webpage", pa.string()),        # the video's page URL (what a person would open)
        pa.field("download_extractor", pa.string()),      # yt-dlp extractor key, e.g. "Youtube", "Generic"
        pa.field("download_extractor_id", pa.string()),   # the extractor's video id (dedup key)
        pa.field("download_title", pa.string()),
        pa.field("download_uploader", pa.string()),
        pa.field("download_duration_s", pa.float64()),    # as the site reports it (probe measures later)
        pa.field("download_licence", pa.string()),        # as the site reports it; None when not stated
        pa.field("download_keyword", pa.string()),        # handed to ingest: keyword, category, subcategory
        pa.field("download_category", pa.string()),
        pa.field("download_subcategory", pa.string()),
        pa.field("download_format", pa.string()),         # yt-dlp format id and resolution
        pa.field("download_width", pa.int32()),
        pa.field("download_height", pa.int32()),
        pa.field("download_bytes", pa.int64()),
        pa.field("download_attempts", pa.int32()),        # tries within the stage (backoff, Retry-After)
        pa.field("download_path", pa.string()),           # artifact URL of the file in the run dir's storage
    ),
)
