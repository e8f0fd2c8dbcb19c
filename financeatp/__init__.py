"""financeATP's HTTP layer, beside app.py (the request path): one concern a module.

operations  the contract's routes: one declarative row each, mapped to one api function
openapi     the OpenAPI document, built from the operations and api.error_codes()
observe     JSON logs with masked keys, Prometheus metrics, the request-context middleware
pgcluster   PostgreSQL clusters on this machine: binaries, free ports, running as postgres
embedded    the embedded database of `make run` when DATABASE_URL is unset
serving     uvicorn: one worker in-process or a supervisor of several
commands    `python app.py run|serve|migrate|api-key`
"""
