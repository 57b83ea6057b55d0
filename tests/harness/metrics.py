"""Reading a replica's /metrics as Prometheus does: one scrape over HTTP, parsed with
prometheus_client's text parser (so a malformed exposition fails the test)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


class Scrape:
    """Every sample of one scrape, by sample name (e.g. grpc_server_handled_total)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[str, list[Sample]] = {}
        self.types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples.setdefault(sample.name, []).append(sample)

    def value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        """The sum of name's samples whose labels include labels (0 if none)."""
        wanted = dict(labels or {})
        return sum(
            s.value
            for s in self.samples.get(name, [])
            if all(s.labels.get(k) == v for k, v in wanted.items())
        )

    def label_values(self, name: str, label: str) -> set[str]:
        """The values label takes among name's samples."""
        return {s.labels[label] for s in self.samples.get(name, []) if label in s.labels}


def fetch(port: int, path: str = "/metrics", method: str = "GET") -> tuple[int, str]:
    """(HTTP status, body) of one request to 127.0.0.1:port."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def scrape_now(port: int) -> Scrape:
    status, body = fetch(port)
    assert status == 200, body
    return Scrape(body)


async def scrape(port: int) -> Scrape:
    """One scrape of the replica serving /metrics on port (off the event loop)."""
    return await asyncio.to_thread(scrape_now, port)
