"""End-to-end tests: real Ray, real MLflow, the real CLI (marked slow). A package, so that its
modules share the helpers of conftest.py by a relative import."""
