"""The storage service's logic (no HTTP types): buckets and quotas, the ingest pipeline,
objects and their versions, multipart uploads, presigning, and the lifecycle sweep."""
