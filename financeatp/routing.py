"""Starlette paths for the contract's paths."""

from __future__ import annotations

import re

from starlette.convertors import StringConvertor, register_url_convertor


class NotSiblingConvertor(StringConvertor):
    """A path parameter that is not one of the literal segments beside it (POST /transfers/batch
    beside GET /transfers/{transfer_id}): GET /transfers/batch is then 405, not a malformed id."""

    regex = "[^/]+"


def routing_path(path: str, paths: list[str]) -> str:
    """The path for Starlette: a parameter with literal siblings gets NotSiblingConvertor."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if not part.startswith("{"):
            continue
        siblings = {
            other[i]
            for other in (p.split("/") for p in paths)
            if len(other) > i and other[:i] == parts[:i] and not other[i].startswith("{")
        }
        if siblings:
            name = f"not_{'_'.join(sorted(siblings))}"
            convertor = NotSiblingConvertor()
            convertor.regex = f"(?!(?:{'|'.join(map(re.escape, sorted(siblings)))})$)[^/]+"
            register_url_convertor(name, convertor)
            parts[i] = f"{part[:-1]}:{name}}}"
    return "/".join(parts)
