"""Reach rules: the YAML rule files rule authors edit, validated and matched.

- :mod:`rules.loader` -- ``load_rulebook(dir)``: every file validated, every problem
  reported with file and line (:class:`rules.errors.RuleSetError`).
- :mod:`rules.model` -- the immutable rule book: triggers, channel rules, templates.
- :mod:`rules.expr` -- the ``when`` expression language, compiled to durable-rules conditions.
- :mod:`rules.engine` -- ``RuleEngine``: matching with durable-rules (synchronous, one thread).
- :mod:`rules.reloader` -- ``RuleReloader``: hot reload by swapping one reference.
- :mod:`rules.cli` -- ``reach rules validate``; :mod:`rules.bench` -- a micro-benchmark.
- ``rules/examples/`` -- the example rules, documented for rule authors.
"""
