"""The storage service's HTTP API under ``/storage/v1``: buckets, objects, multipart uploads,
and the credential-less signed URLs and POST forms."""

from __future__ import annotations

from fastapi import APIRouter

from keel.storage.router import buckets, objects, signed, uploads


def build_router() -> APIRouter:
    router = APIRouter(tags=["storage"])
    for module in (buckets, objects, uploads, signed):
        router.include_router(module.router)
    return router
