// BlockTables: the block_table row, length, known token ids and prefix-cache
// progress of every live sequence, drawing blocks from a shared BlockManager.
// It decides which blocks a sequence needs (new ones, copy-on-write copies,
// cached prefix blocks) and returns the copies to make as a block_mapping; the
// KV data itself is moved by the cache ops. Rows are addressed by index; the
// Python wrapper maps sequence ids to rows.
//
// A block is written in place only when the row owns it alone and it is not a
// prefix-cache entry; any other write goes to a copy first (copy-on-write).
// Every call is all-or-nothing. Not thread-safe by itself (Python's GIL
// serialises calls); the BlockManager stays safe for its other users.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <tuple>
#include <utility>
#include <vector>

#include "mini_paged_attn/block_manager.h"

namespace mini_paged_attn {

using TokenIds = std::optional<std::vector<int64_t>>;

class BlockTables {
 public:
  BlockTables(std::shared_ptr<BlockManager> block_manager, int64_t num_rows,
              int64_t max_blocks_per_seq, int64_t block_size);

  // A sequence of seq_len tokens in the lowest free row. Given its token ids,
  // its leading full blocks come from the prefix cache where cached, at most
  // seq_len - 1 tokens (the last token is always recomputed). Returns
  // (row, number of leading tokens whose K/V is already cached).
  std::pair<int64_t, int64_t> add(int64_t seq_len, const TokenIds& token_ids);
  // A new row sharing every block of parent_row (no copy, no new block).
  int64_t fork(int64_t parent_row);
  // Releases the row's blocks last block first, so that tail blocks of a
  // cached prefix are evicted before the blocks they depend on.
  void free(int64_t row);
  // Grows the row by n tokens. Returns (slot_mapping of the new positions,
  // block_mapping of the copy-on-write copies to make before writing).
  std::pair<at::Tensor, at::Tensor> append(int64_t row, int64_t n, const TokenIds& token_ids);
  // One decode step: each row of the batch (every live row, in row order,
  // without rows) grows by one token. The tokens a row already holds count as
  // written (a decode step follows the forward pass that wrote them). Returns
  // (slot_mapping: one per batch entry, or one per row with -1 for free rows;
  // changed_rows: rows whose block_table changed; block_mapping).
  std::tuple<at::Tensor, at::Tensor, at::Tensor> decode_step(
      const std::optional<std::vector<int64_t>>& rows, const TokenIds& token_ids);
  // Copies (copy-on-write) the blocks holding positions [start, start + n)
  // that the row may not write in place; returns their block_mapping.
  at::Tensor make_writable(int64_t row, int64_t start, int64_t n);
  // Positions [start, start + n) now hold their K/V. Once every position of a
  // full block with known token ids is written, the block is registered in
  // the prefix cache (written positions are tracked as a contiguous prefix).
  void mark_written(int64_t row, int64_t start, int64_t n);

  at::Tensor slot_mapping(int64_t row, int64_t start, int64_t n) const;
  bool can_add(int64_t seq_len) const;
  bool can_append(int64_t row, int64_t n) const;
  std::vector<int64_t> blocks(int64_t row) const;
  int64_t seq_len(int64_t row) const;
  const at::Tensor& block_table() const { return block_table_; }
  const at::Tensor& context_lens() const { return context_lens_; }

 private:
  struct Row {
    bool live = false;
    int64_t len = 0;
    // Ids of positions [0, token_ids.size()); an append without ids ends them.
    std::vector<int64_t> token_ids;
    // Positions [0, num_written) hold their K/V.
    int64_t num_written = 0;
    // Leading blocks whose chained hash is known; last_hash is the last one's.
    int64_t num_hashed = 0;
    uint64_t last_hash = 0;
  };

  const Row& live_row(int64_t row) const;
  Row& live_row(int64_t row) { return const_cast<Row&>(std::as_const(*this).live_row(row)); }
  int64_t num_blocks_for(int64_t num_tokens) const {
    return (num_tokens + block_size_ - 1) / block_size_;
  }
  // invalid_argument naming `name` unless len + n tokens fit a row.
  void check_capacity(const char* name, int64_t len, int64_t n) const;
  void check_token_ids(const TokenIds& token_ids, int64_t n) const;
  void check_positions(int64_t row, int64_t start, int64_t n) const;
  // OutOfBlocksError naming `what` unless `need` blocks can be allocated;
  // the caller holds the manager's lock.
  void require_blocks_locked(int64_t need, const char* what) const;
  int32_t* table_row(int64_t row) const { return table_ + row * max_blocks_per_seq_; }
  // Copies entries [first, end) of the row, and its length, to the tensors a
  // caller sees. Those are a mirror only: writing them changes nothing here.
  void publish(int64_t row, int64_t first, int64_t end);
  void check_free_row() const;
  int64_t take_free_row();
  // Blocks needed to grow the row by n tokens; caller holds the manager's lock.
  int64_t blocks_to_append_locked(int64_t row, int64_t n) const;
  // Gives the row a private copy of its block at index i; the (src, dst) pair
  // goes to copies.
  void copy_on_write_locked(int64_t row, int64_t i, std::vector<int64_t>& copies);
  // Grows the row by n tokens (token_ids: n ids or nullptr) once the blocks
  // are known to be available; returns whether its block_table row changed.
  bool grow_locked(int64_t row, int64_t n, const int64_t* token_ids,
                   std::vector<int64_t>& copies);
  void register_written_locked(int64_t row);

  std::shared_ptr<BlockManager> manager_;
  BlockManager& bm_;  // *manager_, which the shared pointer keeps alive
  const int64_t max_blocks_per_seq_, block_size_;
  std::vector<Row> rows_;
  std::set<int64_t> free_rows_;  // lowest first
  // The truth is own_table_ (table_ points into it) and rows_[].len; the
  // int32 host tensors block_table_ / context_lens_ mirror them (mirror_, lens_).
  std::vector<int32_t> own_table_;
  at::Tensor block_table_, context_lens_;
  int32_t* table_;
  int32_t* mirror_;
  int32_t* lens_;
  // Scratch of decode_step: copy-on-write references dropped so far per block,
  // and the step in which a row last appeared (to reject repeats).
  std::vector<int32_t> drops_;
  std::vector<int64_t> seen_;
  int64_t step_ = 0;
};

}  // namespace mini_paged_attn
