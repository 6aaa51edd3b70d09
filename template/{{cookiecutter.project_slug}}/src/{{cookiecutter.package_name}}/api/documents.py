"""Files in Keel's storage: streamed in and out, typed from their bytes by Keel, encrypted at
rest (keel.toml's [buckets.{{ cookiecutter.project_slug }}-documents])."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel

from {{ cookiecutter.package_name }}.api.deps import {% if cookiecutter.use_auth %}Caller, {% endif %}KeelClient

router = APIRouter(tags=["documents"])

BUCKET = "{{ cookiecutter.project_slug }}-documents"
Name = Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class Document(BaseModel):
    name: str
    size: int
    content_type: str
    sha256: str


@router.put("/documents/{name}", status_code=201, response_model=Document)
async def upload_document(
    request: Request, keel: KeelClient{% if cookiecutter.use_auth %}, caller: Caller{% endif %}, name: str = Name
) -> Document:
    """Store the request's body as ``name`` (streamed to Keel, never held whole)."""
    info = await keel.storage.upload(
        BUCKET,
        name,
        request.stream(),
        content_type=request.headers.get("content-type", "application/octet-stream"),
    )
    return Document(name=name, size=info.size, content_type=info.content_type, sha256=info.etag)


@router.get("/documents/{name}")
async def download_document(
    keel: KeelClient{% if cookiecutter.use_auth %}, caller: Caller{% endif %}, name: str = Name
) -> Response:
    """The document's bytes."""
    data = await keel.storage.download(BUCKET, name)
    head = await keel.storage.head(BUCKET, name)
    return Response(data, media_type=head.content_type)
