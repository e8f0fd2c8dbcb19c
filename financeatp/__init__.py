"""financeATP's HTTP layer, beside app.py (the request path): one concern a module.

operations  the contract's routes: one declarative row each, mapped to one api function
errors      the contract's error answers (ApiError and its JSON body)
values      a request's JSON values as the text PostgreSQL parses (shapes only)
routing     Starlette paths for the contract's paths
pgcall      one api function call at the protocol level (prepared, text results)
gate        requests' queue for the pool's connections, first come first served
openapi     the OpenAPI document, built from the operations and api.error_codes()
observe     JSON logs with masked keys, Prometheus metrics, the request-context middleware
maintenance the scheduled jobs (api.run_maintenance) every worker runs
pgcluster   PostgreSQL clusters on this machine: binaries, free ports, running as postgres
embedded    the embedded database of `make run` when DATABASE_URL is unset
serving     uvicorn: one worker in-process or a supervisor of several
protocol    uvicorn's HTTP protocol, answering what it refuses itself in the contract's shape
commands    `python app.py run|serve|migrate|api-key|stop`
"""
