"""Workbench page routers (one module per area of the UI)."""
