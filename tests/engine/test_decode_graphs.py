"""decode_graphs: bucket sizes and the padded static inputs (on the CPU too);
graph replay against eager forward passes runs in test_llm_cuda.py."""
import torch

from mini_paged_attn.engine.decode_graphs import DecodeInputs, bucket_sizes


def test_bucket_sizes():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(8) == [1, 2, 4, 8]
    assert bucket_sizes(40) == [1, 2, 4, 8, 16, 32, 40]
    assert bucket_sizes(512)[-3:] == [480, 496, 512] and len(bucket_sizes(512)) == 36


def test_decode_inputs_pad_past_the_batch():
    inputs = DecodeInputs(16, torch.device("cpu"))
    inputs.fill(5, 8, [9, 8, 7, 6, 5], [10, 11, 12, 13, 14], torch.arange(100, 105), [4, 3, 2, 1, 0])
    assert inputs.field("input_ids", 8).tolist() == [9, 8, 7, 6, 5, 0, 0, 0]
    assert inputs.field("slot_mapping", 8).tolist() == [100, 101, 102, 103, 104, -1, -1, -1]
    assert inputs.field("context_lens", 8).tolist() == [11, 12, 13, 14, 15, 0, 0, 0]
    assert inputs.field("rows", 8).tolist() == [4, 3, 2, 1, 0, 0, 0, 0]
    # A smaller batch next: the rows it no longer uses become padding again.
    inputs.fill(2, 4, [1, 2], [0, 1], torch.tensor([7, 8]), [1, 2])
    assert inputs.field("context_lens", 4).tolist() == [1, 2, 0, 0]
