"""Gateway service: routes and per-route edge policies stored versioned, enforced by the
built-in proxy (``keel.gateway.proxy``) and by services' SDK middleware."""
