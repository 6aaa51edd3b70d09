"""Remove the files of the Keel services the project does not use."""

from pathlib import Path

PACKAGE = Path("src") / "{{ cookiecutter.package_name }}"
FILES_OF = {
    "use_config": ["config.schema.json", "tests/test_config.py"],
    "use_secrets": ["tests/test_secrets.py"],
    "use_flags": [PACKAGE / "api" / "checkout.py", "tests/test_flags.py"],
    "use_audit": ["tests/test_audit.py"],
    "use_jobs": [PACKAGE / "worker.py", PACKAGE / "api" / "reports.py", "tests/test_jobs.py"],
    "use_notify": [PACKAGE / "api" / "notifications.py", "tests/test_notify.py"],
    "use_storage": [PACKAGE / "api" / "documents.py", "tests/test_storage.py"],
    "use_edge": ["tests/test_edge.py"],
    "use_auth": ["tests/test_auth.py"],
}
ENABLED = {
    "use_auth": "{{ cookiecutter.use_auth }}",
    "use_secrets": "{{ cookiecutter.use_secrets }}",
    "use_config": "{{ cookiecutter.use_config }}",
    "use_flags": "{{ cookiecutter.use_flags }}",
    "use_audit": "{{ cookiecutter.use_audit }}",
    "use_jobs": "{{ cookiecutter.use_jobs }}",
    "use_notify": "{{ cookiecutter.use_notify }}",
    "use_storage": "{{ cookiecutter.use_storage }}",
    "use_edge": "{{ cookiecutter.use_edge }}",
}

for option, files in FILES_OF.items():
    if ENABLED[option] != "True":
        for name in files:
            Path(name).unlink()
