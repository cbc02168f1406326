"""PySceneDetect's content-based cut logic fed precomputed scores (the shots stage's `ContentScorer` components)
instead of frames. Its own module so that the shots stage imports PySceneDetect, and the PyAV and OpenCV it
loads, only where videos are cut: stage modules are also imported to read their configs (`humove report`)."""

from __future__ import annotations

from collections.abc import Iterable

from scenedetect import AdaptiveDetector, ContentDetector, FrameTimecode


class _ScoreGiven:
    """For PySceneDetect's content-based detectors: `process_frame(timecode, components)` takes a frame's
    `ContentScorer` components in place of the frame. The detector's score (its weighted mean, same expression)
    and its cut logic (threshold, `min_scene_len` flash filter, adaptive window) are PySceneDetect's own."""

    def _calculate_frame_score(self, timecode: FrameTimecode, components) -> float:
        if self._weights.delta_edges != 0.0 or self.stats_manager is not None:
            raise ValueError("ContentScorer has no edge component and records no stats")
        if components is None:
            return 0.0
        values = ContentDetector.Components(*components, delta_edges=0.0)
        return sum(c * w for c, w in zip(values, self._weights, strict=True)) / sum(abs(w) for w in self._weights)

    def cuts(self, components: Iterable, rate: float) -> list[int]:
        """The cut frame numbers for the frames' components in order (`None` for a frame without a predecessor);
        `rate` only converts frame numbers for the detector's bookkeeping."""
        cuts: list[int] = []
        count = 0
        for index, frame_components in enumerate(components):
            cuts += [c.frame_num for c in self.process_frame(FrameTimecode(index, rate), frame_components)]
            count += 1
        if count:
            cuts += [c.frame_num for c in self.post_process(FrameTimecode(count - 1, rate))]
        return cuts


class ScoredContentDetector(_ScoreGiven, ContentDetector):
    pass


class ScoredAdaptiveDetector(_ScoreGiven, AdaptiveDetector):
    pass
