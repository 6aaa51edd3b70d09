# The version of the keel distribution: pyproject.toml's [project] version, repeated here so
# that `import keel` (every `keel` command) need not read the installed metadata, which costs
# importlib.metadata, zipfile and email (issue 15). tests/test_cli.py holds the two equal.
__version__ = "0.1.0"
