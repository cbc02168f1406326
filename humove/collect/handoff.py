"""What `ingest` reads from a `download` record when it runs after the download stage."""

from __future__ import annotations

# ingest column ← download column
_FROM_DOWNLOAD = {
    "source_path": "download_path",
    "keyword": "download_keyword",
    "category": "download_category",
    "subcategory": "download_subcategory",
    "licence": "download_licence",
    "source": "download_extractor",     # the site (yt-dlp extractor), e.g. "Youtube"
    "source_uri": "download_webpage",   # the page a person would open: what the dataset keeps
}

# What ingest reads of a download record (`stage.Reads`).
DOWNLOAD_FIELDS = frozenset({"download_path", *_FROM_DOWNLOAD.values()})


def is_download_row(item: dict) -> bool:
    return bool(item.get("download_path"))


def ingest_item_from_download(item: dict) -> dict:
    """A joined download row as an ingest input: the downloaded file to probe, and the keyword, category,
    subcategory, licence, site and page URL as ingest's annotations. Other rows are returned unchanged."""
    if not is_download_row(item):
        return item
    values = {ingest: item.get(download) for ingest, download in _FROM_DOWNLOAD.items()}
    values["source_uri"] = publishable_uri(values["source_uri"])
    return {**item, **values}


def publishable_uri(url: str | None) -> str | None:
    """What the dataset may carry of a page URL: a web URL as it is, a local `file://` URL as its file name only
    (a path relative to its folder), so no path of the building machine reaches the shards."""
    if url and url.startswith("file://"):
        return url.rstrip("/").rsplit("/", 1)[-1]
    return url
