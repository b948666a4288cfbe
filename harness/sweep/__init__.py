"""Parity sweeps: a TOML spec of ``generate`` flags (values or lists, crossed) run as many
``generate --parity`` cases, locally or on Ray, summarised in ``results.jsonl`` and ``index.html``.

Modules: ``spec`` (spec → cases and their ids), ``worker`` (one case and its record), ``local``
and ``ray_executor`` (where cases run), ``results`` (the JSONL file), ``index`` (the page),
``cli`` (``python -m harness.sweep``).
"""
