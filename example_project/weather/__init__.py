"""Weather observations imported from a CSV file, and their daily summaries."""

from __future__ import annotations
