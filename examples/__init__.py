"""Example applications built on fanwire as a library (each one runs with ``python -m server --app``)."""
