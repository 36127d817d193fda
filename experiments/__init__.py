"""Named experiments: one file each, registered in one explicit dict (a duplicate is an error)."""

from __future__ import annotations

REGISTRY: dict = {}
