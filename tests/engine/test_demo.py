from mini_paged_attn import demo


def test_demo_serves_the_workload_paged_and_static():
    args = demo.parse_args(["--num-requests", "24", "--prompt-len", "4", "40", "--output-len",
                            "2", "24", "--shared-prefix-len", "32", "--kv-memory-mb", "1.5",
                            "--multi-sample-fraction", "0.3", "--device", "cpu"])
    paged, static = demo.run(args)
    for stats in (paged, static):
        assert stats["requests/s"] > 0 and stats["output tokens/s"] > 0
    # Same memory: paging runs more requests at once and wastes less of it.
    assert paged["peak concurrent requests"] > static["peak concurrent requests"]
    assert paged["KV wasted"] < static["KV wasted"]
    assert paged["prefix hit rate"] > 0 and paged["blocks saved (peak)"] > 0
    assert static["prefix hit rate"] == 0 and static["preemptions"] == 0
    text = demo.summary(paged, static)
    assert "prefix-cache hit rate" in text and "preemptions" in text
