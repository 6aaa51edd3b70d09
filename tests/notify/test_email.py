"""Email composition read back by the standard parser, DKIM verified by dkimpy, the tracking
transforms, and address and phone normalization."""

from __future__ import annotations

import re
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser

import dkim
import pytest

from keel.notify.email import (
    DkimKey,
    InvalidAddress,
    InvalidPhone,
    add_open_pixel,
    compose,
    generate_dkim_key,
    normalize_address,
    normalize_phone,
    rewrite_links,
    sign,
)
from keel.notify.templating import Rendered

UNSUBSCRIBE = "https://notify.acme.test/u/opaque-token"
RENDERED = Rendered(
    locale="pt-BR",
    subject="Olá, Ada: ação necessária ✓",
    html="<html><body><p>Olá <b>Ada</b></p></body></html>",
    text="Olá Ada",
)


def parse(raw: bytes) -> EmailMessage:
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    return message


def bodies(message: EmailMessage) -> dict[str, str]:
    parts = message.iter_parts() if message.is_multipart() else [message]
    # Lines of a body on the wire end in CRLF; compare them as Python text.
    return {part.get_content_type(): part.get_content().replace("\r\n", "\n") for part in parts}


def composed(rendered: Rendered = RENDERED, unsubscribe_url: str | None = UNSUBSCRIBE) -> bytes:
    return compose(
        rendered,
        sender="Acme <hello@acme.test>",
        recipient="ada@example.com",
        message_id="01J9ZK3W8Q",
        domain="acme.test",
        unsubscribe_url=unsubscribe_url,
        reply_to="support@acme.test",
        extra_headers={"X-Keel-Tag": "onboarding"},
    ).as_bytes()


class TestCompose:
    def test_mime_structure_headers_and_utf8(self) -> None:
        raw = composed()
        assert b"\r\n" in raw
        assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF only, as SMTP wants
        message = parse(raw)
        assert message.get_content_type() == "multipart/alternative"
        assert [part.get_content_type() for part in message.iter_parts()] == [
            "text/plain",
            "text/html",
        ]
        assert message["Subject"] == "Olá, Ada: ação necessária ✓"
        assert message["Message-ID"] == "<01J9ZK3W8Q@acme.test>"
        assert message["From"] == "Acme <hello@acme.test>"
        assert message["Reply-To"] == "support@acme.test"
        assert message["X-Keel-Tag"] == "onboarding"
        assert message["Date"] is not None
        assert all(part.get_content_charset() == "utf-8" for part in message.iter_parts())
        assert bodies(message)["text/html"].startswith("<html><body><p>Olá <b>Ada</b></p>")

    def test_rfc_8058_headers_and_a_visible_link_in_both_parts(self) -> None:
        message = parse(composed())
        assert message["List-Unsubscribe"] == f"<{UNSUBSCRIBE}>"
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        parts = bodies(message)
        assert f'<a href="{UNSUBSCRIBE}">Unsubscribe</a></p></body></html>' in parts["text/html"]
        assert parts["text/plain"] == f"Olá Ada\n\nUnsubscribe: {UNSUBSCRIBE}\n"

    def test_no_unsubscribe_headers_without_a_url(self) -> None:
        message = parse(composed(unsubscribe_url=None))
        assert message["List-Unsubscribe"] is None
        assert message["List-Unsubscribe-Post"] is None
        assert "Unsubscribe" not in "".join(bodies(message).values())

    def test_text_alone_when_there_is_no_html(self) -> None:
        message = parse(composed(Rendered(locale="en", subject="s", text="Only text")))
        assert message.get_content_type() == "text/plain"
        assert bodies(message) == {"text/plain": f"Only text\n\nUnsubscribe: {UNSUBSCRIBE}\n"}

    def test_text_derived_when_only_html_is_given(self) -> None:
        message = parse(composed(Rendered(locale="en", subject="s", html="<p>Hi</p>")))
        assert bodies(message)["text/plain"] == f"Hi\n\nUnsubscribe: {UNSUBSCRIBE}\n"

    @pytest.mark.parametrize(
        ("change", "error"),
        [
            ({"recipient": "a@b.test\r\nBcc: all@x.test"}, "line break"),
            ({"message_id": "<x>"}, "dot-atoms"),
            ({"unsubscribe_url": "javascript:alert(1)"}, "http"),
            ({"unsubscribe_url": "https://a.test/u>, <mailto:x@y"}, "angle brackets"),
            ({"extra_headers": {"List-Unsubscribe": "<https://evil.test>"}}, "extra header"),
        ],
    )
    def test_bad_arguments_are_refused(self, change: dict[str, object], error: str) -> None:
        arguments: dict[str, object] = {
            "sender": "hello@acme.test",
            "recipient": "ada@example.com",
            "message_id": "m1",
            "domain": "acme.test",
            "unsubscribe_url": UNSUBSCRIBE,
        }
        with pytest.raises(ValueError, match=error):
            compose(RENDERED, **{**arguments, **change})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def dkim_key() -> tuple[DkimKey, str]:
    private_pem, record = generate_dkim_key()
    return DkimKey(selector="s2026", domain="acme.test", private_key_pem=private_pem), record


def verify(signed: bytes, record: str) -> bool:
    def dns(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s2026._domainkey.acme.test."
        return record.encode()

    return bool(dkim.verify(signed, dnsfunc=dns))


class TestDkim:
    def test_signature_verifies_and_covers_the_unsubscribe_headers(
        self, dkim_key: tuple[DkimKey, str]
    ) -> None:
        key, record = dkim_key
        assert record.startswith("v=DKIM1; k=rsa; p=")
        signed = sign(composed(), key)
        assert signed.startswith(b"DKIM-Signature: ")
        assert verify(signed, record)
        header = parse(signed)["DKIM-Signature"]
        tags = dict(
            tag.strip().split("=", 1) for tag in re.sub(r"\s+", "", header).split(";") if tag
        )
        signed_headers = tags["h"].split(":")
        assert {"list-unsubscribe", "list-unsubscribe-post", "from", "to", "subject"} <= set(
            signed_headers
        )
        assert {"date", "message-id", "mime-version", "content-type"} <= set(signed_headers)
        assert (tags["a"], tags["c"], tags["d"], tags["s"]) == (
            "rsa-sha256",
            "relaxed/simple",
            "acme.test",
            "s2026",
        )

    def test_tampering_with_list_unsubscribe_breaks_it(self, dkim_key: tuple[DkimKey, str]) -> None:
        key, record = dkim_key
        signed = sign(composed(), key)
        tampered = signed.replace(UNSUBSCRIBE.encode(), b"https://evil.test/u/opaque-token", 1)
        assert tampered != signed
        assert not verify(tampered, record)

    def test_a_second_list_unsubscribe_added_later_breaks_it(
        self, dkim_key: tuple[DkimKey, str]
    ) -> None:
        key, record = dkim_key
        signed = sign(composed(), key)
        head, body = signed.split(b"\r\n\r\n", 1)
        added = head + b"\r\nList-Unsubscribe: <https://evil.test/u>\r\n\r\n" + body
        assert not verify(added, record)

    def test_the_body_is_covered(self, dkim_key: tuple[DkimKey, str]) -> None:
        key, record = dkim_key
        signed = sign(composed(), key)
        head, _, body = signed.partition(b"\r\n\r\n")
        assert verify(head + b"\r\n\r\n" + body, record)
        # One character of the (encoded) body changed: the body hash no longer matches.
        tampered = body.replace(b"A", b"B", 1)
        assert tampered != body
        assert not verify(head + b"\r\n\r\n" + tampered, record)

    def test_a_message_without_unsubscribe_headers_signs_too(
        self, dkim_key: tuple[DkimKey, str]
    ) -> None:
        key, record = dkim_key
        assert verify(sign(composed(unsubscribe_url=None), key), record)

    def test_a_bad_key_is_a_clear_error_without_the_key(self) -> None:
        secret = b"-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END"
        with pytest.raises(ValueError, match="not an RSA key") as caught:
            sign(composed(), DkimKey("s1", "acme.test", secret))
        assert "c2VjcmV0" not in str(caught.value)

    def test_the_private_key_is_not_in_the_repr(self, dkim_key: tuple[DkimKey, str]) -> None:
        key, _ = dkim_key
        assert "PRIVATE" not in repr(key)


class TestTracking:
    HTML = (
        "<html><body>"
        '<a href="https://shop.test/item?id=1&amp;ref=mail">Item</a>'
        "<a class='x' HREF='http://plain.test/'>Plain</a>"
        '<a href="mailto:help@acme.test">Mail</a>'
        '<a href="#top">Top</a>'
        f'<a href="{UNSUBSCRIBE}">Unsubscribe</a>'
        '<a data-href="https://no.test" title="href=https://no.test">No href</a>'
        '<abbr title="https://no.test">abbr</abbr>'
        "</body></html>"
    )

    def test_links_are_rewritten_with_escaping(self) -> None:
        seen: list[str] = []

        def track(url: str) -> str:
            seen.append(url)
            return f'https://t.acme.test/c?u={len(seen)}&sig=a"b'

        rewritten = rewrite_links(self.HTML, track, skip=lambda url: url == UNSUBSCRIBE)
        assert seen == ["https://shop.test/item?id=1&ref=mail", "http://plain.test/"]
        assert '<a href="https://t.acme.test/c?u=1&amp;sig=a&quot;b">Item</a>' in rewritten
        assert "<a class='x' HREF=\"https://t.acme.test/c?u=2&amp;sig=a&quot;b\">" in rewritten
        assert '<a href="mailto:help@acme.test">' in rewritten
        assert '<a href="#top">' in rewritten
        assert f'<a href="{UNSUBSCRIBE}">' in rewritten
        assert 'title="href=https://no.test">No href' in rewritten
        assert '<abbr title="https://no.test">' in rewritten

    def test_each_message_gets_its_own_links_from_the_same_html(self) -> None:
        # The second message's anchors were seen in the first (their parts are kept): each
        # message's links still carry that message's own tracking URLs, and the skipped
        # link stays skipped only where the message skips it.
        first = rewrite_links(self.HTML, lambda url: f"https://t.test/m1?u={url}")
        second = rewrite_links(
            self.HTML, lambda url: f"https://t.test/m2?u={url}", skip=lambda url: "shop" in url
        )
        assert '<a href="https://t.test/m1?u=https://shop.test/item?id=1&amp;ref=mail">' in first
        assert f'<a href="https://t.test/m1?u={UNSUBSCRIBE}">' in first
        assert "m1" not in second
        assert '<a href="https://shop.test/item?id=1&amp;ref=mail">Item</a>' in second
        assert "<a class='x' HREF=\"https://t.test/m2?u=http://plain.test/\">" in second
        assert f'<a href="https://t.test/m2?u={UNSUBSCRIBE}">' in second

    def test_open_pixel_goes_before_the_body_end(self) -> None:
        html = add_open_pixel(self.HTML, "https://t.acme.test/o?m=1&sig=2")
        assert html.endswith(
            '<img src="https://t.acme.test/o?m=1&amp;sig=2" width="1" height="1" alt="" '
            'style="display:block;width:1px;height:1px;border:0" /></body></html>'
        )

    def test_open_pixel_at_the_end_of_a_fragment(self) -> None:
        assert add_open_pixel("<p>x</p>", "https://t.test/o").startswith('<p>x</p><img src="')


class TestAddresses:
    @pytest.mark.parametrize(
        ("given", "normalized"),
        [
            ("ada@example.com", "ada@example.com"),
            ("Ada.Lovelace@EXAMPLE.COM", "Ada.Lovelace@example.com"),
            ("jörg@bücher.example", "jörg@bücher.example"),
        ],
    )
    def test_good_addresses(self, given: str, normalized: str) -> None:
        assert normalize_address(given) == normalized

    @pytest.mark.parametrize(
        "given", ["", "ada", "ada@", "@example.com", "a b@example.com", "ada@example..com"]
    )
    def test_bad_addresses(self, given: str) -> None:
        with pytest.raises(InvalidAddress, match="not a valid email address"):
            normalize_address(given)

    @pytest.mark.parametrize(
        ("given", "region", "e164"),
        [
            ("+1 415-555-2671", None, "+14155552671"),
            ("(415) 555-2671", "US", "+14155552671"),
            ("+44 20 7946 0958", None, "+442079460958"),
            ("011 2345 6789", "BR", "+551123456789"),
        ],
    )
    def test_good_phones(self, given: str, region: str | None, e164: str) -> None:
        assert normalize_phone(given, region) == e164

    @pytest.mark.parametrize(
        ("given", "region"),
        [("415-555-2671", None), ("not a number", "US"), ("+1 123", None), ("+1 0005550000", None)],
    )
    def test_bad_phones(self, given: str, region: str | None) -> None:
        with pytest.raises(InvalidPhone):
            normalize_phone(given, region)
