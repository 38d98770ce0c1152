"""trafilatura internals for the extractor and the page metadata.

Our extractor runs trafilatura's steps one by one (to skip the ones the pipeline does not need,
and to parse each page once): the metadata readers, the byline search's node pruning and its
author normaliser, the parser's repairs of faulty HTML, and the HTML renderer of a result. None
of them is public; all are imported here, and ``tests/test_internals.py`` checks each one.
"""

from __future__ import annotations

import warnings

# trafilatura's downloader imports urllib3's SOCKS support, which warns when PySocks is absent;
# we never download through trafilatura, so that warning is only noise on a user's stderr.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="SOCKS support in urllib3")
    import trafilatura
    from trafilatura import metadata
    from trafilatura.htmlprocessing import convert_to_html, prune_unwanted_nodes
    from trafilatura.json_metadata import normalize_authors
    from trafilatura.settings import DEFAULT_CONFIG, Document, set_date_params
    from trafilatura.utils import decode_file, is_dubious_html, is_image_file, repair_faulty_html
    from trafilatura.xml import xmltotxt
    from trafilatura.xpaths import AUTHOR_DISCARD_XPATHS

__all__ = [
    "AUTHOR_DISCARD_XPATHS",
    "DEFAULT_CONFIG",
    "METADATA_STEPS",
    "Document",
    "convert_to_html",
    "decode_file",
    "is_dubious_html",
    "is_image_file",
    "metadata",
    "normalize_authors",
    "prune_unwanted_nodes",
    "repair_faulty_html",
    "set_date_params",
    "trafilatura",
    "xmltotxt",
]

# The functions of trafilatura.metadata that page_meta.py calls, checked by the test.
METADATA_STEPS = (
    "examine_meta",
    "extract_meta_json",
    "extract_title",
    "extract_url",
    "extract_sitename",
    "extract_metainfo",
    "META_URL",
)
