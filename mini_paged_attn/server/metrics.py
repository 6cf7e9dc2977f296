"""The server's Prometheus metrics (prometheus-client, one registry per app):
requests running and waiting, KV blocks used and total, the prefix cache's hit
rate, prompt and generated tokens, and time-to-first-token and
time-per-output-token histograms."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self, server):
        engine = server.engine
        self.registry = r = CollectorRegistry()
        Gauge("mpa_requests_running", "Sequences running", registry=r).set_function(
            lambda: len(engine.scheduler.running))
        Gauge("mpa_requests_waiting", "Sequences waiting", registry=r).set_function(
            lambda: len(engine.scheduler.waiting))
        Gauge("mpa_kv_blocks_used", "KV-cache blocks in use", registry=r).set_function(
            lambda: engine.kv_cache.num_used_blocks)
        Gauge("mpa_kv_blocks_total", "KV-cache blocks", registry=r).set_function(
            lambda: engine.kv_cache.num_blocks)

        def hit_rate():
            stats = getattr(getattr(engine.kv_cache, "block_manager", None),
                            "prefix_cache_stats", None)
            asked = stats.hits + stats.misses if stats is not None else 0
            return stats.hits / asked if asked else 0.0

        Gauge("mpa_prefix_cache_hit_rate", "Prefix-cache hits over blocks asked for",
              registry=r).set_function(hit_rate)
        self.prompt_tokens = Counter("mpa_prompt_tokens", "Prompt tokens of finished requests",
                                     registry=r)
        self.generation_tokens = Counter("mpa_generation_tokens",
                                         "Tokens generated for finished requests", registry=r)
        buckets = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
        self.ttft = Histogram("mpa_time_to_first_token_seconds", "Time to first token",
                              buckets=buckets, registry=r)
        self.tpot = Histogram("mpa_time_per_output_token_seconds",
                              "Time per output token after the first", buckets=buckets,
                              registry=r)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def finished(self, out, seconds: float) -> None:
        """A request's last output and its time from submission."""
        if out is None:
            return
        generated = sum(len(c.token_ids) for c in out.outputs)
        self.prompt_tokens.inc(len(out.prompt_token_ids))
        self.generation_tokens.inc(generated)
        if generated > 1:
            self.tpot.observe(seconds / generated)

    def render(self) -> bytes:
        return generate_latest(self.registry)
