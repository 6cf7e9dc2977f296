#include "mini_paged_attn/block_manager.h"

#include <algorithm>
#include <unordered_map>

namespace mini_paged_attn {

BlockManager::BlockManager(int64_t num_blocks) {
  if (num_blocks <= 0) {
    throw std::invalid_argument("num_blocks must be a positive integer, got " +
                                std::to_string(num_blocks));
  }
  ref_count_.assign(num_blocks, 0);
  free_list_.reserve(num_blocks);
  // Pushed in reverse so that allocation hands out 0, 1, 2, ... first.
  for (int64_t i = num_blocks - 1; i >= 0; --i) free_list_.push_back(i);
}

void BlockManager::check_index(int64_t block_idx) const {
  if (block_idx < 0 || block_idx >= num_blocks()) {
    throw std::out_of_range("block_idx " + std::to_string(block_idx) +
                            " is out of range [0, " + std::to_string(num_blocks()) + ")");
  }
}

int64_t BlockManager::allocate() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (free_list_.empty()) {
    throw OutOfBlocksError("Out of memory: no free KV-cache blocks (all " +
                           std::to_string(num_blocks()) + " are in use)");
  }
  const int64_t block = free_list_.back();
  free_list_.pop_back();
  ref_count_[block] = 1;
  return block;
}

std::vector<int64_t> BlockManager::allocate_blocks(int64_t n) {
  if (n < 0) throw std::invalid_argument("n must be >= 0, got " + std::to_string(n));
  std::lock_guard<std::mutex> lock(mutex_);
  if (n > static_cast<int64_t>(free_list_.size())) {
    throw OutOfBlocksError("Out of memory: requested " + std::to_string(n) +
                           " blocks but only " + std::to_string(free_list_.size()) +
                           " are free");
  }
  std::vector<int64_t> blocks(free_list_.end() - n, free_list_.end());
  std::reverse(blocks.begin(), blocks.end());
  free_list_.resize(free_list_.size() - n);
  for (int64_t b : blocks) ref_count_[b] = 1;
  return blocks;
}

void BlockManager::free(int64_t block_idx) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_index(block_idx);
  if (ref_count_[block_idx] == 0) {
    throw std::logic_error("double free: block " + std::to_string(block_idx) +
                           " is already free");
  }
  if (--ref_count_[block_idx] == 0) free_list_.push_back(block_idx);
}

void BlockManager::free_blocks(const std::vector<int64_t>& block_ids) {
  std::lock_guard<std::mutex> lock(mutex_);
  std::unordered_map<int64_t, int32_t> drops;
  for (int64_t b : block_ids) {
    check_index(b);
    if (++drops[b] > ref_count_[b]) {
      throw std::logic_error("double free: block " + std::to_string(b) + " has only " +
                             std::to_string(ref_count_[b]) + " reference(s)");
    }
  }
  for (int64_t b : block_ids) {
    if (--ref_count_[b] == 0) free_list_.push_back(b);
  }
}

void BlockManager::increase_ref_count(int64_t block_idx) {
  std::lock_guard<std::mutex> lock(mutex_);
  check_index(block_idx);
  if (ref_count_[block_idx] == 0) {
    throw std::logic_error("cannot share block " + std::to_string(block_idx) +
                           ": it is free (allocate it first)");
  }
  ++ref_count_[block_idx];
}

int64_t BlockManager::get_ref_count(int64_t block_idx) const {
  std::lock_guard<std::mutex> lock(mutex_);
  check_index(block_idx);
  return ref_count_[block_idx];
}

int64_t BlockManager::get_num_free_blocks() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int64_t>(free_list_.size());
}

}  // namespace mini_paged_attn
