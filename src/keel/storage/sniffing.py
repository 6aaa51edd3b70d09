"""An object's media type from its first bytes, and bucket type patterns.

The type a client declares is a claim; the bytes are the evidence. :func:`sniff` decides from
the first :data:`SNIFF_BYTES` of the body:

1. An empty body is ``application/x-empty`` (``file(1)``'s name for it): it is no picture,
   no document and no text, so a bucket that accepts only ``image/*`` refuses it too.
2. Explicit signatures for the formats that matter most, where puremagic guesses (it calls
   every zip a .docx): PNG, JPEG, GIF, WebP, PDF, gzip, zip and the formats inside a zip
   (OOXML documents by their part names, ODF and EPUB by their ``mimetype`` entry), the ISO
   media family (MP4, QuickTime, 3GP, AVIF, HEIC by the ``ftyp`` brand), ELF and PE
   executables, WebAssembly.
3. Text, valid UTF-8 without binary control bytes (the WHATWG MIME sniffing standard's
   "binary data bytes", NUL among them): HTML by the standard's tag patterns, SVG and other
   XML by the root element, JSON, a few formats with a text signature (PostScript, RTF,
   iCalendar, vCard, WebVTT), otherwise ``text/plain``.
4. Any other binary: puremagic's best match, when it is a reasonably long signature.
5. Otherwise ``application/octet-stream``.

The declared type only breaks ties among types the bytes themselves allow (``text/csv`` for
plain text, ``application/json`` for a large document that begins like JSON, which OOXML
document an Office zip is when its part names are beyond the first bytes). It never decides
alone, and never chooses active content: HTML, SVG and XML are recognised from the bytes or
not at all.

Active content (:func:`is_active_content`: HTML, XHTML, SVG, XML, JavaScript) runs script
when a browser renders it inline; the service serves it as an attachment, and a bucket's
``type/*`` wildcard does not admit it (``image/*`` is pictures; SVG must be listed by name).
"""

from __future__ import annotations

import codecs
import json
import re
import struct
from collections.abc import Callable, Sequence
from typing import Final

import puremagic

#: Bytes of the body's start that :func:`sniff` looks at.
SNIFF_BYTES: Final = 8192

EMPTY: Final = "application/x-empty"
OCTET_STREAM: Final = "application/octet-stream"
TEXT_PLAIN: Final = "text/plain"
JSON: Final = "application/json"
HTML: Final = "text/html"
SVG: Final = "image/svg+xml"
XML: Final = "application/xml"
ZIP: Final = "application/zip"

DOCX: Final = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
XLSX: Final = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
PPTX: Final = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
_OOXML_BY_FOLDER: Final = {"word/": DOCX, "xl/": XLSX, "ppt/": PPTX}
_OOXML: Final = frozenset(_OOXML_BY_FOLDER.values())
#: What a zip's first entry ``mimetype`` may name (ODF documents, EPUB).
_ZIP_MIMETYPE_ENTRY: Final = re.compile(
    r"application/(vnd\.oasis\.opendocument\.[a-z.-]{1,60}|epub\+zip)"
)

#: Types that run script when a browser renders them inline.
ACTIVE_CONTENT: Final = frozenset(
    {
        HTML,
        "application/xhtml+xml",
        SVG,
        XML,
        "text/xml",
        "text/javascript",
        "application/javascript",
        "application/x-shockwave-flash",
    }
)

#: Plain text may be declared as one of these (the bytes cannot tell them apart).
_TEXT_REFINEMENTS: Final = frozenset(
    {
        "text/csv",
        "text/tab-separated-values",
        "text/markdown",
        "text/x-markdown",
        "application/x-ndjson",
        "application/yaml",
        "application/toml",
    }
)
#: Text signatures puremagic knows well (its other text guesses, such as any line starting
#: with ``import`` being Python, are too loose to decide a type).
_PUREMAGIC_TEXT: Final = frozenset(
    {"application/postscript", "application/rtf", "text/calendar", "text/vcard", "text/vtt"}
)
#: puremagic's confidence grows with the signature's length; below this, random bytes match.
_PUREMAGIC_MIN_CONFIDENCE: Final = 0.3
_ALIASES: Final = {
    "application/x-gzip": "application/gzip",
    "application/x-pdf": "application/pdf",
    "image/x-ms-bmp": "image/bmp",
    "audio/x-wav": "audio/wav",
    "text/rtf": "application/rtf",
    "text/x-vcard": "text/vcard",
}

#: (offset, bytes, media type): fixed signatures checked before anything else.
_SIGNATURES: Final[tuple[tuple[int, bytes, str], ...]] = (
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"\x1f\x8b\x08", "application/gzip"),
    (0, b"\x7fELF", "application/x-executable"),
    (0, b"\0asm", "application/wasm"),
)
_RIFF_FORMS: Final = {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}
_FTYP_BRANDS: Final = {
    b"qt  ": "video/quicktime",
    b"M4A ": "audio/mp4",
    b"M4B ": "audio/mp4",
    b"avif": "image/avif",
    b"avis": "image/avif",
    b"heic": "image/heic",
    b"heix": "image/heic",
    b"mif1": "image/heif",
    b"msf1": "image/heif",
    b"3gp4": "video/3gpp",
    b"3gp5": "video/3gpp",
    b"3gp6": "video/3gpp",
    b"3g2a": "video/3gpp2",
}

#: The WHATWG MIME sniffing standard's binary data bytes (never in text).
_BINARY_BYTES: Final = bytes([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])
#: HTML by its first tag (the WHATWG standard's patterns), matched case-insensitively.
_HTML_TAGS: Final = frozenset(
    {"html", "head", "script", "iframe", "h1", "div", "font", "table", "a", "style", "title"}
    | {"b", "body", "br", "p"}
)
_TAG_NAME: Final = re.compile(r"<([A-Za-z][A-Za-z0-9._:-]*)(?=[\s/>]|$)")
_DOCTYPE: Final = re.compile(r"<!doctype\s+([A-Za-z][A-Za-z0-9._:-]*)", re.IGNORECASE)
_PROLOG_ITEM: Final = re.compile(
    r"\s*(<\?.*?\?>|<!--.*?-->|<!doctype[^>\[]*(\[.*?\])?\s*>)", re.S | re.I
)
_XML_ROOTS: Final = {
    "svg": SVG,
    "html": "application/xhtml+xml",
    "rss": "application/rss+xml",
    "feed": "application/atom+xml",
}


def sniff(head: bytes, declared: str | None = None) -> str:
    """The media type of a body that starts with ``head`` (its first :data:`SNIFF_BYTES`).

    ``head`` shorter than :data:`SNIFF_BYTES` is taken to be the whole body. ``declared`` (the
    client's ``Content-Type``, parameters ignored) only chooses among types the bytes allow.
    """
    is_whole = len(head) < SNIFF_BYTES
    head = head[:SNIFF_BYTES]
    wanted = _essence(declared) if declared else None
    if not head:
        return EMPTY
    for offset, signature, media_type in _SIGNATURES:
        if head.startswith(signature, offset):
            return media_type
    if head.startswith(b"RIFF") and head[8:12] in _RIFF_FORMS:
        return _RIFF_FORMS[head[8:12]]
    if head[4:8] == b"ftyp" and len(head) >= 12:
        return _FTYP_BRANDS.get(head[8:12], "video/mp4")
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _sniff_zip(head, wanted)
    text = _as_text(head, is_whole=is_whole)
    if text is not None:
        return _sniff_text(text, head, is_whole=is_whole, wanted=wanted)
    if head.startswith(b"MZ"):  # after the text check: "MZ" also begins many a text
        return "application/vnd.microsoft.portable-executable"
    return _puremagic(head, lambda media_type: not media_type.startswith("text/")) or OCTET_STREAM


def allowed(media_type: str, patterns: Sequence[str]) -> bool:
    """Whether ``media_type`` matches one of a bucket's ``patterns``.

    A pattern is a type (``application/pdf``), a type's wildcard (``image/*``) or ``*/*`` (any
    type at all). A type's wildcard never admits active content: ``image/*`` does not admit
    ``image/svg+xml``, ``text/*`` not ``text/html``; list them by name to accept them.
    Comparison ignores case and parameters.
    """
    media_type = _essence(media_type)
    main_type = media_type.partition("/")[0]
    for pattern in patterns:
        pattern = _essence(pattern)
        if pattern in ("*/*", media_type):
            return True
        if pattern == f"{main_type}/*" and not is_active_content(media_type):
            return True
    return False


def is_active_content(media_type: str) -> bool:
    """Whether a browser runs script in ``media_type`` rendered inline (HTML, SVG, XML, JS)."""
    essence = _essence(media_type)
    return essence in ACTIVE_CONTENT or essence.endswith("+xml")


def _essence(media_type: str) -> str:
    return media_type.partition(";")[0].strip().lower()


def _sniff_zip(head: bytes, wanted: str | None) -> str:
    names: list[str] = []
    for name, data in _zip_entries(head):
        if not names and name == "mimetype" and data is not None:
            declared_inside = data.decode("ascii", "replace").strip()
            if _ZIP_MIMETYPE_ENTRY.fullmatch(declared_inside):
                return declared_inside
        names.append(name)
        for folder, media_type in _OOXML_BY_FOLDER.items():
            if name.startswith(folder):
                return media_type
    # An Office document whose parts lie beyond the head: which one, the client may say.
    if "[Content_Types].xml" in names and wanted in _OOXML:
        return wanted
    return ZIP


def _zip_entries(head: bytes) -> list[tuple[str, bytes | None]]:
    """(name, stored data or None) of the zip's local file headers wholly inside ``head``."""
    entries: list[tuple[str, bytes | None]] = []
    offset = 0
    while head.startswith(b"PK\x03\x04", offset) and offset + 30 <= len(head) and len(entries) < 64:
        flags, method = struct.unpack_from("<HH", head, offset + 6)
        compressed_size, _, name_length, extra_length = struct.unpack_from(
            "<IIHH", head, offset + 18
        )
        name_start = offset + 30
        data_start = name_start + name_length + extra_length
        name = head[name_start : name_start + name_length].decode("utf-8", "replace")
        data_end = data_start + compressed_size
        stored = method == 0 and data_end <= len(head)
        entries.append((name, head[data_start:data_end] if stored else None))
        if flags & 0x08:
            break  # the sizes follow the data (a data descriptor): the next header is unknown
        offset = data_end
    return entries


def _as_text(head: bytes, *, is_whole: bool) -> str | None:
    """``head`` decoded when it is UTF-8 text (a sequence cut at the head's end allowed)."""
    if len(head.translate(None, _BINARY_BYTES)) != len(head):
        return None
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    try:
        return decoder.decode(head, final=is_whole)
    except UnicodeDecodeError:
        return None


def _sniff_text(text: str, head: bytes, *, is_whole: bool, wanted: str | None) -> str:
    markup = _sniff_markup(text)
    if markup is not None:
        return markup
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        if is_whole:
            try:
                json.loads(stripped)
            except (ValueError, RecursionError):  # RecursionError: "[[[[..." nested too deep
                pass
            else:
                return JSON
        elif wanted == JSON or re.match(r"[{\[]\s*[\"{\[\]}0-9-]", stripped):
            return JSON
    known = _puremagic(head, lambda media_type: media_type in _PUREMAGIC_TEXT)
    if known is not None:
        return known
    if wanted in _TEXT_REFINEMENTS:
        return wanted
    return TEXT_PLAIN


def _sniff_markup(text: str) -> str | None:
    """HTML, SVG or XML by the root element after any prolog, or None for other text."""
    stripped = text.lstrip()
    if not stripped.startswith("<"):
        return None
    is_xml = stripped.startswith("<?xml")
    doctype: str | None = None
    has_comment = False
    position = 0
    while (item := _PROLOG_ITEM.match(stripped, position)) is not None:
        token = item.group(1)
        if token.startswith("<!--"):
            has_comment = True
        elif (declaration := _DOCTYPE.match(token)) is not None:
            doctype = declaration.group(1).lower()
        position = item.end()
    rest = stripped[position:].lstrip()
    root = _TAG_NAME.match(rest)
    name = root.group(1).lower().rpartition(":")[2] if root is not None else doctype
    if doctype == "html" or (name in _HTML_TAGS and not is_xml):
        return HTML
    if name in _XML_ROOTS and (is_xml or name == "svg"):
        return _XML_ROOTS[name]
    if is_xml:
        return XML
    if has_comment or rest.startswith("<!--"):
        return HTML  # the standard sniffs a leading comment as HTML
    return None


def _puremagic(head: bytes, acceptable: Callable[[str], bool]) -> str | None:
    try:
        matches = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        return None
    for match in matches:
        media_type = str(match.mime_type)
        media_type = _ALIASES.get(media_type, media_type)
        if match.confidence >= _PUREMAGIC_MIN_CONFIDENCE and media_type and acceptable(media_type):
            return media_type
    return None
