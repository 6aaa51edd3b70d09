"""Financial transactions in the audit log, on SQLite and PostgreSQL: the Python recorder
(``keel.core.audit.record_transaction``), ``POST /audit/v1/transactions`` and the SDK's
``record_transaction``. Amounts are stored exactly as their decimal text, floats are refused
everywhere, currencies are ISO 4217 with their decimal places, and a transaction is recorded
once per id, with the unit of work that made it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from fastapi import FastAPI

from keel.audit.service import StoredEvent
from keel.core.audit import (
    TRANSACTION_ACTION,
    Actor,
    builtin_action,
    check_currency,
    record_transaction,
)
from keel_client.audit import (
    AuditAPI,
    AuditClient,
    EventActor,
    SyncAuditClient,
    TransactionFields,
    build_transaction,
    canonical_json,
    check_amount,
    currency_minor_units,
    event_leaf_hash,
)
from keel_client.http import BearerToken, ClientError, RetryPolicy
from tests.support.apps import unit_of_work
from tests.support.audit import audit_events
from tests.support.tenants import TenantAdmin

EXACT_AMOUNTS = ["0.10", "1234567890123.45", "-5.00", "0", "1234.5"]
WHEN = datetime(2026, 3, 14, 9, 26, 53, 589793, tzinfo=timezone(timedelta(hours=2)))
WHEN_STORED = "2026-03-14T07:26:53.589793Z"


def new_transaction_id() -> str:
    return f"tx-{uuid.uuid4().hex[:12]}"


def python_fields(**changes: Any) -> dict[str, Any]:
    """Keyword arguments of ``record_transaction`` (and the SDK's), changed by ``changes``."""
    return {
        "transaction_id": new_transaction_id(),
        "amount": Decimal("1234.50"),
        "currency": "EUR",
        "from_account": "ops-eur",
        "to_account": "supplier-981",
        "reason": "invoice INV-118",
        "user": "u-42",
        "authorising_chain": ["u-7", "u-9"],
        "time": WHEN,
        **changes,
    }


def wire_body(**changes: Any) -> dict[str, Any]:
    """A body of ``POST /audit/v1/transactions``, changed by ``changes``."""
    return {
        "transaction_id": new_transaction_id(),
        "amount": "1234.50",
        "currency": "EUR",
        "from_account": "ops-eur",
        "to_account": "supplier-981",
        "reason": "invoice INV-118",
        "user": "u-42",
        "authorising_chain": ["u-7", "u-9"],
        "time": "2026-03-14T09:26:53.589793+02:00",
        **changes,
    }


async def transactions(app: FastAPI, tenant_id: str) -> list[StoredEvent]:
    return await audit_events(app, tenant_id, action_prefix=TRANSACTION_ACTION)


async def record(app: FastAPI, tenant_id: str, **changes: Any) -> dict[str, Any]:
    async with unit_of_work(app) as session:
        return record_transaction(session, tenant_id=tenant_id, **python_fields(**changes))


def assert_exactly_stored(event: StoredEvent, amount: str) -> None:
    """The stored document holds the amount as that very string: its canonical bytes (which
    the leaf hash commits to) carry it quoted, never as a JSON number."""
    assert event.document is not None
    assert event.data["amount"] == amount
    assert event.leaf_hash == event_leaf_hash(event.document)
    assert f'"amount":"{amount}"'.encode() in canonical_json(event.document)


# --- the policy, pure ---------------------------------------------------------------------


class TestCheckAmount:
    @pytest.mark.parametrize(
        "text", [*EXACT_AMOUNTS, "-0.01", "99999999999999999999999999999999.99"]
    )
    def test_the_text_is_the_decimal_as_written(self, text: str) -> None:
        assert check_amount(Decimal(text), "EUR") == text

    def test_an_exponent_is_written_out(self) -> None:
        assert check_amount(Decimal("1E+3"), "JPY") == "1000"

    @pytest.mark.parametrize("amount", [0.1, 12.5, 1234, "12.50", None])
    def test_anything_but_a_decimal_is_a_type_error(self, amount: object) -> None:
        with pytest.raises(TypeError, match=r"decimal\.Decimal"):
            check_amount(amount, "EUR")

    def test_the_float_refusal_says_what_to_do(self) -> None:
        with pytest.raises(TypeError, match=r"not a float.*Decimal\('0.10'\)"):
            check_amount(0.1, "EUR")

    @pytest.mark.parametrize("amount", ["NaN", "-NaN", "sNaN", "Infinity", "-Infinity"])
    def test_non_finite_amounts_are_refused(self, amount: str) -> None:
        with pytest.raises(ValueError, match="finite"):
            check_amount(Decimal(amount), "EUR")

    @pytest.mark.parametrize(
        ("amount", "currency"),
        [("1.5", "JPY"), ("100.0", "KRW"), ("12.345", "EUR"), ("12.300", "USD"), ("1.0005", "KWD")],
    )
    def test_more_decimal_places_than_the_currency_has_are_refused(
        self, amount: str, currency: str
    ) -> None:
        with pytest.raises(ValueError, match=f"decimal places than {currency}"):
            check_amount(Decimal(amount), currency)

    def test_codes_without_a_minor_unit_take_any_scale(self) -> None:
        assert check_amount(Decimal("1.123456"), "XAU") == "1.123456"

    def test_more_than_34_digits_are_refused(self) -> None:
        with pytest.raises(ValueError, match="34 digits"):
            check_amount(Decimal("1" * 35), "JPY")
        with pytest.raises(ValueError, match="34 digits"):
            check_amount(Decimal("1E+40"), "JPY")

    def test_minor_units_follow_iso_4217(self) -> None:
        assert [currency_minor_units(code) for code in ("JPY", "EUR", "KWD", "CLF", "XAU")] == [
            0, 2, 3, 4, None,
        ]  # fmt: skip


class TestCheckCurrency:
    @pytest.mark.parametrize("code", ["EUR", "USD", "JPY", "KWD", "CHF", "XTS"])
    def test_iso_4217_codes_pass(self, code: str) -> None:
        assert check_currency(code) == code

    @pytest.mark.parametrize("code", ["XYZ", "usd", "Eur", "EURO", "EU", "", "USD\n"])
    def test_anything_else_is_refused(self, code: str) -> None:
        with pytest.raises(ValueError, match="ISO 4217"):
            check_currency(code)

    def test_the_action_is_keels_own_finance_action(self) -> None:
        spec = builtin_action(TRANSACTION_ACTION)
        assert spec is not None
        assert (spec.category, spec.sensitivity) == ("finance", "confidential")


# --- keel.core.audit.record_transaction ---------------------------------------------------


class TestRecordTransaction:
    async def test_amounts_are_stored_exactly(self, app: FastAPI, admin: TenantAdmin) -> None:
        for amount in EXACT_AMOUNTS:
            await record(app, admin.tenant_id, amount=Decimal(amount))
        events = await transactions(app, admin.tenant_id)
        stored = [event.data["amount"] for event in reversed(events)]
        assert stored == EXACT_AMOUNTS
        for event, amount in zip(reversed(events), EXACT_AMOUNTS, strict=True):
            assert_exactly_stored(event, amount)
            assert Decimal(event.data["amount"]).as_tuple() == Decimal(amount).as_tuple()

    async def test_the_event_holds_the_whole_transaction(
        self, app: FastAPI, admin: TenantAdmin
    ) -> None:
        fields = python_fields(
            user=Actor("user", "u-42", display="Alice"),
            actor=Actor("service_account", "sa-payments", ip_address="10.0.0.9"),
        )
        async with unit_of_work(app) as session:
            record_transaction(session, tenant_id=admin.tenant_id, **fields)
        (event,) = await transactions(app, admin.tenant_id)
        assert event.event_id == f"txn:{fields['transaction_id']}"
        assert event.document is not None
        assert event.document["sensitivity"] == "confidential"
        assert event.time == WHEN_STORED  # the transaction's time, in UTC
        assert event.reason == "invoice INV-118"
        assert event.target == {"type": "transaction", "id": fields["transaction_id"]}
        assert event.actor == {"type": "service_account", "id": "sa-payments", "ip": "10.0.0.9"}
        assert event.data == {
            "transaction_id": fields["transaction_id"],
            "amount": "1234.50",
            "currency": "EUR",
            "from_account": "ops-eur",
            "to_account": "supplier-981",
            "user": {"type": "user", "id": "u-42", "display": "Alice"},
            "authorising_chain": ["u-7", "u-9"],
        }

    async def test_the_user_is_the_actor_unless_another_is_given(
        self, app: FastAPI, admin: TenantAdmin
    ) -> None:
        await record(app, admin.tenant_id, user="u-42")
        (event,) = await transactions(app, admin.tenant_id)
        assert event.actor == {"type": "user", "id": "u-42"}

    @pytest.mark.parametrize(
        ("changes", "error", "fragment"),
        [
            ({"amount": 0.1}, TypeError, "not a float"),
            ({"amount": 1234}, TypeError, "decimal.Decimal"),
            ({"amount": Decimal("NaN")}, ValueError, "finite"),
            ({"amount": Decimal("Infinity")}, ValueError, "finite"),
            ({"currency": "XYZ"}, ValueError, "ISO 4217"),
            ({"currency": "usd"}, ValueError, "ISO 4217"),
            ({"currency": "JPY", "amount": Decimal("100.5")}, ValueError, "decimal places"),
            ({"time": datetime(2026, 3, 14, 9, 26)}, ValueError, "timezone-aware"),
            ({"authorising_chain": "u-7"}, TypeError, "sequence of ids"),
            ({"transaction_id": "has space"}, ValueError, "transaction id"),
            ({"from_account": ""}, ValueError, "from_account"),
            ({"user": Actor("user")}, ValueError, "needs an id"),
        ],
    )
    async def test_a_refused_transaction_records_nothing(
        self,
        app: FastAPI,
        admin: TenantAdmin,
        changes: dict[str, Any],
        error: type[Exception],
        fragment: str,
    ) -> None:
        async with unit_of_work(app) as session:
            with pytest.raises(error, match=fragment):
                record_transaction(session, tenant_id=admin.tenant_id, **python_fields(**changes))
        assert await transactions(app, admin.tenant_id) == []

    async def test_a_rolled_back_unit_of_work_leaves_no_event(
        self, app: FastAPI, admin: TenantAdmin
    ) -> None:
        kept, undone = new_transaction_id(), new_transaction_id()

        async def pay_then_fail() -> None:
            async with unit_of_work(app) as session:
                record_transaction(
                    session, tenant_id=admin.tenant_id, **python_fields(transaction_id=undone)
                )
                raise RuntimeError("payment failed")

        with pytest.raises(RuntimeError, match="payment failed"):
            await pay_then_fail()
        await record(app, admin.tenant_id, transaction_id=kept)
        events = await transactions(app, admin.tenant_id)
        assert [event.target_id for event in events] == [kept]

    async def test_recording_a_transaction_again_keeps_one_event(
        self, app: FastAPI, admin: TenantAdmin
    ) -> None:
        transaction_id = new_transaction_id()
        await record(app, admin.tenant_id, transaction_id=transaction_id)
        await transactions(app, admin.tenant_id)  # sequenced
        await record(app, admin.tenant_id, transaction_id=transaction_id)
        events = await transactions(app, admin.tenant_id)
        assert [event.event_id for event in events] == [f"txn:{transaction_id}"]


# --- POST /audit/v1/transactions ----------------------------------------------------------


class TestTransactionsEndpoint:
    async def post(
        self, client: httpx.AsyncClient, admin: TenantAdmin, body: dict[str, Any]
    ) -> httpx.Response:
        return await client.post("/audit/v1/transactions", headers=admin.headers, json=body)

    async def test_amounts_are_stored_exactly_and_the_receipt_verifies(
        self, client: httpx.AsyncClient, admin: TenantAdmin
    ) -> None:
        for amount in EXACT_AMOUNTS:
            body = wire_body(amount=amount)
            response = await self.post(client, admin, body)
            assert response.status_code == 201, response.text
            receipt = response.json()
            assert receipt["id"] == f"txn:{body['transaction_id']}"
            assert receipt["tree_head"]["tree_size"] >= receipt["leaf_index"] + 1
            stored = await client.get(f"/audit/v1/events/{receipt['id']}", headers=admin.headers)
            document = {
                k: v for k, v in stored.json().items() if k not in ("leaf_index", "leaf_hash")
            }
            assert document["data"]["amount"] == amount
            assert document["time"] == WHEN_STORED
            assert stored.json()["leaf_hash"] == receipt["leaf_hash"]
            assert f'"amount":"{amount}"'.encode() in canonical_json(document)

    async def test_the_document_is_the_one_the_python_recorder_makes(
        self, app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
    ) -> None:
        body = wire_body()
        assert (await self.post(client, admin, body)).status_code == 201
        recorded = await record(app, admin.tenant_id)
        events = {event.event_id: event for event in await transactions(app, admin.tenant_id)}
        over_http = events[f"txn:{body['transaction_id']}"]
        in_python = events[recorded["id"]]

        def shape(event: StoredEvent) -> dict[str, Any]:
            document = dict(event.document or {})
            for varying in ("id", "request_id", "trace_id", "target"):
                document.pop(varying, None)
            document["data"] = {**document["data"], "transaction_id": None}
            return document

        assert shape(over_http) == shape(in_python)

    @pytest.mark.parametrize("amount", [1234.5, 1234, 0.1, True])
    async def test_a_json_number_amount_is_refused(
        self, app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin, amount: object
    ) -> None:
        response = await self.post(client, admin, wire_body(amount=amount))
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        (error,) = response.json()["errors"]
        assert error["location"] == ["body", "amount"]
        assert "send the amount as a JSON string" in error["message"]
        assert await transactions(app, admin.tenant_id) == []

    @pytest.mark.parametrize(
        ("changes", "fragment"),
        [
            ({"currency": "XYZ"}, "ISO 4217"),
            ({"currency": "usd"}, "ISO 4217"),
            ({"currency": "JPY", "amount": "1500.5"}, "more decimal places than JPY"),
            ({"currency": "EUR", "amount": "1.005"}, "more decimal places than EUR"),
            ({"amount": "NaN"}, "plain decimal text"),
            ({"amount": "Infinity"}, "plain decimal text"),
            ({"amount": "1e3"}, "plain decimal text"),
            ({"amount": "01.50"}, "plain decimal text"),
            ({"amount": "+1.50"}, "plain decimal text"),
            ({"amount": " 1.50"}, "plain decimal text"),
            ({"time": "2026-03-14T09:26:53"}, "offset"),
            ({"time": "0001-01-01T00:00:00+01:00"}, "out of range"),  # once a 500 (fuzzing)
            ({"authorising_chain": "u-7"}, "list"),
            ({"authorising_chain": [""]}, "authorising_chain"),
            ({"transaction_id": "x" * 61}, "transaction_id"),
            ({"surprise": 1}, "surprise"),
        ],
    )
    async def test_a_malformed_transaction_is_refused_and_nothing_is_stored(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        admin: TenantAdmin,
        changes: dict[str, Any],
        fragment: str,
    ) -> None:
        response = await self.post(client, admin, wire_body(**changes))
        assert response.status_code == 422, response.text
        assert fragment in response.text
        assert await transactions(app, admin.tenant_id) == []

    async def test_a_resent_transaction_answers_its_first_receipt(
        self, app: FastAPI, client: httpx.AsyncClient, admin: TenantAdmin
    ) -> None:
        body = wire_body()
        first = await self.post(client, admin, body)
        again = await self.post(client, admin, body)
        assert first.status_code == again.status_code == 201
        assert again.json()["leaf_index"] == first.json()["leaf_index"]
        assert again.json()["leaf_hash"] == first.json()["leaf_hash"]

        changed = await self.post(client, admin, {**body, "amount": "1234.51"})
        assert changed.status_code == 409
        assert len(await transactions(app, admin.tenant_id)) == 1

    async def test_the_events_endpoints_cannot_record_the_action(
        self, client: httpx.AsyncClient, admin: TenantAdmin
    ) -> None:
        forged = await client.post(
            "/audit/v1/events",
            headers=admin.headers,
            json={"action": TRANSACTION_ACTION, "data": {"amount": 12.5}},
        )
        assert forged.status_code == 422
        assert "Keel's own action" in forged.json()["detail"]

    async def test_recording_needs_the_write_permission(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/audit/v1/transactions", json=wire_body())
        assert response.status_code == 401

    async def test_the_catalogue_lists_the_action(
        self, client: httpx.AsyncClient, admin: TenantAdmin
    ) -> None:
        catalogue = (await client.get("/audit/v1/actions", headers=admin.headers)).json()
        (entry,) = [action for action in catalogue if action["name"] == TRANSACTION_ACTION]
        assert entry["builtin"]
        assert entry["category"] == "finance"


# --- the SDK ------------------------------------------------------------------------------


class _LoseFirstAnswer(httpx.AsyncBaseTransport):
    """Keel stores the first request, then the connection drops before its answer."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        response = await self.inner.handle_async_request(request)
        if self.requests == 1:
            await response.aread()
            raise httpx.ReadError("connection reset", request=request)
        return response


@pytest.fixture
async def audit_api(app: FastAPI, admin: TenantAdmin) -> AsyncIterator[AuditAPI]:
    api = AuditAPI(
        "http://keel.test",
        auth=BearerToken(admin.api_key),
        transport=httpx.ASGITransport(app=app),
    )
    async with api:
        yield api


def sdk_fields(**changes: Any) -> TransactionFields:
    fields = {
        "transaction_id": new_transaction_id(),
        "amount": Decimal("1234.50"),
        "currency": "EUR",
        "from_account": "ops-eur",
        "to_account": "supplier-981",
        "reason": "invoice INV-118",
        "user": EventActor("user", "u-42", display="Alice"),
        "authorising_chain": ["u-7", "u-9"],
        "time": WHEN,
        **changes,
    }
    return cast(TransactionFields, fields)


class TestSDKRecordTransaction:
    async def test_amounts_are_stored_exactly(
        self, app: FastAPI, audit_api: AuditAPI, admin: TenantAdmin, tmp_path: Path
    ) -> None:
        async with AuditClient(api=audit_api, spool_dir=tmp_path) as audit:
            for amount in EXACT_AMOUNTS:
                fields = sdk_fields(amount=Decimal(amount))
                receipt = await audit.record_transaction(**fields)
                assert receipt.id == f"txn:{fields['transaction_id']}"
                assert receipt.signed_head().tree_size > receipt.leaf_index
        events = await transactions(app, admin.tenant_id)
        for event, amount in zip(reversed(events), EXACT_AMOUNTS, strict=True):
            assert_exactly_stored(event, amount)
            assert event.data["user"] == {"type": "user", "id": "u-42", "display": "Alice"}

    @pytest.mark.parametrize("amount", [0.1, 1234.5, 12])
    async def test_a_float_is_refused_before_anything_is_sent(
        self, app: FastAPI, audit_api: AuditAPI, admin: TenantAdmin, amount: Any
    ) -> None:
        with pytest.raises(TypeError, match=r"decimal\.Decimal"):
            await audit_api.record_transaction(**sdk_fields(amount=amount))
        with pytest.raises(TypeError, match=r"decimal\.Decimal"):
            build_transaction(**sdk_fields(amount=amount))
        assert await transactions(app, admin.tenant_id) == []

    def test_the_sync_client_refuses_a_float_on_the_calling_thread(self, tmp_path: Path) -> None:
        client = AuditClient("http://keel.invalid", auth="unused", spool_dir=tmp_path)
        with SyncAuditClient(client) as audit, pytest.raises(TypeError, match="not a float"):
            audit.record_transaction(**sdk_fields(amount=0.1))

    @pytest.mark.parametrize(
        ("changes", "fragment"),
        [
            ({"currency": "usd"}, "ISO 4217"),
            ({"currency": "JPY", "amount": Decimal("1.5")}, "decimal places"),
            ({"amount": Decimal("NaN")}, "finite"),
            ({"time": datetime(2026, 3, 14)}, "timezone-aware"),
        ],
    )
    def test_what_keel_would_refuse_fails_at_the_call_site(
        self, changes: dict[str, Any], fragment: str
    ) -> None:
        with pytest.raises(ValueError, match=fragment):
            build_transaction(**sdk_fields(**changes))

    async def test_an_unknown_currency_is_keels_422(self, audit_api: AuditAPI) -> None:
        with pytest.raises(ClientError) as refused:
            await audit_api.record_transaction(**sdk_fields(currency="XYZ"))
        assert refused.value.status == 422

    async def test_a_lost_answer_is_retried_and_recorded_once(
        self, app: FastAPI, admin: TenantAdmin
    ) -> None:
        transport = _LoseFirstAnswer(httpx.ASGITransport(app=app))
        async with AuditAPI(
            "http://keel.test",
            auth=BearerToken(admin.api_key),
            transport=transport,
            retry=RetryPolicy(backoff_base=0.01),
        ) as api:
            fields = sdk_fields()
            receipt = await api.record_transaction(**fields)
        assert transport.requests == 2
        (event,) = await transactions(app, admin.tenant_id)
        assert (event.event_id, event.leaf_index) == (receipt.id, receipt.leaf_index)

    async def test_the_time_defaults_to_now(self, audit_api: AuditAPI) -> None:
        fields = sdk_fields()
        del fields["time"]
        before = datetime.now(UTC)
        body = build_transaction(**fields)
        assert datetime.fromisoformat(body["time"]) >= before.replace(microsecond=0)
        receipt = await audit_api.record_transaction(**fields)
        assert receipt.id.startswith("txn:")
