"""Background work on Keel's queue: the route enqueues, ``worker.py`` runs it."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from {{ cookiecutter.package_name }}.api.deps import {% if cookiecutter.use_auth %}Caller, {% endif %}KeelClient
from {{ cookiecutter.package_name }}.worker import BUILD_REPORT, QUEUE

router = APIRouter(tags=["reports"])


class ReportRequest(BaseModel):
    day: str = Field(pattern=r"^\d{4}-\d{2}-\d{2}$", examples=["2026-12-06"])


class ReportJob(BaseModel):
    job_id: str | None
    state: str


@router.post("/reports", status_code=202, response_model=ReportJob)
async def request_report(
    body: ReportRequest,
    keel: KeelClient,
{%- if cookiecutter.use_auth %}
    caller: Caller,
{%- endif %}
) -> ReportJob:
    """Build the day's report in the background (one job per day: a repeat is the same job)."""
    ref = await keel.jobs.enqueue(
        BUILD_REPORT, body.day, queue=QUEUE, unique_key=f"report-{body.day}"
    )
    return ReportJob(job_id=ref.id, state=ref.state)
