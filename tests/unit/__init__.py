# A package, so that a unit module may share its base name with an end-to-end one in tests/
# (tests/unit/test_warm.py and tests/test_warm_cli.py both import as distinct modules) and so
# that this directory's conftest is not the `conftest` the end-to-end modules import.
