"""What several test files share: generated data, the real command line, independent formulas, the
settings and storage of the official comparisons. Importable as ``helpers`` (pyproject's pytest
``pythonpath`` puts tests/ on the path)."""
