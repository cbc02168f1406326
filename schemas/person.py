"""Record schema of the `person` stage: one record per clip (main person, people count, visible span)."""

import pyarrow as pa

from humove.schemas.records import RecordSchema

SCHEMA = RecordSchema(
    stage="person",
    version=2,
    key="clip_id",
    fields=(
        pa.field("person_model", pa.string()),             # detector weight file (or builtin:…)
        pa.field("person_model_sha256", pa.string()),
        pa.field("person_tracker", pa.string()),            # e.g. "bytetrack(ultralytics-8.4.190)"
        pa.field("person_count_reliable", pa.bool_()),      # False: the detector may miss secondary people
        pa.field("person_detect_every", pa.int32()),        # detection ran on every n-th frame
        pa.field("person_num_frames", pa.int64()),          # frames of the shots clip
        pa.field("person_picture_box", pa.list_(pa.float32())),  # (4,) xyxy pixels: the picture inside any
                                                            # letterbox bars; sizes and edges below are its
        pa.field("person_num_tracks", pa.int32()),
        pa.field("person_main_track_id", pa.int32()),       # -1: nobody
        pa.field("person_coverage", pa.float64()),          # fraction of the clip frames showing the main person
        pa.field("person_seen_s", pa.float64()),            # seconds the main person is seen, whole clip
        pa.field("person_span_start_frame", pa.int64()),    # kept span in the shots clip's frames, end exclusive
        pa.field("person_span_end_frame", pa.int64()),
        pa.field("person_span_s", pa.float64()),
        pa.field("person_span_gaps", pa.int32()),           # bridged gaps inside the span
        pa.field("person_span_count", pa.int32()),          # visible spans (after bridging) in the whole clip
        pa.field("person_exit_changes", pa.list_(pa.float32())),  # image change (mean |Δ|/255) in the box where
                                                            # the span ends inside the picture (0-2 values)
        # Measures over the kept span (sampled frames):
        pa.field("person_people_mean", pa.float64()),       # people per frame
        pa.field("person_people_max", pa.int32()),
        pa.field("person_box_height", pa.float64()),        # median main box height / picture height
        pa.field("person_size", pa.float64()),              # median longer box side / picture height
        pa.field("person_box_area", pa.float64()),          # median main box area / picture area
        pa.field("person_box_aspect", pa.float64()),        # median main box width / height (standing body ~0.4)
        pa.field("person_second_ratio", pa.float64()),      # median second-largest / main box height (0: none)
        pa.field("person_second_present", pa.float64()),   # fraction of frames with a second person
        pa.field("person_near_fraction", pa.float64()),    # fraction of frames with another person beside the main
                                                           # one (any size, feet on about the same ground line)
        pa.field("person_touch_top", pa.float64()),         # fraction of frames the main box touches that edge
        pa.field("person_touch_bottom", pa.float64()),
        pa.field("person_touch_side", pa.float64()),
        pa.field("person_score_mean", pa.float64()),        # mean detection score of the main box
        pa.field("person_box_stability", pa.float64()),     # median IoU of a sampled box with its neighbours' mean
        pa.field("person_boxes_path", pa.string()),         # artifact: per-frame boxes (see stages/person.py)
        pa.field("person_clip_path", pa.string()),          # trimmed clip (null when the whole clip is kept)
        pa.field("person_clip_sha256", pa.string()),
        pa.field("person_clip_bytes", pa.int64()),
        pa.field("person_clip_num_frames", pa.int64()),
    ),
)
