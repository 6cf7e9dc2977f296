from mini_paged_attn import demo


def test_demo_serves_every_request_and_preempts_under_pressure(capsys):
    args = demo.parse_args(["--num-requests", "40", "--kv-memory-mb", "0.5", "--num-heads", "4",
                            "--num-kv-heads", "2", "--head-size", "32", "--prompt-len", "4", "60",
                            "--output-len", "2", "40", "--check-every", "3", "--dtype",
                            "float32", "--device", "cpu"])
    stats = demo.run(args)
    assert stats["requests"] == 40
    assert stats["checks"] > 0 and stats["max_err"] < 1e-4
    assert stats["preemptions"] > 0
    assert stats["used_token_slots"] <= stats["reserved_token_slots"]
    text = demo.summary(stats)
    assert "static max_len" in text and "preemptions" in text
