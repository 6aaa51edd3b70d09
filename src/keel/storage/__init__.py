"""The storage service (issue 21): buckets with policies, and objects that pass a pipeline
(size, type by magic bytes, a clamd scan) before anyone can read them, on local disk or any
S3-compatible store, encrypted at rest."""
