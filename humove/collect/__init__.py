"""Collecting source videos: yt-dlp search and download with retries, rate limits and failure classification
(`humove.collect.ytdlp`), and the hand-off of downloaded files to `ingest` (`humove.collect.handoff`)."""
