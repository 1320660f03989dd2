"""vLLM's prefix-cache hits and queries per replica, read from Ray's metrics endpoints.

Ray's vLLM stage drops each request's cached-token count, but with `log_engine_metrics` every
replica exports vLLM's counters `vllm:prefix_cache_hits` and `vllm:prefix_cache_queries`
(tokens) through Ray's metrics agent on its node, one series per worker process, labelled
with the served model name. The job gives its replicas a served name of their own, so after
scoring the series with that name are exactly this job's replicas, on a long-lived cluster
that runs other jobs too.
"""

from __future__ import annotations

import logging
import urllib.request
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

HITS = "ray_vllm_prefix_cache_hits_total"
QUERIES = "ray_vllm_prefix_cache_queries_total"
SCRAPE_TIMEOUT_S = 5.0

# (node address, worker id, engine index) -> {"hits": tokens, "queries": tokens}
Snapshot = dict[tuple[str, str, str], dict[str, float]]


@dataclass
class PrefixCacheReading:
    """Totals over this job's replicas, and one entry per replica."""

    hits: float
    queries: float
    replicas: list[dict[str, Any]]

    @property
    def hit_rate(self) -> float | None:
        return round(self.hits / self.queries, 6) if self.queries else None


def metrics_endpoints() -> list[tuple[str, str]]:
    """(node address, Prometheus URL) of every alive node of the connected Ray cluster. The
    driver's own node is read on loopback (its metrics agent listens on every interface)."""
    import ray

    here = ray.util.get_node_ip_address()
    endpoints = []
    for n in ray.nodes():
        if not (n.get("Alive") and n.get("MetricsExportPort")):
            continue
        node = n["NodeManagerAddress"]
        host = "127.0.0.1" if node == here else node
        endpoints.append((node, f"http://{host}:{n['MetricsExportPort']}/metrics"))
    return endpoints


def parse_prefix_cache(text: str, served_name: str, node: str) -> Snapshot:
    """Prefix-cache counters of the replicas serving `served_name` in one endpoint's text."""
    from prometheus_client.parser import text_string_to_metric_families

    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name not in (HITS, QUERIES) or sample.labels.get("model_name") != served_name:
                continue
            key = (node, sample.labels.get("WorkerId", ""), sample.labels.get("engine", ""))
            field = "hits" if sample.name == HITS else "queries"
            out.setdefault(key, {"hits": 0.0, "queries": 0.0})[field] = float(sample.value)
    return out


def read_prefix_cache(served_name: str) -> PrefixCacheReading | None:
    """Counters of the replicas serving `served_name`, summed over every node; None when no
    endpoint could be read or no replica reported."""
    series: Snapshot = {}
    for node, url in metrics_endpoints():
        try:
            with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as resp:
                text = resp.read().decode("utf-8", "replace")
        except OSError as e:
            log.warning("cannot read vLLM metrics from %s: %s", url, e)
            continue
        series.update(parse_prefix_cache(text, served_name, node))
    replicas = [
        {
            "node": node,
            "replica": worker[:12],
            "engine": engine,
            "hits": c["hits"],
            "queries": c["queries"],
            "hit_rate": round(c["hits"] / c["queries"], 6) if c["queries"] else None,
        }
        for (node, worker, engine), c in sorted(series.items())
    ]
    if not replicas:
        return None
    hits = sum(r["hits"] for r in replicas)
    queries = sum(r["queries"] for r in replicas)
    return PrefixCacheReading(hits=hits, queries=queries, replicas=replicas)
