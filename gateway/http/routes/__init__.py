"""The routes, one module per endpoint family (independent of each other: import-linter)."""
