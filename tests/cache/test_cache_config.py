import pytest
import torch

import mini_paged_attn as mpa
from mini_paged_attn import CacheConfig, PagedKVCacheConfig, StaticKVCacheConfig
from mini_paged_attn.cache.sizing import (kv_bytes_per_token, num_blocks_for,
                                          resolve_kv_cache_dtype)


def test_cache_config_is_abstract():
    with pytest.raises(TypeError):
        CacheConfig()


def test_static_defaults_and_accessors():
    c = StaticKVCacheConfig()
    assert c.max_batch_size() == 1 and c.max_cache_len() == 2**64 - 1
    c = StaticKVCacheConfig(32, 8192)
    assert (c.max_batch_size(), c.max_cache_len()) == (32, 8192)
    c = StaticKVCacheConfig(max_cache_len=4096, max_batch_size=2)
    assert (c.max_batch_size(), c.max_cache_len()) == (2, 4096)
    assert isinstance(c, CacheConfig)
    assert repr(c).startswith("<StaticKVCacheConfig") and "4096" in repr(c)


def test_paged_defaults_and_accessors():
    c = PagedKVCacheConfig(4 * 1024**3)
    assert c.max_kv_memory_bytes() == 4294967296 and c.block_size() == 16
    c = PagedKVCacheConfig(max_kv_memory_bytes=2048, block_size=32)
    assert (c.max_kv_memory_bytes(), c.block_size()) == (2048, 32)
    assert isinstance(c, CacheConfig)
    assert repr(c).startswith("<PagedKVCacheConfig") and "2048" in repr(c) and "32" in repr(c)


@pytest.mark.parametrize("kwargs,name", [
    (dict(max_batch_size=0), "max_batch_size"),
    (dict(max_batch_size=-1), "max_batch_size"),
    (dict(max_cache_len=-5), "max_cache_len"),
    (dict(max_cache_len=2**64), "max_cache_len"),
])
def test_static_rejects_bad_values(kwargs, name):
    with pytest.raises(ValueError, match=name):
        StaticKVCacheConfig(**kwargs)


@pytest.mark.parametrize("args,name", [
    ((0,), "max_kv_memory_bytes"), ((-1,), "max_kv_memory_bytes"),
    ((1024, 0), "block_size"), ((1024, -16), "block_size"),
])
def test_paged_rejects_bad_values(args, name):
    with pytest.raises(ValueError, match=name):
        PagedKVCacheConfig(*args)


def test_non_int_is_a_type_error():
    with pytest.raises(TypeError, match="max_kv_memory_bytes"):
        PagedKVCacheConfig(1.5)
    with pytest.raises(TypeError):
        PagedKVCacheConfig()


def test_exported_from_package():
    assert mpa.PagedKVCacheConfig is PagedKVCacheConfig
    assert mpa.StaticKVCacheConfig is StaticKVCacheConfig


def test_num_blocks_from_byte_budget():
    c = PagedKVCacheConfig(1 << 20, block_size=16)
    per_token = kv_bytes_per_token(8, 128, torch.float16, num_layers=2)
    assert per_token == 2 * 2 * 8 * 128 * 2
    assert num_blocks_for(c, 8, 128, torch.float16, num_layers=2) == (1 << 20) // (16 * per_token)
    with pytest.raises(ValueError, match="smaller than one block"):
        num_blocks_for(PagedKVCacheConfig(100), 8, 128, torch.float16)


def test_fp8_cache_fits_twice_the_blocks():
    c = PagedKVCacheConfig(1 << 20, block_size=16)
    for fp8 in (torch.float8_e4m3fn, torch.float8_e5m2):
        assert kv_bytes_per_token(8, 128, fp8, 2) * 2 == kv_bytes_per_token(8, 128, torch.bfloat16, 2)
        assert num_blocks_for(c, 8, 128, fp8, 2) == 2 * num_blocks_for(c, 8, 128, torch.bfloat16, 2)


def test_kv_cache_dtype_names():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_kv_cache_dtype("auto", torch.bfloat16, cpu) == torch.bfloat16
    assert resolve_kv_cache_dtype("auto", torch.float16, cuda) == torch.float16
    assert resolve_kv_cache_dtype("fp8", torch.bfloat16, cpu) == torch.float8_e4m3fn
    assert resolve_kv_cache_dtype("fp8_e4m3", torch.float32, cpu) == torch.float8_e4m3fn
    assert resolve_kv_cache_dtype("fp8_e5m2", torch.float32, cpu) == torch.float8_e5m2
    with pytest.raises(ValueError, match="kv_cache_dtype must be 'auto' or one of"):
        resolve_kv_cache_dtype("int8", torch.float32, cpu)
    with pytest.raises(NotImplementedError, match="fp8 KV cache is not implemented on CUDA"):
        resolve_kv_cache_dtype("fp8", torch.bfloat16, cuda)
