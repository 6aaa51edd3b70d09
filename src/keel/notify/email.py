"""Email composition: MIME, RFC 8058 one-click unsubscribe, tracking transforms and DKIM.

Pure functions over strings and bytes; the service renders a template
(:mod:`keel.notify.templating`), applies the tracking transforms to its HTML
(:func:`rewrite_links`, :func:`add_open_pixel`), builds the message with :func:`compose`,
signs its bytes with :func:`sign` and hands them to a provider::

    html = rewrite_links(rendered.html, click_url, skip=lambda url: url == unsubscribe_url)
    html = add_open_pixel(html, pixel_url)
    message = compose(replace(rendered, html=html), sender="Acme <hi@acme.test>",
                      recipient=normalize_address(to), message_id=str(message.id),
                      domain="acme.test", unsubscribe_url=unsubscribe_url)
    raw = sign(message.as_bytes(), DkimKey("s1", "acme.test", private_pem))

The text part is quoted-printable and the HTML part base64, both 7-bit, so that no relay
rewrites them (8-bit bodies may be re-encoded on the way, which breaks the DKIM body hash).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import html as html_escaping
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.policy import SMTP
from email.utils import format_datetime
from urllib.parse import urlsplit

import dkim
import phonenumbers
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy
from email_validator import EmailNotValidError, validate_email

from keel.notify.templating import Rendered, html_to_text

__all__ = [
    "ComposedEmail",
    "DkimKey",
    "InvalidAddress",
    "InvalidPhone",
    "add_open_pixel",
    "compose",
    "generate_dkim_key",
    "normalize_address",
    "normalize_phone",
    "rewrite_links",
    "sign",
]

ONE_CLICK = "List-Unsubscribe=One-Click"

# Headers compose() writes itself: extra_headers may not replace them.
_OWN_HEADERS = frozenset(
    {
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "reply-to",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "dkim-signature",
    }
)
_FIELD_NAME = re.compile(r"[!-9;-~]{1,76}")  # RFC 5322 ftext: printable ASCII but ":"
_MESSAGE_ID_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,200}")
_BODY_CLOSE = re.compile(r"</body\s*>", re.IGNORECASE)


#: CRLF line ends, and headers folded only past RFC 5322's 998 characters: a long
#: ``List-Unsubscribe`` URL has no space to fold at, and the standard 78 made the library
#: write it as an RFC 2047 encoded word, which no mail client reads as a URL (RFC 8058).
_POLICY = SMTP.clone(max_line_length=998)


class InvalidAddress(ValueError):
    """An email address that cannot receive mail as written."""


class InvalidPhone(ValueError):
    """A phone number that is not a valid, dialable number."""


# -- composition ----------------------------------------------------------------------------


def _single_line(name: str, value: str) -> str:
    if "\r" in value or "\n" in value:
        raise ValueError(f"the {name} header cannot contain a line break")
    return value


def _insert_before_body_close(html: str, fragment: str) -> str:
    """``fragment`` before the last ``</body>``, or at the end when there is none."""
    closes = list(_BODY_CLOSE.finditer(html))
    if not closes:
        return html + fragment
    at = closes[-1].start()
    return html[:at] + fragment + html[at:]


def _unsubscribe_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError("the unsubscribe URL must be an absolute http(s) URL")
    if any(character in url for character in "<>\r\n\t ,"):
        raise ValueError("the unsubscribe URL must not contain spaces, commas or angle brackets")
    return url


@dataclass(frozen=True)
class ComposedEmail:
    """A composed message: its header fields in order and its body, as they go on the wire.

    ``message["Message-ID"]`` reads a header (``None`` when absent); :meth:`as_bytes` is the
    whole message, CRLF throughout.
    """

    headers: tuple[tuple[str, str], ...]
    head: bytes = field(repr=False)
    body: bytes = field(repr=False)

    def __getitem__(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)

    def as_bytes(self) -> bytes:
        return b"".join((self.head, b"\r\n", self.body))


def _header_line(name: str, value: str) -> bytes:
    """One header field on the wire. An ASCII field within RFC 5322's 998 characters is
    written as it is; anything else is folded and RFC 2047-encoded by the standard library's
    header machinery, exactly as its generator writes it (a display name in UTF-8 becomes
    an encoded word, the address stays as it is)."""
    line = f"{name}: {value}\r\n"
    if value.isascii() and len(line) <= 1000:
        return line.encode("ascii")
    return _POLICY.fold_binary(*_POLICY.header_store_parse(name, value))


def _body_lines(text: str) -> bytes:
    """``text`` in UTF-8 with CRLF line ends and a final one (as the standard library's
    content manager normalises a text part before encoding it)."""
    return b"\r\n".join(text.encode("utf-8").splitlines()) + b"\r\n"


def _quoted_printable(text: str) -> bytes:
    # binascii's encoder (C): lines of at most 76 characters (RFC 2045), CRLF soft breaks
    # (it follows the text's own line ends), "=" and 8-bit bytes escaped.
    return binascii.b2a_qp(_body_lines(text), istext=True)


def _base64(text: str) -> bytes:
    # Lines of 76 characters (RFC 2045), CRLF ends (base64.encodebytes loops in Python).
    encoded = base64.b64encode(_body_lines(text))
    lines = [encoded[start : start + 76] for start in range(0, len(encoded), 76)]
    return b"\r\n".join(lines) + b"\r\n"


def _text_part_headers(subtype: str, encoding: str) -> list[tuple[str, str]]:
    return [
        ("Content-Type", f'text/{subtype}; charset="utf-8"'),
        ("Content-Transfer-Encoding", encoding),
    ]


def _boundary() -> str:
    # "=_" can appear in neither a quoted-printable nor a base64 body ("=" is followed by
    # two hex digits or a line end in one, and is only padding at the end in the other).
    return f"=_keel_{secrets.token_hex(16)}"


def compose(
    rendered: Rendered,
    *,
    sender: str,
    recipient: str,
    message_id: str,
    domain: str,
    unsubscribe_url: str | None,
    reply_to: str | None = None,
    extra_headers: Mapping[str, str] | None = None,
    unsubscribe_label: str = "Unsubscribe",
) -> ComposedEmail:
    """The message for a rendered email: multipart/alternative text and HTML (text alone when
    there is no HTML), UTF-8, ``Message-ID: <message_id@domain>``.

    With ``unsubscribe_url`` (every non-critical email), the RFC 8058 headers
    ``List-Unsubscribe: <url>`` and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``,
    and a visible link at the end of both parts.

    The bytes are written here rather than by ``email.generator``, which walked the message
    line by line (about 1.7 ms of a 20 KB newsletter's 5 ms); the tests read them back with
    the standard library's parser and verify them with dkimpy.
    """
    if rendered.subject is None:
        raise ValueError("an email needs a subject")
    text = rendered.text
    if text is None and rendered.html is None:
        raise ValueError("an email needs a text or an HTML part")
    if not _MESSAGE_ID_PART.fullmatch(message_id) or not _MESSAGE_ID_PART.fullmatch(domain):
        raise ValueError("message_id and domain must be dot-atoms (no '<', '>', '@' or spaces)")
    headers: list[tuple[str, str]] = [
        ("From", _single_line("From", sender)),
        ("To", _single_line("To", recipient)),
        ("Subject", _single_line("Subject", rendered.subject)),
        ("Date", format_datetime(datetime.now(UTC))),
        ("Message-ID", f"<{message_id}@{domain}>"),
    ]
    if reply_to is not None:
        headers.append(("Reply-To", _single_line("Reply-To", reply_to)))
    extra_names: set[str] = set()
    for name, value in (extra_headers or {}).items():
        if not _FIELD_NAME.fullmatch(name) or name.lower() in _OWN_HEADERS:
            raise ValueError(f"{name[:80]!r} cannot be given as an extra header")
        if name.lower() in extra_names:
            raise ValueError(f"{name[:80]!r} is given twice")
        extra_names.add(name.lower())
        headers.append((name, _single_line(name, value)))
    html = rendered.html
    if unsubscribe_url is not None:
        url = _unsubscribe_url(unsubscribe_url)
        headers.append(("List-Unsubscribe", f"<{url}>"))
        headers.append(("List-Unsubscribe-Post", ONE_CLICK))
        label = html_escaping.escape(unsubscribe_label)
        link = html_escaping.escape(url, quote=True)
        if html is not None:
            html = _insert_before_body_close(
                html, f'<p style="font-size:12px"><a href="{link}">{label}</a></p>'
            )
        if text is None and html is not None:
            text = html_to_text(rendered.html or "")
        text = f"{(text or '').rstrip()}\n\n{unsubscribe_label}: {url}\n"
    elif text is None and html is not None:
        text = html_to_text(html)
    headers.append(("MIME-Version", "1.0"))
    text_body = _quoted_printable(text or "")
    if html is None:
        headers += _text_part_headers("plain", "quoted-printable")
        body = text_body
    else:
        # The HTML part is base64: encoded in C, where quoted-printable was a Python loop
        # over every character of a 20 KB newsletter; both are 7-bit, which relays leave alone.
        boundary = _boundary()
        headers.append(("Content-Type", f'multipart/alternative; boundary="{boundary}"'))
        delimiter = f"--{boundary}\r\n".encode()
        body = b"".join(
            (
                delimiter,
                *(
                    _header_line(*header)
                    for header in _text_part_headers("plain", "quoted-printable")
                ),
                b"\r\n",
                text_body,
                b"\r\n",
                delimiter,
                *(_header_line(*header) for header in _text_part_headers("html", "base64")),
                b"\r\n",
                _base64(html),
                b"\r\n",
                f"--{boundary}--\r\n".encode(),
            )
        )
    head = b"".join(_header_line(name, value) for name, value in headers)
    return ComposedEmail(tuple(headers), head, body)


# -- tracking -------------------------------------------------------------------------------

_ANCHOR = re.compile(r"""<a(?=[\s/>])(?:[^>"']|"[^"]*"|'[^']*')*>""", re.IGNORECASE)
_ATTRIBUTE = re.compile(
    r"""([^\s"'>/=]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+)))?""", re.DOTALL
)


def add_open_pixel(html: str, pixel_url: str) -> str:
    """A 1-by-1 image fetching ``pixel_url``, before ``</body>`` (or at the end)."""
    source = html_escaping.escape(pixel_url, quote=True)
    pixel = (
        f'<img src="{source}" width="1" height="1" alt="" '
        'style="display:block;width:1px;height:1px;border:0" />'
    )
    return _insert_before_body_close(html, pixel)


@functools.lru_cache(maxsize=4096)
def _anchor_href(tag: str) -> tuple[str, str, str, str] | None:
    """An ``<a>`` tag's parts around its http(s) ``href``: the tag before it, the attribute's
    name, its URL (unescaped), the tag after it; None when the tag has no such link. Kept per
    tag: a newsletter's links are the same in every message of a batch."""
    position = 2  # after "<a"
    while True:
        attribute = _ATTRIBUTE.search(tag, position)
        if attribute is None:
            return None
        position = attribute.end()
        if attribute.group(1).lower() != "href":
            continue
        raw = next((g for g in attribute.groups()[1:] if g is not None), None)
        if raw is None:
            return None
        url = html_escaping.unescape(raw).strip()
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            return None
        return tag[: attribute.start()], attribute.group(1), url, tag[attribute.end() :]


def _rewrite_anchor(
    tag: str, rewrite: Callable[[str], str], skip: Callable[[str], bool] | None
) -> str:
    parts = _anchor_href(tag)
    if parts is None:
        return tag
    before, name, url, after = parts
    if skip and skip(url):
        return tag
    value = html_escaping.escape(rewrite(url), quote=True)
    return f'{before}{name}="{value}"{after}'


def rewrite_links(
    html: str,
    rewrite: Callable[[str], str],
    *,
    skip: Callable[[str], bool] | None = None,
) -> str:
    """Every ``<a href>`` with an http(s) URL replaced by ``rewrite(url)`` (click tracking).

    ``rewrite`` sees the URL unescaped and its result is escaped back; ``mailto:``, ``tel:``,
    fragments and the URLs ``skip`` accepts (the unsubscribe link) are left as they are.
    """
    return _ANCHOR.sub(lambda match: _rewrite_anchor(match.group(0), rewrite, skip), html)


# -- DKIM -----------------------------------------------------------------------------------

# RFC 6376 5.4.1's recommended set plus the RFC 8058 pair, which must be signed.
_SIGNED_HEADERS = (
    "from",
    "to",
    "cc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
)
# Signed once more than present, so that a relay cannot add a second instance unnoticed.
_OVERSIGNED = frozenset({"from", "subject", "list-unsubscribe", "list-unsubscribe-post"})
_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


@dataclass(frozen=True)
class DkimKey:
    """A DKIM signing key: ``<selector>._domainkey.<domain>`` publishes its public half."""

    selector: str
    domain: str
    private_key_pem: bytes = field(repr=False)

    def __post_init__(self) -> None:
        for name in (self.selector, self.domain):
            if not all(_DNS_LABEL.fullmatch(label) for label in name.split(".")):
                raise ValueError("the DKIM selector and domain must be DNS names")


def sign(raw: bytes, key: DkimKey) -> bytes:
    """``raw`` with a DKIM-Signature header prepended (rsa-sha256, relaxed headers and simple
    body canonicalization: the body is base64 or quoted-printable, which relays leave alone,
    and the simple form costs nothing where relaxed ran regular expressions over it all)."""
    present: dict[str, int] = {}
    for line in raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line[:1] not in (b" ", b"\t") and b":" in line:
            name = line.split(b":", 1)[0].strip().lower().decode("ascii", "replace")
            present[name] = present.get(name, 0) + 1
    if "from" not in present:
        raise ValueError("a message without a From header cannot be DKIM-signed")
    headers = [
        name.encode()
        for name in _SIGNED_HEADERS
        for _ in range(present.get(name, 0) + (name in _OVERSIGNED and name in present))
    ]
    return _signature_header(raw, key, headers) + raw


@functools.lru_cache(maxsize=64)
def _private_key(pem: bytes) -> rsa.RSAPrivateKey:
    try:
        loaded = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        raise ValueError("the DKIM private key is not an RSA key in PEM form") from None
    if not isinstance(loaded, rsa.RSAPrivateKey):
        raise ValueError("the DKIM private key is not an RSA key in PEM form")
    return loaded


def _signature_header(raw: bytes, key: DkimKey, include: list[bytes]) -> bytes:
    """The ``DKIM-Signature`` header of RFC 6376 section 5 for ``raw``: dkimpy parses and
    canonicalises (relaxed/simple) and hashes the signed headers exactly as its own signer
    and verifier do; the RSA signature is OpenSSL's, through ``cryptography`` (dkimpy's
    pure-Python RSA took 8 ms a message, nine tenths of signing)."""
    private_key = _private_key(key.private_key_pem)
    # Only the header block goes through dkimpy's parser (it splits the whole message into
    # lines); the message is ours, CRLF throughout, so the body is what follows the blank line.
    head, separator, body = raw.partition(b"\r\n\r\n")
    if not separator:
        raise ValueError("a message without a body cannot be DKIM-signed")
    headers, _ = dkim.rfc822_parse(head + b"\r\n\r\n")
    policy = CanonicalizationPolicy.from_c_value(b"relaxed/simple")
    body_hash = base64.b64encode(hashlib.sha256(policy.canonicalize_body(body)).digest())
    domain = key.domain.encode()
    fields = [
        (b"v", b"1"),
        (b"a", b"rsa-sha256"),
        (b"c", b"relaxed/simple"),
        (b"d", domain),
        (b"i", b"@" + domain),
        (b"q", b"dns/txt"),
        (b"s", key.selector.encode()),
        (b"t", str(int(time.time())).encode()),
        (b"h", b" : ".join(include)),
        (b"bh", body_hash),
        (b"b", b""),
    ]
    name = b"DKIM-Signature"
    unsigned = dkim.fold(b"; ".join(b"=".join(field) for field in fields), namelen=len(name))
    hasher = hashlib.sha256()
    dkim.hash_headers(
        hasher,
        policy,
        policy.canonicalize_headers(headers),
        include,
        (name, b" " + unsigned),
        dict(fields),
    )
    signature = private_key.sign(
        hasher.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
    )
    fields[-1] = (b"b", base64.b64encode(signature))
    value = dkim.fold(b"; ".join(b"=".join(field) for field in fields) + b"\r\n", namelen=len(name))
    return b"".join((name, b": ", value))


def generate_dkim_key(bits: int = 2048) -> tuple[bytes, str]:
    """A new RSA key: its private PEM and the TXT record to publish at
    ``<selector>._domainkey.<domain>`` (split it into 255-character strings in the zone)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(public).decode()}"


# -- addresses ------------------------------------------------------------------------------


#: An ASCII dot-atom local part (RFC 5322), which email_validator leaves as it is.
_PLAIN_LOCAL = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,64}(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$"
)


@functools.lru_cache(maxsize=4096)
def _normalized_domain(domain: str) -> str:
    """A domain as email_validator normalises it (or :class:`InvalidAddress`), once per
    domain: a batch of 100,000 addresses has a few hundred domains."""
    return normalize_address_fully(f"postmaster@{domain}").rpartition("@")[2]


def normalize_address(address: str) -> str:
    """The normalized form of an email address (domain lowercased, Unicode NFC).

    Syntax only: deliverability would need DNS at send time, which a 100,000-recipient batch
    cannot afford; bounces feed the suppression list instead. The common case — an ASCII
    dot-atom local part — is checked here and its domain by email_validator once per domain
    (a tenth of the time per address); anything else goes to email_validator whole.
    """
    local, at, domain = address.rpartition("@")
    if at and len(local) <= 64 and len(address) <= 254 and _PLAIN_LOCAL.fullmatch(local):
        return f"{local}@{_normalized_domain(domain)}"
    return normalize_address_fully(address)


def normalize_address_fully(address: str) -> str:
    """:func:`normalize_address` by email_validator alone."""
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as error:
        raise InvalidAddress(f"not a valid email address: {error}") from None


def normalize_phone(number: str, default_region: str | None = None) -> str:
    """The E.164 form (``+14155550123``) of a phone number; ``default_region`` (ISO 3166
    alpha-2) reads numbers written without a country code."""
    try:
        parsed = phonenumbers.parse(number, default_region)
    except phonenumbers.NumberParseException:
        raise InvalidPhone(
            "not a phone number (write it in international form, like +14155550123)"
        ) from None
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhone("not a valid phone number for its country")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
