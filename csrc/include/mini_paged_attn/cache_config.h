// KV-cache configurations in the style of InfiniLM: an abstract CacheConfig
// and two immutable concrete modes. Defaults live here and only here; the
// Python binding reads them from these constants.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

namespace mini_paged_attn::cache {

class CacheConfig {
 public:
  virtual ~CacheConfig() = default;
  virtual std::unique_ptr<CacheConfig> unique_copy() const = 0;
  virtual std::string repr() const = 0;
};

// Contiguous per-slot cache: max_batch_size slots of max_cache_len tokens.
class StaticKVCacheConfig final : public CacheConfig {
 public:
  static constexpr uint64_t kDefaultMaxBatchSize = 1;
  static constexpr uint64_t kDefaultMaxCacheLen = std::numeric_limits<uint64_t>::max();

  explicit StaticKVCacheConfig(uint64_t max_batch_size = kDefaultMaxBatchSize,
                               uint64_t max_cache_len = kDefaultMaxCacheLen)
      : max_batch_size_(max_batch_size), max_cache_len_(max_cache_len) {
    if (max_batch_size == 0) throw std::invalid_argument("max_batch_size must be positive");
    if (max_cache_len == 0) throw std::invalid_argument("max_cache_len must be positive");
  }

  uint64_t max_batch_size() const { return max_batch_size_; }
  uint64_t max_cache_len() const { return max_cache_len_; }

  std::unique_ptr<CacheConfig> unique_copy() const override {
    return std::make_unique<StaticKVCacheConfig>(*this);
  }
  std::string repr() const override {
    return "<StaticKVCacheConfig max_batch_size=" + std::to_string(max_batch_size_) +
           " max_cache_len=" + std::to_string(max_cache_len_) + ">";
  }

 private:
  uint64_t max_batch_size_;
  uint64_t max_cache_len_;
};

// Paged cache: a byte budget cut into blocks of block_size tokens.
class PagedKVCacheConfig final : public CacheConfig {
 public:
  static constexpr uint64_t kDefaultBlockSize = 16;

  explicit PagedKVCacheConfig(uint64_t max_kv_memory_bytes,
                              uint64_t block_size = kDefaultBlockSize)
      : max_kv_memory_bytes_(max_kv_memory_bytes), block_size_(block_size) {
    if (max_kv_memory_bytes == 0) {
      throw std::invalid_argument("max_kv_memory_bytes must be positive");
    }
    if (block_size == 0) throw std::invalid_argument("block_size must be positive");
  }

  uint64_t max_kv_memory_bytes() const { return max_kv_memory_bytes_; }
  uint64_t block_size() const { return block_size_; }

  std::unique_ptr<CacheConfig> unique_copy() const override {
    return std::make_unique<PagedKVCacheConfig>(*this);
  }
  std::string repr() const override {
    return "<PagedKVCacheConfig max_kv_memory_bytes=" + std::to_string(max_kv_memory_bytes_) +
           " block_size=" + std::to_string(block_size_) + ">";
  }

 private:
  uint64_t max_kv_memory_bytes_;
  uint64_t block_size_;
};

}  // namespace mini_paged_attn::cache
