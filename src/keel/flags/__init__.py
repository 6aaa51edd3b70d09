"""The feature flags service: ``/flags/v1/...``."""
