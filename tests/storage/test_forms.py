"""Streaming multipart/form-data parsing of POST forms (keel.storage.forms): pure, no server."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import random
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from keel.core.errors import BadRequest
from keel.storage.forms import (
    MAX_FIELD_BYTES,
    MAX_FIELDS,
    FormInvalid,
    PostForm,
    form_boundary,
    read_post_form,
)

BOUNDARY = b"----KeelFormBoundary7MA4YWxkTrZu0gW"
DELIMITER = b"\r\n--" + BOUNDARY


def part(name: str, value: bytes, *, filename: str | None = None, content_type: str = "") -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    head = f"Content-Disposition: {disposition}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    return b"--" + BOUNDARY + b"\r\n" + head.encode() + b"\r\n" + value + b"\r\n"


def form_body(
    fields: Iterable[tuple[str, str]] = (("key", "uploads/${filename}"), ("policy", "eyJ9")),
    file: bytes = b"\x89PNG\r\n\x1a\n...",
    *,
    filename: str = "photo.png",
    content_type: str = "image/png",
    after: bytes = b"",
) -> bytes:
    body = b"".join(part(name, value.encode()) for name, value in fields)
    body += part("file", file, filename=filename, content_type=content_type)
    return body + after + b"--" + BOUNDARY + b"--\r\n"


async def stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def split(body: bytes, cuts: Iterable[int]) -> list[bytes]:
    points = [0, *sorted(set(cuts)), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(points)]


@dataclass(frozen=True)
class Parsed:
    fields: dict[str, str]
    filename: str
    content_type: str | None
    data: bytes


async def parse(chunks: Iterable[bytes], boundary: bytes = BOUNDARY) -> Parsed:
    async with asyncio.timeout(10):
        form = await read_post_form(boundary, stream(*chunks))
        data = b"".join([chunk async for chunk in form.file.chunks])
    return Parsed(dict(form.fields), form.file.filename, form.file.content_type, data)


class TestReadPostForm:
    async def test_fields_then_the_file(self) -> None:
        parsed = await parse([form_body()])

        assert parsed == Parsed(
            fields={"key": "uploads/${filename}", "policy": "eyJ9"},
            filename="photo.png",
            content_type="image/png",
            data=b"\x89PNG\r\n\x1a\n...",
        )

    async def test_field_names_come_in_lower_case(self) -> None:
        parsed = await parse([form_body([("Content-Type", "image/png"), ("KEY", "k")])])

        assert parsed.fields == {"content-type": "image/png", "key": "k"}

    async def test_utf8_file_names_and_values(self) -> None:
        body = form_body([("key", "dossiers/été/${filename}")], filename="résumé €.pdf")

        parsed = await parse([body])

        assert parsed.fields["key"] == "dossiers/été/${filename}"
        assert parsed.filename == "résumé €.pdf"

    async def test_an_empty_file_and_a_file_without_a_name_or_type(self) -> None:
        body = part("key", b"k") + b"--" + BOUNDARY + b"\r\n"
        body += b'Content-Disposition: form-data; name="file"\r\n\r\n\r\n--' + BOUNDARY + b"--"

        parsed = await parse([body])

        assert parsed == Parsed({"key": "k"}, "", None, b"")

    async def test_bytes_that_look_like_the_boundary_stay_in_the_file(self) -> None:
        file = b"a\r\n--" + BOUNDARY[:-1] + b"\r\n--\r\n" + DELIMITER[:-3] + b"x" + b"\r\n"

        assert (await parse([form_body(file=file)])).data == file

    @settings(max_examples=300, deadline=None)
    @given(data=st.data())
    def test_any_chunking_of_the_body_gives_the_same_form(self, data: st.DataObject) -> None:
        fragments = st.sampled_from([b"\r", b"\n", b"-", b"\r\n", b"\r\n--", *_prefixes()])
        file = b"".join(data.draw(st.lists(fragments | st.binary(max_size=40), max_size=30)))
        assume(DELIMITER not in b"\r\n" + file)  # a body never holds its delimiter (RFC 2046)
        values = st.text(st.characters(codec="utf-8", exclude_characters="\r"), max_size=50)
        fields = data.draw(
            st.lists(
                st.tuples(st.sampled_from(["key", "policy", "signature", "x-ignore-a"]), values),
                max_size=4,
                unique_by=lambda field: field[0],
            )
        )
        body = form_body(fields, file)
        cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=25))

        whole = asyncio.run(parse([body]))
        chunked = asyncio.run(parse(split(body, cuts)))

        assert chunked == whole
        assert whole.data == file
        assert whole.fields == dict(fields)

    async def test_a_50_mib_file_streams_through_at_constant_memory(self) -> None:
        block = random.Random(21).randbytes(64 * 1024)
        blocks = 50 * 16
        head = form_body()[: -len(b"...\r\n--" + BOUNDARY + b"--\r\n")]
        consumed = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal consumed
            for chunk in (head, *(block for _ in range(blocks)), DELIMITER + b"--\r\n"):
                consumed += len(chunk)
                yield chunk

        digest, size = hashlib.sha256(), 0
        tracemalloc.start()
        try:
            async with asyncio.timeout(60):
                form = await read_post_form(BOUNDARY, body())
                async for chunk in form.file.chunks:
                    digest.update(chunk)
                    size += len(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

        assert size == len(b"\x89PNG\r\n\x1a\n") + blocks * len(block) > 50 * 1024 * 1024
        assert consumed == len(head) + blocks * len(block) + len(DELIMITER + b"--\r\n")
        expected = hashlib.sha256()
        expected.update(b"\x89PNG\r\n\x1a\n")
        for _ in range(blocks):
            expected.update(block)
        assert digest.digest() == expected.digest()
        assert peak < 2 * 1024 * 1024, f"peak {peak} bytes"

    async def test_large_body_chunks_are_parsed_in_slices(self) -> None:
        # One 8 MiB chunk from the server: handed on in slices, never whole.
        file = random.Random(3).randbytes(8 * 1024 * 1024)

        form = await read_post_form(BOUNDARY, stream(form_body(file=file)))
        sizes = [len(chunk) async for chunk in form.file.chunks]

        assert sum(sizes) == len(file)
        assert max(sizes) <= 64 * 1024

    async def test_the_fields_come_before_any_file_byte_is_read(self) -> None:
        read: list[str] = []

        async def body() -> AsyncIterator[bytes]:
            read.append("fields")
            yield part("key", b"k") + part("file", b"", filename="a")[: -len(b"\r\n")]
            for index in range(3):
                read.append(f"file {index}")
                yield b"x" * 100
            read.append("end")
            yield DELIMITER + b"--"

        form = await read_post_form(BOUNDARY, body())
        assert form.fields == {"key": "k"}
        assert read == ["fields"]

        first = await anext(form.file.chunks)
        await form.file.chunks.aclose()  # the caller stops early: nothing more is read

        assert first == b"x" * 100
        assert read == ["fields", "file 0"]

    async def test_the_epilogue_is_never_read(self) -> None:
        async def body() -> AsyncIterator[bytes]:
            yield form_body()
            while True:  # a client that never stops sending after the closing delimiter
                yield b"epilogue" * 1000

        assert (await parse([form_body()])).data == b"\x89PNG\r\n\x1a\n..."
        async with asyncio.timeout(5):
            form = await read_post_form(BOUNDARY, body())
            assert b"".join([c async for c in form.file.chunks]) == b"\x89PNG\r\n\x1a\n..."


def _prefixes() -> list[bytes]:
    return [DELIMITER[:n] for n in range(1, len(DELIMITER))]


async def read_fully(chunks: Iterable[bytes]) -> PostForm:
    form = await read_post_form(BOUNDARY, stream(*chunks))
    async with asyncio.timeout(10):
        async for _ in form.file.chunks:
            pass
    return form


class TestMalformedForms:
    @pytest.mark.parametrize(
        ("body", "reason"),
        [
            (b"", "the body ends before the form does"),
            (b"--" + BOUNDARY + b"--\r\n", "the form has no file part"),
            (part("key", b"k") + b"--" + BOUNDARY + b"--", "the form has no file part"),
            (b"garbage before the boundary", "the body is malformed"),
            (b"--" + BOUNDARY + b"X\r\n", "the body is malformed"),
            (
                b"--" + BOUNDARY + b"\r\nContent-Type: text/plain\r\n\r\nv\r\n",
                "a part has no Content-Disposition",
            ),
            (
                b"--" + BOUNDARY + b'\r\nContent-Disposition: attachment; name="a"\r\n\r\n',
                "a part is not a named form-data part",
            ),
            (
                b"--" + BOUNDARY + b"\r\nContent-Disposition: form-data\r\n\r\n",
                "a part is not a named form-data part",
            ),
            (
                b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="a"\r\n'
                b'Content-Disposition: form-data; name="b"\r\n\r\n',
                "a part has two Content-Disposition headers",
            ),
            (
                b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="\xff"\r\n\r\n',
                "a part's headers are not UTF-8 text",
            ),
            (
                b"--" + BOUNDARY + b"\r\n" + b"X-Pad: y\r\n" * 9 + b"\r\n",
                "the body is malformed",
            ),
            (
                b"--" + BOUNDARY + b"\r\nX-Long: " + b"y" * 5000 + b"\r\n\r\n",
                "the body is malformed",
            ),
            (form_body([("key", "a"), ("KEY", "b")]), "a field is given twice"),
            (form_body([("key", "a" * (MAX_FIELD_BYTES + 1))]), "a field is too large"),
            (
                form_body([(f"x-ignore-{n}", "v") for n in range(MAX_FIELDS + 1)]),
                "the form has too many fields",
            ),
            (part("key", b"\xff\xfe") + part("file", b"", filename="a"), "a field is not UTF-8"),
            (part("avatar", b"x", filename="a.png"), "only the file part may carry a file"),
        ],
    )
    async def test_a_malformed_form_is_refused(self, body: bytes, reason: str) -> None:
        with pytest.raises(FormInvalid, match=reason):
            await read_fully([body])

    async def test_a_field_at_the_size_limit_is_accepted(self) -> None:
        form = await read_fully([form_body([("policy", "p" * MAX_FIELD_BYTES)])])

        assert len(form.fields["policy"]) == MAX_FIELD_BYTES

    async def test_a_field_after_the_file_is_refused_after_the_file(self) -> None:
        body = form_body(file=b"data", after=part("key", b"sneaky"))
        form = await read_post_form(BOUNDARY, stream(body))
        received: list[bytes] = []

        with pytest.raises(FormInvalid, match="a field follows the file part"):
            await collect(form.file.chunks, received)
        assert b"".join(received) == b"data"

    async def test_a_body_cut_anywhere_is_refused(self) -> None:
        body = form_body()
        for cut in range(len(body) - len(b"\r\n")):  # the final CRLF is optional
            with pytest.raises(FormInvalid):
                await read_fully(split(body[:cut], [cut // 2]))

    async def test_an_invalid_boundary_is_refused_before_reading(self) -> None:
        read: list[bytes] = []

        async def body() -> AsyncIterator[bytes]:
            read.append(b"x")
            yield form_body()

        for boundary in (b"", b"a" * 71, b"bad\rboundary", b"trailing ", b"\xff"):
            with pytest.raises(FormInvalid, match="not a valid multipart boundary"):
                await read_post_form(boundary, body())
        assert read == []

    async def test_the_error_is_a_400_problem_with_its_reason(self) -> None:
        with pytest.raises(FormInvalid) as error:
            await read_fully([form_body([("key", "a" * (MAX_FIELD_BYTES + 1))])])

        assert isinstance(error.value, BadRequest)
        assert error.value.extensions == {"reason": "a field is too large"}
        assert "aaaa" not in str(error.value)


async def collect(chunks: AsyncIterator[bytes], into: list[bytes]) -> None:
    async for chunk in chunks:
        into.append(chunk)


class TestFormBoundary:
    @pytest.mark.parametrize(
        ("header", "boundary"),
        [
            ("multipart/form-data; boundary=abc", b"abc"),
            ('Multipart/Form-Data; boundary="a b:c?"', b"a b:c?"),
            ("multipart/form-data; charset=utf-8; boundary=" + "z" * 70, b"z" * 70),
        ],
    )
    def test_the_boundary_of_a_form(self, header: str, boundary: bytes) -> None:
        assert form_boundary(header) == boundary

    @pytest.mark.parametrize(
        ("header", "reason"),
        [
            (None, "not multipart/form-data"),
            ("", "not multipart/form-data"),
            ("application/x-www-form-urlencoded", "not multipart/form-data"),
            ("multipart/mixed; boundary=abc", "not multipart/form-data"),
            ("multipart/form-data", "has no boundary"),
            ("multipart/form-data; charset=utf-8", "has no boundary"),
            ("multipart/form-data; boundary=", "not a valid multipart boundary"),
            ("multipart/form-data; boundary=" + "z" * 71, "not a valid multipart boundary"),
            ('multipart/form-data; boundary="ends with space "', "not a valid multipart boundary"),
            ("multipart/form-data; boundary=semi\x7fcolon", "not a valid multipart boundary"),
        ],
    )
    def test_a_missing_or_invalid_boundary_is_refused(
        self, header: str | None, reason: str
    ) -> None:
        with pytest.raises(FormInvalid, match=reason):
            form_boundary(header)
