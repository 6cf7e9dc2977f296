#include "mini_paged_attn/block_manager.h"

#include <algorithm>
#include <limits>

namespace mini_paged_attn {

BlockManager::BlockManager(int64_t num_blocks) {
  if (num_blocks <= 0) {
    throw std::invalid_argument("num_blocks must be a positive integer, got " +
                                std::to_string(num_blocks));
  }
  if (num_blocks > std::numeric_limits<int32_t>::max()) {
    throw std::invalid_argument("num_blocks must be at most 2^31 - 1 (block tables hold int32 "
                                "ids), got " + std::to_string(num_blocks));
  }
  try {
    ref_count_.assign(num_blocks, 0);
    table_refs_.assign(num_blocks, 0);
    hash_.assign(num_blocks, 0);
    has_hash_.assign(num_blocks, 0);
    prev_.assign(num_blocks + 1, num_blocks);
    next_.assign(num_blocks + 1, num_blocks);
    free_list_.reserve(num_blocks);
  } catch (const std::bad_alloc&) {
    throw OutOfBlocksError("not enough host memory for the bookkeeping of num_blocks = " +
                           std::to_string(num_blocks) + " blocks");
  }
  // Pushed in reverse so that allocation hands out 0, 1, 2, ... first.
  for (int64_t i = num_blocks - 1; i >= 0; --i) free_list_.push_back(i);
}

void BlockManager::check_index(int64_t block_idx) const {
  if (block_idx < 0 || block_idx >= num_blocks()) {
    throw std::out_of_range("block_idx " + std::to_string(block_idx) +
                            " is out of range [0, " + std::to_string(num_blocks()) + ")");
  }
}

void BlockManager::lru_push_back(int64_t b) {
  const int64_t sentinel = num_blocks(), last = prev_[sentinel];
  next_[last] = b;
  prev_[b] = last;
  next_[b] = sentinel;
  prev_[sentinel] = b;
  ++num_evictable_;
}

void BlockManager::lru_remove(int64_t b) {
  next_[prev_[b]] = next_[b];
  prev_[next_[b]] = prev_[b];
  --num_evictable_;
}

int64_t BlockManager::take_locked() {
  int64_t b;
  if (!free_list_.empty()) {
    b = free_list_.back();
    free_list_.pop_back();
  } else {
    b = next_[num_blocks()];
    lru_remove(b);
    hash_to_block_.erase(hash_[b]);
    has_hash_[b] = 0;
    ++stats_.evictions;
  }
  ref_count_[b] = 1;
  return b;
}

void BlockManager::release_locked(int64_t b) {
  if (--ref_count_[b] > 0) return;
  if (has_hash_[b]) {
    lru_push_back(b);
  } else {
    free_list_.push_back(b);
  }
}

bool BlockManager::register_locked(int64_t b, uint64_t block_hash) {
  if (has_hash_[b]) return hash_[b] == block_hash;
  if (!hash_to_block_.emplace(block_hash, b).second) return false;
  hash_[b] = block_hash;
  has_hash_[b] = 1;
  return true;
}

int64_t BlockManager::allocate() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (num_available_locked() == 0) {
    throw OutOfBlocksError("Out of memory: no free KV-cache blocks (all " +
                           std::to_string(num_blocks()) + " are in use)");
  }
  return take_locked();
}

std::vector<int64_t> BlockManager::allocate_blocks(int64_t n) {
  return allocate_with_prefix(n, {}).first;
}

std::pair<std::vector<int64_t>, int64_t> BlockManager::allocate_with_prefix(
    int64_t n, const std::vector<uint64_t>& block_hashes) {
  std::lock_guard<std::mutex> lock(mutex_);
  return allocate_with_prefix_locked(n, block_hashes);
}

std::pair<std::vector<int64_t>, int64_t> BlockManager::allocate_with_prefix_locked(
    int64_t n, const std::vector<uint64_t>& block_hashes) {
  if (n < 0) throw std::invalid_argument("n must be >= 0, got " + std::to_string(n));
  if (static_cast<int64_t>(block_hashes.size()) > n) {
    throw std::invalid_argument("got " + std::to_string(block_hashes.size()) +
                                " block_hashes for n = " + std::to_string(n) + " blocks");
  }
  std::vector<int64_t> blocks;
  blocks.reserve(std::min(n, num_blocks()));  // a huge n fails below, not in reserve
  std::vector<int64_t> revived;  // evictable hits: they leave the available pool
  for (uint64_t h : block_hashes) {
    const auto it = hash_to_block_.find(h);
    if (it == hash_to_block_.end()) break;
    blocks.push_back(it->second);
    if (ref_count_[it->second] == 0) revived.push_back(it->second);
  }
  std::sort(revived.begin(), revived.end());
  const int64_t num_revived = std::unique(revived.begin(), revived.end()) - revived.begin();
  const int64_t num_cached = static_cast<int64_t>(blocks.size());
  const int64_t available = num_available_locked() - num_revived;
  if (n - num_cached > available) {
    throw OutOfBlocksError("Out of memory: requested " + std::to_string(n - num_cached) +
                           " blocks but only " + std::to_string(available) + " are free");
  }
  for (int64_t b : blocks) {
    if (ref_count_[b] == 0) lru_remove(b);
    ++ref_count_[b];
  }
  stats_.hits += num_cached;
  stats_.misses += static_cast<int64_t>(block_hashes.size()) - num_cached;
  while (static_cast<int64_t>(blocks.size()) < n) blocks.push_back(take_locked());
  return {std::move(blocks), num_cached};
}

void BlockManager::free(int64_t block_idx) {
  free_blocks({block_idx});
}

void BlockManager::free_blocks(const std::vector<int64_t>& block_ids) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::unordered_map<int64_t, int32_t> drops;
  for (int64_t b : block_ids) {
    check_index(b);
    if (++drops[b] > ref_count_[b] - table_refs_[b]) {
      if (ref_count_[b] == 0) {
        throw std::logic_error("double free: block " + std::to_string(b) + " is already free" +
                               (has_hash_[b] ? " (cached, evictable)" : ""));
      }
      if (drops[b] > ref_count_[b]) {
        throw std::logic_error("double free: block " + std::to_string(b) + " has only " +
                               std::to_string(ref_count_[b]) + " reference(s)");
      }
      throw std::logic_error("cannot free block " + std::to_string(b) + ": " +
                             std::to_string(table_refs_[b]) + " of its " +
                             std::to_string(ref_count_[b]) +
                             " reference(s) belong to block tables (free their sequences)");
    }
  }
  for (int64_t b : block_ids) release_locked(b);
}

void BlockManager::increase_ref_count(int64_t block_idx) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_index(block_idx);
  if (ref_count_[block_idx] == 0) {
    throw std::logic_error(
        "cannot share block " + std::to_string(block_idx) +
        (has_hash_[block_idx] ? ": it has no reference (it is cached and evictable: "
                                "revive it with lookup(hash))"
                              : ": it is free (allocate it first)"));
  }
  ++ref_count_[block_idx];
}

bool BlockManager::register_hash(int64_t block_idx, uint64_t block_hash) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_index(block_idx);
  if (ref_count_[block_idx] == 0) {
    throw std::logic_error("cannot register block " + std::to_string(block_idx) +
                           ": it has no reference (only a used block has known content)");
  }
  return register_locked(block_idx, block_hash);
}

std::optional<int64_t> BlockManager::lookup(uint64_t block_hash) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto it = hash_to_block_.find(block_hash);
  if (it == hash_to_block_.end()) {
    ++stats_.misses;
    return std::nullopt;
  }
  const int64_t b = it->second;
  if (ref_count_[b] == 0) lru_remove(b);
  ++ref_count_[b];
  ++stats_.hits;
  return b;
}

std::optional<uint64_t> BlockManager::get_block_hash(int64_t block_idx) const {
  std::lock_guard<std::mutex> lock(mutex_);
  check_index(block_idx);
  if (!has_hash_[block_idx]) return std::nullopt;
  return hash_[block_idx];
}

int64_t BlockManager::get_ref_count(int64_t block_idx) const {
  std::lock_guard<std::mutex> lock(mutex_);
  check_index(block_idx);
  return ref_count_[block_idx];
}

int64_t BlockManager::get_num_free_blocks() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return num_available_locked();
}

int64_t BlockManager::get_num_evictable_blocks() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return num_evictable_;
}

std::vector<int64_t> BlockManager::get_evictable_blocks() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<int64_t> out;
  out.reserve(num_evictable_);
  for (int64_t b = next_[num_blocks()]; b != num_blocks(); b = next_[b]) out.push_back(b);
  return out;
}

PrefixCacheStats BlockManager::get_prefix_cache_stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace mini_paged_attn
