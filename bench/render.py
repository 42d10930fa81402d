"""In-app rendering cost per recipient: a template of plain lookups, filled in directly,
against the same template with a filter (which runs the sandboxed Jinja template).

    .venv/bin/python bench/render.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from tidings.core.templates import Channel, Content, Renderer, TemplateVersion

PLAIN = {"title": "{{ payload.headline }}", "body": "Hello {{ subscriber.id }}, {{ payload.text }}"}
JINJA = {
    "title": "{{ payload.headline | trim }}",
    "body": "Hello {{ subscriber.id | trim }}, {{ payload.text | trim }}",
}


def per_render(fields: dict[str, str], n: int = 20_000) -> float:
    renderer = Renderer()
    version = TemplateVersion(
        template="t",
        version=1,
        channel=Channel.IN_APP,
        locales={"en": Content(fields)},
        default_locale="en",
    )
    payload = {"headline": "Release 2.0", "text": "it is out"}
    start = time.perf_counter()
    for i in range(n):
        renderer.render(version, payload, locale="en", recipient={"id": f"s{i:07d}"}, checked=True)
    return (time.perf_counter() - start) / n * 1e6


if __name__ == "__main__":
    plain, jinja = (
        min(per_render(PLAIN) for _ in range(3)),
        min(per_render(JINJA) for _ in range(3)),
    )
    print("| template | us per in-app rendering |\n|---|---|")
    print(f"| plain lookups (filled in directly) | {plain:.1f} |")
    print(f"| the same with a filter (Jinja) | {jinja:.1f} |")
