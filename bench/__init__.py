"""fanwire benchmark harness: `python -m bench run`, `python -m bench charts`."""
