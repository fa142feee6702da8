"""The core every stage stands on: settings, errors, records, the database and the audit log.

Imports nothing above it (an import-linter contract in pyproject.toml).
"""
