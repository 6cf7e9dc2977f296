// BlockManager: owns the free list and the reference counts of the physical
// KV-cache blocks. Pure C++ (no torch), thread-safe: every public method takes
// one mutex, so concurrent callers never lose or duplicate a block.
#pragma once

#include <cstdint>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace mini_paged_attn {

// Raised when an allocation cannot be satisfied; bound to Python as a
// subclass of MemoryError.
class OutOfBlocksError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class BlockManager {
 public:
  // Throws std::invalid_argument unless num_blocks > 0.
  explicit BlockManager(int64_t num_blocks);

  // Takes one free block and gives it ref_count 1. OutOfBlocksError if none.
  int64_t allocate();
  // All-or-nothing: either n blocks are returned or nothing changes.
  std::vector<int64_t> allocate_blocks(int64_t n);
  // Drops one reference; the block returns to the free list at ref_count 0.
  // std::out_of_range for a bad index, std::logic_error for a free block.
  void free(int64_t block_idx);
  // All-or-nothing: validated as a whole (a block listed k times must hold
  // at least k references) before any reference is dropped.
  void free_blocks(const std::vector<int64_t>& block_ids);
  // Shares an allocated block (copy-on-write forks); std::logic_error if free.
  void increase_ref_count(int64_t block_idx);

  int64_t get_ref_count(int64_t block_idx) const;
  int64_t get_num_free_blocks() const;
  int64_t num_blocks() const { return static_cast<int64_t>(ref_count_.size()); }

 private:
  void check_index(int64_t block_idx) const;  // caller holds mutex_

  mutable std::mutex mutex_;
  std::vector<int32_t> ref_count_;
  // LIFO stack: recently freed blocks are reused first (warm in cache).
  std::vector<int64_t> free_list_;
};

}  // namespace mini_paged_attn
