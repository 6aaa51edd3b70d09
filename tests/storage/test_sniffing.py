"""keel.storage.sniffing: the media type from the bytes, the declared type only a tie-breaker.

The samples are real files where they are cheap to make here (PNG by zlib, Office documents
and ODF by zipfile, gzip by gzip) and the formats' own headers otherwise.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import struct
import zipfile
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.storage.sniffing import (
    DOCX,
    EMPTY,
    OCTET_STREAM,
    PPTX,
    SNIFF_BYTES,
    XLSX,
    allowed,
    is_active_content,
    sniff,
)
from tests.support.clamd import EICAR


def png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def zip_of(*names: str, mimetype: str | None = None, part_bytes: int = 40) -> bytes:
    """A zip with these entries in order (ODF/EPUB: a stored ``mimetype`` entry first)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        if mimetype is not None:
            archive.writestr(
                zipfile.ZipInfo("mimetype"), mimetype, compress_type=zipfile.ZIP_STORED
            )
        for name in names:
            archive.writestr(name, os.urandom(part_bytes))  # incompressible: parts keep their size
    return buffer.getvalue()


OOXML_HEAD = ("[Content_Types].xml", "_rels/.rels", "docProps/core.xml")

JPEG = (
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    + b"\xff\xdb"
    + bytes(60)
)
GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + bytes(20) + b";"
WEBP = b"RIFF\x24\x00\x00\x00WEBPVP8 \x18\x00\x00\x00" + bytes(24)
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"
MP4 = b"\x00\x00\x00\x20ftypisom\x00\x00\x02\x00isomiso2avc1mp41" + b"\x00\x00\x00\x08free"
SVG = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<!-- Generator: a drawing program -->\n"
    b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" '
    b'"http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
    b'<svg xmlns="http://www.w3.org/2000/svg" width="1" height="1"><script>alert(1)</script></svg>'
)


class TestBinaryFormats:
    @pytest.mark.parametrize(
        ("body", "media_type"),
        [
            (png(), "image/png"),
            (JPEG, "image/jpeg"),
            (GIF, "image/gif"),
            (WEBP, "image/webp"),
            (PDF, "application/pdf"),
            (gzip.compress(b"hello" * 100, mtime=0), "application/gzip"),
            (zip_of("notes.txt", "photo.jpg"), "application/zip"),
            (MP4, "video/mp4"),
            (b"\x00\x00\x00\x14ftypqt  \x00\x00\x00\x00qt  ", "video/quicktime"),
            (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "image/avif"),
            (b"\x7fELF\x02\x01\x01" + bytes(57), "application/x-executable"),
            (
                b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + bytes(54),
                "application/vnd.microsoft.portable-executable",
            ),
            # The long tail, by puremagic.
            (b"7z\xbc\xaf\x27\x1c\x00\x04" + bytes(24), "application/x-7z-compressed"),
            (b"\xfd7zXZ\x00\x00\x04\xe6\xd6\xb4\x46" + bytes(20), "application/x-xz"),
            (b"II*\x00\x08\x00\x00\x00" + bytes(24), "image/tiff"),
            (b"fLaC\x00\x00\x00\x22" + bytes(34), "audio/flac"),
        ],
    )
    def test_by_magic_bytes(self, body: bytes, media_type: str) -> None:
        assert sniff(body) == media_type

    def test_a_png_renamed_pdf_and_declared_pdf_is_a_png_and_not_a_pdf(self) -> None:
        media_type = sniff(png(), "application/pdf")
        assert media_type == "image/png"
        assert allowed(media_type, ["application/pdf"]) is False

    def test_the_declared_type_never_overrides_a_signature(self) -> None:
        assert sniff(GIF, "image/png") == "image/gif"
        assert sniff(PDF, "text/plain") == "application/pdf"

    def test_random_bytes_are_octet_stream(self) -> None:
        # Seeded: the odd short signature puremagic knows must not match random bytes.
        import random

        generator = random.Random(21)
        for _ in range(50):
            body = generator.randbytes(SNIFF_BYTES)
            if body.startswith((b"MZ", b"\xff\xd8\xff", b"\x1f\x8b\x08")):
                continue
            assert sniff(body, "image/png") == OCTET_STREAM

    def test_non_utf8_text_is_octet_stream(self) -> None:
        assert sniff("café au lait".encode("latin-1")) == OCTET_STREAM
        assert sniff("hello".encode("utf-16")) == OCTET_STREAM  # NULs

    def test_only_the_head_is_looked_at(self) -> None:
        assert sniff(b"a" * SNIFF_BYTES + b"\x00\xff\xfe") == "text/plain"


class TestZipBasedDocuments:
    def test_office_documents_by_their_part_names(self) -> None:
        assert sniff(zip_of(*OOXML_HEAD, "word/document.xml")) == DOCX
        assert sniff(zip_of(*OOXML_HEAD, "xl/workbook.xml")) == XLSX
        assert sniff(zip_of(*OOXML_HEAD, "ppt/presentation.xml")) == PPTX

    def test_a_document_declared_as_another_office_type_is_what_its_parts_say(self) -> None:
        assert sniff(zip_of(*OOXML_HEAD, "xl/workbook.xml"), DOCX) == XLSX

    def test_office_parts_beyond_the_head_let_the_declared_office_type_decide(self) -> None:
        body = zip_of(
            *OOXML_HEAD, "docProps/thumbnail.jpeg", "word/document.xml", part_bytes=SNIFF_BYTES
        )
        head = body[:SNIFF_BYTES]
        assert b"word/document.xml" not in head
        assert sniff(head, DOCX) == DOCX
        assert sniff(head, XLSX) == XLSX
        assert sniff(head) == "application/zip"
        assert sniff(head, "application/pdf") == "application/zip"

    def test_a_plain_zip_declared_as_a_document_stays_a_zip(self) -> None:
        assert sniff(zip_of("notes.txt"), DOCX) == "application/zip"

    def test_odf_and_epub_by_their_mimetype_entry(self) -> None:
        assert (
            sniff(zip_of("content.xml", mimetype="application/vnd.oasis.opendocument.text"))
            == "application/vnd.oasis.opendocument.text"
        )
        assert sniff(zip_of("META-INF/container.xml", mimetype="application/epub+zip")) == (
            "application/epub+zip"
        )

    def test_a_mimetype_entry_naming_anything_else_is_ignored(self) -> None:
        assert sniff(zip_of("index.html", mimetype="text/html")) == "application/zip"

    def test_an_empty_zip(self) -> None:
        assert sniff(zip_of()) == "application/zip"


class TestText:
    def test_eicar_is_plain_text(self) -> None:
        assert sniff(EICAR) == "text/plain"

    @pytest.mark.parametrize(
        "body",
        [
            b"hello, world\n",
            "ünïcödé ✓ 🎉\n".encode(),
            b"\xef\xbb\xbfwith a byte order mark",
            b"tabs\tand\r\nnewlines\x0c and a form feed and an escape \x1b[0m",
            b"<3 is not a tag",
            b"{not json",
        ],
    )
    def test_utf8_without_binary_bytes_is_plain_text(self, body: bytes) -> None:
        assert sniff(body) == "text/plain"

    @pytest.mark.parametrize("body", [b"text with a NUL\x00", b"a bell \x07", b"\x1a"])
    def test_binary_control_bytes_are_not_text(self, body: bytes) -> None:
        assert sniff(body) == OCTET_STREAM

    def test_a_multibyte_character_cut_at_the_head_end_is_still_text(self) -> None:
        body = ("é" * SNIFF_BYTES).encode()
        assert sniff(body[:SNIFF_BYTES]) == "text/plain"  # 8192 bytes: exactly 4096 "é"
        assert sniff(body[: SNIFF_BYTES + 1][1:]) == OCTET_STREAM  # starts mid-character

    def test_a_multibyte_character_cut_at_the_end_of_a_whole_body_is_not_text(self) -> None:
        assert sniff("é".encode()[:1]) == OCTET_STREAM

    @pytest.mark.parametrize(
        "body",
        [b'{"a": [1, 2, {"b": null}]}', b"  [1, 2, 3]\n", b"[]", b'{"k": "v"}'],
    )
    def test_json(self, body: bytes) -> None:
        assert sniff(body) == "application/json"

    def test_a_large_json_document_by_its_beginning(self) -> None:
        body = b'{"items": [' + b'{"id": 1}, ' * 2000 + b'{"id": 2}]}'
        assert len(body) > SNIFF_BYTES
        assert sniff(body[:SNIFF_BYTES]) == "application/json"

    def test_json_nested_too_deep_to_parse_is_text(self) -> None:
        assert sniff(b"[" * 3000 + b"]" * 3000) == "text/plain"

    def test_declared_types_refine_plain_text_only_among_harmless_ones(self) -> None:
        assert sniff(b"a,b\n1,2\n", "text/csv; charset=utf-8") == "text/csv"
        assert sniff(b"# Title\n", "text/markdown") == "text/markdown"
        assert sniff(b"alert(1)", "text/javascript") == "text/plain"
        assert sniff(b"hello", "text/html") == "text/plain"
        assert sniff(b"hello", "image/svg+xml") == "text/plain"
        assert sniff(b"hello", "image/png") == "text/plain"

    @pytest.mark.parametrize(
        ("body", "media_type"),
        [
            (b"%!PS-Adobe-3.0\n%%Title: page\n", "application/postscript"),
            (b"{\\rtf1\\ansi hello}", "application/rtf"),
            (b"BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n", "text/calendar"),
            (b"WEBVTT\n\n00:00.000 --> 00:01.000\nhi\n", "text/vtt"),
        ],
    )
    def test_text_formats_with_a_signature(self, body: bytes, media_type: str) -> None:
        assert sniff(body) == media_type

    def test_loose_text_guesses_are_left_out(self) -> None:
        # puremagic calls these Python and MATLAB; the bytes do not say so.
        assert sniff(b"import os\n") == "text/plain"
        assert sniff(b"function f(){}\n") == "text/plain"


class TestMarkup:
    @pytest.mark.parametrize(
        "body",
        [
            b"<!DOCTYPE html><html><body>hi</body></html>",
            b"\n  <!doctype HTML>\n<title>x</title>",
            b"<html>",
            b"<HEAD><TITLE>x</TITLE>",
            b"<script>alert(1)</script>",
            b"<iframe src=x>",
            b"<a href=x>link</a>",
            b"<b>bold</b>",
            b"<p>para",
            b"<!-- a comment --> then text",
            b"\xef\xbb\xbf<body onload=alert(1)>",
        ],
    )
    def test_html_by_the_whatwg_patterns(self, body: bytes) -> None:
        assert sniff(body) == "text/html"
        assert sniff(body, "text/plain") == "text/html"

    def test_svg_with_a_prolog_comment_and_doctype(self) -> None:
        assert sniff(SVG) == "image/svg+xml"
        assert sniff(SVG, "image/png") == "image/svg+xml"

    def test_svg_without_a_prolog(self) -> None:
        assert sniff(b'<svg xmlns="http://www.w3.org/2000/svg"/>') == "image/svg+xml"
        assert sniff(b"<!-- icon -->\n<svg viewBox='0 0 1 1'></svg>") == "image/svg+xml"

    def test_an_svg_whose_root_lies_beyond_the_head_by_its_doctype(self) -> None:
        body = b'<?xml version="1.0"?><!DOCTYPE svg><!--' + b"x" * SNIFF_BYTES
        assert sniff(body[:SNIFF_BYTES]) == "image/svg+xml"

    @pytest.mark.parametrize(
        ("body", "media_type"),
        [
            (b'<?xml version="1.0"?><note><to>x</to></note>', "application/xml"),
            (b'<?xml version="1.0"?>\n<rss version="2.0"><channel/></rss>', "application/rss+xml"),
            (
                b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"/>',
                "application/atom+xml",
            ),
            (
                b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml"/>',
                "application/xhtml+xml",
            ),
            (
                b'<?xml version="1.0"?><svg:svg xmlns:svg="http://www.w3.org/2000/svg"/>',
                "image/svg+xml",
            ),
        ],
    )
    def test_xml_by_its_root_element(self, body: bytes, media_type: str) -> None:
        assert sniff(body) == media_type

    def test_markup_types_are_active_content(self) -> None:
        for media_type in (
            "text/html",
            "image/svg+xml",
            "application/xml",
            "application/xhtml+xml",
        ):
            assert is_active_content(media_type)
            assert is_active_content(media_type.upper() + "; charset=utf-8")
        assert is_active_content("application/rss+xml")
        assert not is_active_content("text/plain")
        assert not is_active_content("image/png")
        assert not is_active_content("application/pdf")


class TestEmpty:
    def test_an_empty_body_is_application_x_empty(self) -> None:
        assert sniff(b"") == EMPTY == "application/x-empty"
        assert sniff(b"", "image/png") == EMPTY

    def test_an_empty_body_is_no_image_and_no_text(self) -> None:
        assert not allowed(EMPTY, ["image/*", "text/*"])
        assert allowed(EMPTY, ["application/x-empty"])
        assert allowed(EMPTY, ["*/*"])


class TestAllowed:
    def test_exact_types(self) -> None:
        assert allowed("application/pdf", ["application/pdf"])
        assert not allowed("application/pdf", ["application/zip"])
        assert not allowed("application/pdf", [])

    def test_type_wildcards(self) -> None:
        assert allowed("image/png", ["image/*"])
        assert allowed("image/webp", ["application/pdf", "image/*"])
        assert not allowed("video/mp4", ["image/*"])
        assert not allowed("application/pdf", ["image/*", "text/*"])

    def test_any_type(self) -> None:
        for media_type in ("image/png", "text/html", "image/svg+xml", OCTET_STREAM):
            assert allowed(media_type, ["*/*"])

    def test_type_wildcards_do_not_admit_active_content(self) -> None:
        assert not allowed("image/svg+xml", ["image/*"])
        assert not allowed("text/html", ["text/*"])
        assert not allowed("application/xml", ["application/*"])
        assert allowed("image/svg+xml", ["image/*", "image/svg+xml"])
        assert allowed("text/html", ["text/html"])

    def test_case_and_parameters_are_ignored(self) -> None:
        assert allowed("Image/PNG", ["image/png"])
        assert allowed("text/plain; charset=utf-8", ["TEXT/*"])
        assert allowed("application/pdf", [" application/pdf ; q=1"])

    def test_a_pattern_is_not_a_prefix(self) -> None:
        assert not allowed("image/pngx", ["image/png"])
        assert not allowed("imagex/png", ["image/*"])


PREFIXES = [
    b"",
    png()[:8],
    b"PK\x03\x04",
    b"<",
    b"<?xml ",
    b"<svg",
    b"{",
    b"[",
    b"\x00\x00\x00\x18ftyp",
    b"RIFF",
]
DECLARED = [
    None,
    "text/html",
    "image/svg+xml",
    "application/xml",
    "text/csv",
    DOCX,
    "application/json",
]


class TestAnyBytes:
    @given(
        prefix=st.sampled_from(PREFIXES),
        rest=st.binary(max_size=300) | st.text(max_size=300).map(str.encode),
        declared=st.sampled_from(DECLARED),
    )
    def test_any_bytes_get_a_media_type_and_the_declared_type_never_makes_them_active(
        self, prefix: bytes, rest: bytes, declared: str | None
    ) -> None:
        body = prefix + rest
        media_type = sniff(body, declared)
        assert re.fullmatch(r"[a-z0-9.+-]+/[a-z0-9.+-]+", media_type), media_type
        if is_active_content(media_type):
            assert media_type == sniff(body)
