"""Financial transactions as Keel records them: the checks on a transaction's fields that the
SDK runs before sending and the audit service runs on arrival (``keel_client.audit``).

Pure functions and constants, apart from the audit client so that the server can use them
without importing an HTTP client.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal

#: A transaction id; its event's id is ``txn:<transaction id>``, 64 characters at most.
TRANSACTION_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,60}")
TRANSACTION_EVENT_PREFIX = "txn:"
#: The shape of an ISO 4217 alphabetic code (Keel also checks that the code exists).
CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
#: An amount as it travels and is stored: plain decimal text with an optional minus, no
#: exponent, no leading zeros, so ``Decimal(text)`` written back with ``format(_, "f")`` is
#: the same text.
AMOUNT_PATTERN = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")
#: Digits of an amount at most: what an IEEE 754 decimal128 holds, so a ledger can read it
#: back into its own decimal type.
MAX_AMOUNT_DIGITS = 34
#: Approvers in an authorising chain at most.
MAX_AUTHORISERS = 20
#: Longest text of a transaction's fields (``authoriser``: each entry of the chain).
TRANSACTION_FIELD_LIMITS = {
    "from_account": 200,
    "to_account": 200,
    "reason": 500,
    "authoriser": 200,
    "user": 200,
}
#: ISO 4217 minor units of the currencies with other than two; ``None`` for the codes without
#: a minor unit (precious metals, SDR, bond-market units, the test and "no currency" codes),
#: whose amounts may have any number of decimal places.
_MINOR_UNITS: dict[str, int | None] = {
    **dict.fromkeys(
        ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI",
         "VND", "VUV", "XAF", "XOF", "XPF"),
        0,
    ),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
    **dict.fromkeys(
        ("XAG", "XAU", "XBA", "XBB", "XBC", "XBD", "XDR", "XPD", "XPT", "XSU", "XTS", "XUA",
         "XXX"),
        None,
    ),
}  # fmt: skip


def currency_minor_units(currency: str) -> int | None:
    """Decimal places of ``currency`` (ISO 4217): 0 for JPY, 3 for KWD, 2 for most;
    ``None`` when the code has no minor unit (XAU, XDR...)."""
    return _MINOR_UNITS.get(currency, 2)


def check_amount(amount: object, currency: str) -> str:
    """The exact text of a transaction's ``amount`` in ``currency``: how it is sent and stored.

    ``amount`` must be a :class:`~decimal.Decimal`; a float is refused (``TypeError``)
    because most decimal amounts have no exact float (``0.1`` is
    0.1000000000000000055511151231257827...). ``ValueError`` for NaN or infinity, more than
    :data:`MAX_AMOUNT_DIGITS` digits, or more decimal places than the currency has: the text
    keeps the scale as given (``Decimal("1234.50")`` is ``"1234.50"``), so ``"12.300"`` in
    EUR is refused rather than silently rounded.
    """
    if isinstance(amount, float):
        raise TypeError(
            "amount must be a decimal.Decimal, not a float: a float cannot hold most decimal "
            "amounts exactly (0.1 is 0.1000000000000000055...); write Decimal('0.10')"
        )
    if not isinstance(amount, Decimal):
        raise TypeError(f"amount must be a decimal.Decimal, not {type(amount).__name__}")
    if not amount.is_finite():
        raise ValueError(f"amount must be a finite number, not {amount}")
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    places = max(-exponent, 0)
    if amount.adjusted() >= MAX_AMOUNT_DIGITS or places > MAX_AMOUNT_DIGITS:
        raise ValueError(f"amount has more than {MAX_AMOUNT_DIGITS} digits")
    allowed = currency_minor_units(currency)
    if allowed is not None and places > allowed:
        raise ValueError(f"amount {amount} has more decimal places than {currency} has ({allowed})")
    text = format(amount, "f")
    if sum(character.isdigit() for character in text) > MAX_AMOUNT_DIGITS:
        raise ValueError(f"amount has more than {MAX_AMOUNT_DIGITS} digits")
    return text


def check_transaction_id(transaction_id: object) -> str:
    if not isinstance(transaction_id, str) or not TRANSACTION_ID_PATTERN.fullmatch(transaction_id):
        raise ValueError("a transaction id is 1 to 60 of A-Z a-z 0-9 . _ : -")
    return transaction_id


def check_transaction_text(name: str, value: object) -> str:
    """A required text field of a transaction: a string of 1 to its limit characters."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    limit = TRANSACTION_FIELD_LIMITS[name]
    if not 0 < len(value) <= limit:
        raise ValueError(f"{name} must be 1 to {limit} characters")
    return value


def check_authorising_chain(chain: object) -> list[str]:
    """Who authorised a transaction, in order (possibly nobody): a sequence of principal ids.

    A bare string is refused: it is a sequence of its characters, not a chain of one.
    """
    if isinstance(chain, str | bytes) or not isinstance(chain, Sequence):
        raise TypeError("authorising_chain must be a sequence of ids, e.g. ['u-7', 'u-9']")
    if len(chain) > MAX_AUTHORISERS:
        raise ValueError(f"authorising_chain has more than {MAX_AUTHORISERS} entries")
    return [check_transaction_text("authoriser", entry) for entry in chain]
