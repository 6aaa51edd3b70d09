"""Config service: versioned, validated, watched runtime configuration per environment."""
