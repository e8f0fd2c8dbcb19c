"""README.md's excerpt of the Next.js client is the client: every line of its code block is a
line of examples/nextjs/src/lib/client.ts, in the same order."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_readme_client_excerpt_is_the_file() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("**The client** (`examples/nextjs/src/lib/client.ts`", 1)[1]
    block = re.search(r"^```ts\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert block, "README.md shows no client code"
    source = (ROOT / "examples/nextjs/src/lib/client.ts").read_text().splitlines()
    position = 0
    for line in (line for line in block.group(1).splitlines() if line.strip()):
        assert line in source[position:], f"not in client.ts (or out of order): {line!r}"
        position = source.index(line, position) + 1
