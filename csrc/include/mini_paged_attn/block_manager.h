// BlockManager: owns the free list, the reference counts and the prefix cache
// of the physical KV-cache blocks. Pure C++ (no torch), thread-safe: every
// public method takes one mutex, so concurrent callers never lose or duplicate
// a block. Every operation is O(1) per block.
//
// A block is in exactly one state:
//   free       ref_count 0, no hash, on the free list;
//   evictable  ref_count 0, registered under a content hash, on the LRU list:
//              its KV data is kept until allocation needs the block;
//   used       ref_count >= 1 (with or without a hash).
//
// References a BlockTables holds for its sequences are counted apart
// (table_refs_): free and free_blocks drop only the others, so a caller
// cannot release a block under a table that still maps it.
#pragma once

#include <cstdint>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace mini_paged_attn {

// Raised when an allocation cannot be satisfied; bound to Python as a
// subclass of MemoryError.
class OutOfBlocksError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Prefix-cache counters, in blocks: asked for and served from the cache; asked
// for and not served (after a miss, allocate_with_prefix counts the rest of
// its hashes too); registered blocks whose content was dropped for reuse.
struct PrefixCacheStats {
  int64_t hits = 0;
  int64_t misses = 0;
  int64_t evictions = 0;
};

class BlockTables;

class BlockManager {
 public:
  // Throws std::invalid_argument unless num_blocks > 0.
  explicit BlockManager(int64_t num_blocks);

  // Takes a free block, else evicts the least recently freed evictable one;
  // the block gets ref_count 1. OutOfBlocksError if neither exists.
  int64_t allocate();
  // All-or-nothing: either n blocks are returned or nothing changes.
  std::vector<int64_t> allocate_blocks(int64_t n);
  // All-or-nothing too: revives the cached blocks of the leading block_hashes
  // (up to the first miss), then takes fresh blocks up to n in all. Returns
  // the n blocks, cached ones first, and how many were cached.
  std::pair<std::vector<int64_t>, int64_t> allocate_with_prefix(
      int64_t n, const std::vector<uint64_t>& block_hashes);
  // Drops one reference; at ref_count 0 a registered block becomes the most
  // recently freed evictable block, any other returns to the free list.
  // std::out_of_range for a bad index, std::logic_error for a block with no
  // reference (free or evictable) or whose references all belong to block tables.
  void free(int64_t block_idx);
  // All-or-nothing: validated as a whole (a block listed k times must hold
  // at least k references besides its tables') before any is dropped, in list order.
  void free_blocks(const std::vector<int64_t>& block_ids);
  // Shares a used block (copy-on-write forks); std::logic_error if it has no
  // reference (an evictable block is revived by lookup, not shared).
  void increase_ref_count(int64_t block_idx);

  // Registers a used block's content under block_hash. A hash has one owner
  // and a block one hash: returns false, changing nothing, when the hash
  // belongs to another block or the block to another hash.
  bool register_hash(int64_t block_idx, uint64_t block_hash);
  // The block registered under block_hash, revived (out of the LRU list,
  // ref_count 1) or shared (+1) if in use; nullopt on a miss.
  std::optional<int64_t> lookup(uint64_t block_hash);

  std::optional<uint64_t> get_block_hash(int64_t block_idx) const;
  int64_t get_ref_count(int64_t block_idx) const;
  // Blocks that allocation can hand out: free + evictable.
  int64_t get_num_free_blocks() const;
  int64_t get_num_evictable_blocks() const;
  // Evictable blocks, next to be evicted first (O(n): for tests and debugging).
  std::vector<int64_t> get_evictable_blocks() const;
  PrefixCacheStats get_prefix_cache_stats() const;
  int64_t num_blocks() const { return static_cast<int64_t>(ref_count_.size()); }

 private:
  // BlockTables runs whole batches of block operations under one lock
  // through the *_locked helpers below (all assume mutex_ is held).
  friend class BlockTables;

  void check_index(int64_t block_idx) const;
  int64_t num_available_locked() const {
    return static_cast<int64_t>(free_list_.size()) + num_evictable_;
  }
  // Precondition: num_available_locked() > 0.
  int64_t take_locked();
  void release_locked(int64_t block_idx);
  std::pair<std::vector<int64_t>, int64_t> allocate_with_prefix_locked(
      int64_t n, const std::vector<uint64_t>& block_hashes);
  // A block table's references: taken, shared and dropped.
  int64_t take_for_table_locked() {
    const int64_t b = take_locked();
    ++table_refs_[b];
    return b;
  }
  void share_for_table_locked(int64_t block_idx) {
    ++ref_count_[block_idx];
    ++table_refs_[block_idx];
  }
  void release_from_table_locked(int64_t block_idx) {
    --table_refs_[block_idx];
    release_locked(block_idx);
  }
  bool writable_locked(int64_t block_idx) const {
    return ref_count_[block_idx] == 1 && !has_hash_[block_idx];
  }
  bool register_locked(int64_t block_idx, uint64_t block_hash);
  void lru_push_back(int64_t block_idx);
  void lru_remove(int64_t block_idx);

  mutable std::mutex mutex_;
  std::vector<int32_t> ref_count_;
  std::vector<int32_t> table_refs_;  // the part of ref_count_ that block tables hold
  // LIFO stack: recently freed blocks are reused first (warm in cache).
  std::vector<int64_t> free_list_;
  std::vector<uint64_t> hash_;
  std::vector<uint8_t> has_hash_;
  std::unordered_map<uint64_t, int64_t> hash_to_block_;
  // Evictable blocks form a doubly linked list through prev_/next_, oldest
  // first, with a sentinel node at index num_blocks: O(1) push and removal.
  std::vector<int64_t> prev_, next_;
  int64_t num_evictable_ = 0;
  PrefixCacheStats stats_;
};

}  // namespace mini_paged_attn
