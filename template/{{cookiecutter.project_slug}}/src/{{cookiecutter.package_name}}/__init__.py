"""{{ cookiecutter.description }}: a FastAPI service wired to Keel through keel-client."""
