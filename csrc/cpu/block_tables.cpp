#include "mini_paged_attn/block_tables.h"

#include <algorithm>
#include <limits>
#include <string>
#include <tuple>

#include "mini_paged_attn/block_hash.h"

namespace mini_paged_attn {
namespace {

at::Tensor long_tensor(const std::vector<int64_t>& values, at::IntArrayRef shape) {
  at::Tensor t = at::empty(shape, at::kLong);
  std::copy(values.begin(), values.end(), t.data_ptr<int64_t>());
  return t;
}

// (src, dst) pairs as the [num_pairs, 2] block_mapping of copy_blocks.
at::Tensor block_mapping(const std::vector<int64_t>& copies) {
  return long_tensor(copies, {static_cast<int64_t>(copies.size() / 2), 2});
}

void check_positive(const char* name, int64_t value) {
  if (value <= 0) {
    throw std::invalid_argument(std::string(name) + " must be positive, got " +
                                std::to_string(value));
  }
}

void check_non_negative(const char* name, int64_t value) {
  if (value < 0) {
    throw std::invalid_argument(std::string(name) + " must be >= 0, got " +
                                std::to_string(value));
  }
}

}  // namespace

[[noreturn]] static void throw_no_memory(int64_t num_rows, int64_t max_blocks_per_seq) {
  throw OutOfBlocksError("not enough host memory for block tables of num_rows x "
                         "max_blocks_per_seq = " + std::to_string(num_rows) + " x " +
                         std::to_string(max_blocks_per_seq) + " entries");
}

BlockTables::BlockTables(std::shared_ptr<BlockManager> block_manager, int64_t num_rows,
                         int64_t max_blocks_per_seq, int64_t block_size)
    : manager_(block_manager ? std::move(block_manager)
                             : throw std::invalid_argument("block_manager must not be None")),
      bm_(*manager_),
      max_blocks_per_seq_(max_blocks_per_seq),
      block_size_(block_size) {
  check_positive("num_rows", num_rows);
  check_positive("max_blocks_per_seq", max_blocks_per_seq);
  check_positive("block_size", block_size);
  if (bm_.num_blocks() > std::numeric_limits<int32_t>::max()) {
    throw std::invalid_argument("block ids must fit the int32 block_table");
  }
  if (max_blocks_per_seq > std::numeric_limits<int32_t>::max() / block_size) {
    throw std::invalid_argument(
        "max_blocks_per_seq * block_size must fit the int32 context_lens, got " +
        std::to_string(max_blocks_per_seq) + " * " + std::to_string(block_size));
  }
  if (num_rows > std::numeric_limits<int32_t>::max()) {
    throw std::invalid_argument("num_rows (num_sequences) must be at most 2^31 - 1, got " +
                                std::to_string(num_rows));
  }
  try {
    rows_.resize(num_rows);
    for (int64_t r = 0; r < num_rows; ++r) free_rows_.insert(free_rows_.end(), r);
    block_table_ = at::zeros({num_rows, max_blocks_per_seq}, at::kInt);
    context_lens_ = at::zeros({num_rows}, at::kInt);
    own_table_.assign(num_rows * max_blocks_per_seq, 0);
  } catch (const std::bad_alloc&) {
    throw_no_memory(num_rows, max_blocks_per_seq);
  } catch (const c10::Error&) {  // torch's allocator reports a failed allocation so
    throw_no_memory(num_rows, max_blocks_per_seq);
  }
  table_ = own_table_.data();
  mirror_ = block_table_.data_ptr<int32_t>();
  lens_ = context_lens_.data_ptr<int32_t>();
  drops_.assign(bm_.num_blocks(), 0);
  seen_.assign(num_rows, -1);
}

const BlockTables::Row& BlockTables::live_row(int64_t row) const {
  if (row < 0 || row >= static_cast<int64_t>(rows_.size()) || !rows_[row].live) {
    throw std::out_of_range("row " + std::to_string(row) + " holds no sequence");
  }
  return rows_[row];
}

void BlockTables::check_capacity(const char* name, int64_t len, int64_t n) const {
  // Compared as n > capacity - len: len + n itself could overflow int64.
  const int64_t capacity = max_blocks_per_seq_ * block_size_;  // fits int32 (constructor)
  if (n > capacity - len) {
    throw std::invalid_argument(std::string(name) + ": a sequence of " + std::to_string(len) +
                                " + " + std::to_string(n) + " tokens needs more than " +
                                "max_blocks_per_seq=" + std::to_string(max_blocks_per_seq_) +
                                " blocks of " + std::to_string(block_size_));
  }
}

void BlockTables::check_token_ids(const TokenIds& token_ids, int64_t n) const {
  if (token_ids && static_cast<int64_t>(token_ids->size()) != n) {
    throw std::invalid_argument("token_ids has " + std::to_string(token_ids->size()) +
                                " ids for " + std::to_string(n) + " tokens");
  }
}

void BlockTables::check_positions(int64_t row, int64_t start, int64_t n) const {
  const int64_t len = live_row(row).len;
  // Compared as n > len - start: start + n itself could overflow int64.
  if (start < 0 || n < 0 || start > len || n > len - start) {
    throw std::invalid_argument(std::to_string(n) + " positions from " +
                                std::to_string(start) + " are outside the sequence of " +
                                std::to_string(len) + " tokens");
  }
}

void BlockTables::require_blocks_locked(int64_t need, const char* what) const {
  if (need > bm_.num_available_locked()) {
    throw OutOfBlocksError(std::string("Out of memory: ") + what + " needs " +
                           std::to_string(need) + " blocks but only " +
                           std::to_string(bm_.num_available_locked()) + " are free");
  }
}

void BlockTables::check_free_row() const {
  if (free_rows_.empty()) {
    throw OutOfBlocksError("all " + std::to_string(rows_.size()) +
                           " block_table rows are in use");
  }
}

int64_t BlockTables::take_free_row() {
  check_free_row();
  const int64_t row = *free_rows_.begin();
  free_rows_.erase(free_rows_.begin());
  rows_[row].live = true;
  return row;
}

std::pair<int64_t, int64_t> BlockTables::add(int64_t seq_len, const TokenIds& token_ids) {
  check_non_negative("seq_len", seq_len);
  check_capacity("seq_len", 0, seq_len);
  check_token_ids(token_ids, seq_len);
  check_free_row();
  // Only full blocks before the last token can be reused.
  std::vector<uint64_t> hashes;
  if (token_ids && seq_len > 0) {
    uint64_t h = kRootBlockHash;
    for (int64_t i = 0; i < (seq_len - 1) / block_size_; ++i) {
      h = hash_block(h, token_ids->data() + i * block_size_, block_size_);
      hashes.push_back(h);
    }
  }
  std::vector<int64_t> blocks;
  int64_t num_cached = 0;
  {
    std::lock_guard<std::mutex> lock(bm_.mutex_);
    std::tie(blocks, num_cached) = bm_.allocate_with_prefix_locked(num_blocks_for(seq_len), hashes);
    for (int64_t b : blocks) ++bm_.table_refs_[b];
  }
  const int64_t row = take_free_row();
  Row& r = rows_[row];
  r.len = seq_len;
  if (token_ids) r.token_ids = *token_ids;
  r.num_written = num_cached * block_size_;
  r.num_hashed = num_cached;
  r.last_hash = num_cached > 0 ? hashes[num_cached - 1] : kRootBlockHash;
  std::copy(blocks.begin(), blocks.end(), table_row(row));
  publish(row, 0, static_cast<int64_t>(blocks.size()));
  return {row, num_cached * block_size_};
}

void BlockTables::publish(int64_t row, int64_t first, int64_t end) {
  std::copy(table_row(row) + first, table_row(row) + end,
            mirror_ + row * max_blocks_per_seq_ + first);
  lens_[row] = static_cast<int32_t>(rows_[row].len);
}

int64_t BlockTables::fork(int64_t parent_row) {
  live_row(parent_row);
  const int64_t child = take_free_row();
  rows_[child] = rows_[parent_row];
  const int64_t n = num_blocks_for(rows_[child].len);
  std::copy(table_row(parent_row), table_row(parent_row) + n, table_row(child));
  publish(child, 0, n);
  std::lock_guard<std::mutex> lock(bm_.mutex_);
  for (int64_t i = 0; i < n; ++i) bm_.share_for_table_locked(table_row(child)[i]);
  return child;
}

void BlockTables::free(int64_t row) {
  const int64_t n = num_blocks_for(live_row(row).len);
  {
    std::lock_guard<std::mutex> lock(bm_.mutex_);
    for (int64_t i = n - 1; i >= 0; --i) bm_.release_from_table_locked(table_row(row)[i]);
  }
  std::fill(table_row(row), table_row(row) + n, 0);
  rows_[row] = Row();
  publish(row, 0, n);
  free_rows_.insert(row);
}

int64_t BlockTables::blocks_to_append_locked(int64_t row, int64_t n) const {
  const int64_t len = rows_[row].len;
  const bool copy = n > 0 && len % block_size_ != 0 &&
                    !bm_.writable_locked(table_row(row)[len / block_size_]);
  return num_blocks_for(len + n) - num_blocks_for(len) + (copy ? 1 : 0);
}

void BlockTables::copy_on_write_locked(int64_t row, int64_t i, std::vector<int64_t>& copies) {
  const int64_t src = table_row(row)[i], dst = bm_.take_for_table_locked();
  bm_.release_from_table_locked(src);
  table_row(row)[i] = static_cast<int32_t>(dst);
  publish(row, i, i + 1);
  copies.push_back(src);
  copies.push_back(dst);
}

bool BlockTables::grow_locked(int64_t row, int64_t n, const int64_t* token_ids,
                              std::vector<int64_t>& copies) {
  Row& r = rows_[row];
  bool changed = false;
  if (n > 0 && r.len % block_size_ != 0 &&
      !bm_.writable_locked(table_row(row)[r.len / block_size_])) {
    copy_on_write_locked(row, r.len / block_size_, copies);
    changed = true;
  }
  const int64_t first_new = num_blocks_for(r.len), end_new = num_blocks_for(r.len + n);
  for (int64_t i = first_new; i < end_new; ++i) {
    table_row(row)[i] = static_cast<int32_t>(bm_.take_for_table_locked());
    changed = true;
  }
  if (token_ids && static_cast<int64_t>(r.token_ids.size()) == r.len) {
    r.token_ids.insert(r.token_ids.end(), token_ids, token_ids + n);
  }
  r.len += n;
  publish(row, first_new, end_new);
  return changed;
}

std::pair<at::Tensor, at::Tensor> BlockTables::append(int64_t row, int64_t n,
                                                      const TokenIds& token_ids) {
  const int64_t start = live_row(row).len;
  check_non_negative("num_tokens", n);
  check_capacity("num_tokens", start, n);
  check_token_ids(token_ids, n);
  std::vector<int64_t> copies;
  {
    std::lock_guard<std::mutex> lock(bm_.mutex_);
    require_blocks_locked(blocks_to_append_locked(row, n), "appending tokens");
    grow_locked(row, n, token_ids ? token_ids->data() : nullptr, copies);
  }
  return {slot_mapping(row, start, n), block_mapping(copies)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> BlockTables::decode_step(
    const std::optional<std::vector<int64_t>>& rows, const TokenIds& token_ids) {
  const int64_t num_rows = static_cast<int64_t>(rows_.size());
  std::vector<int64_t> batch;
  if (rows) {
    batch = *rows;
    ++step_;
    for (size_t i = 0; i < batch.size(); ++i) {
      live_row(batch[i]);
      if (seen_[batch[i]] == step_) {
        throw std::invalid_argument("entry " + std::to_string(i) + " of the decode step (row " +
                                    std::to_string(batch[i]) + ") repeats an earlier one");
      }
      seen_[batch[i]] = step_;
    }
  } else {
    for (int64_t row = 0; row < num_rows; ++row) {
      if (rows_[row].live) batch.push_back(row);
    }
  }
  const int64_t out_size = rows ? static_cast<int64_t>(batch.size()) : num_rows;
  check_token_ids(token_ids, out_size);
  for (int64_t row : batch) check_capacity("decode_step", rows_[row].len, 1);

  at::Tensor slots = at::full({out_size}, -1, at::kLong);
  int64_t* slot = slots.data_ptr<int64_t>();
  std::vector<int64_t> changed, copies;
  std::lock_guard<std::mutex> lock(bm_.mutex_);
  // Count the blocks first, replaying the copy-on-write reference drops of the
  // rows before: of k rows appending into one shared block, the last may keep it.
  int64_t need = 0;
  std::vector<int64_t> touched;
  for (int64_t row : batch) {
    const int64_t len = rows_[row].len;
    if (len % block_size_ == 0) {
      ++need;
      continue;
    }
    const int64_t b = table_row(row)[len / block_size_];
    if (bm_.ref_count_[b] - drops_[b] > 1 || bm_.has_hash_[b]) {
      ++need;
      if (drops_[b]++ == 0) touched.push_back(b);
    }
  }
  for (int64_t b : touched) drops_[b] = 0;
  require_blocks_locked(need, "the decode step");
  for (size_t i = 0; i < batch.size(); ++i) {
    const int64_t row = batch[i], out = rows ? static_cast<int64_t>(i) : row;
    Row& r = rows_[row];
    r.num_written = r.len;
    register_written_locked(row);
    const int64_t pos = r.len;
    if (grow_locked(row, 1, token_ids ? token_ids->data() + out : nullptr, copies)) {
      changed.push_back(row);
    }
    slot[out] = table_row(row)[pos / block_size_] * block_size_ + pos % block_size_;
  }
  return {slots, long_tensor(changed, {static_cast<int64_t>(changed.size())}),
          block_mapping(copies)};
}

at::Tensor BlockTables::make_writable(int64_t row, int64_t start, int64_t n) {
  check_positions(row, start, n);
  std::vector<int64_t> copies;
  if (n == 0) return block_mapping(copies);
  const int64_t first = start / block_size_, last = (start + n - 1) / block_size_;
  std::lock_guard<std::mutex> lock(bm_.mutex_);
  int64_t need = 0;
  for (int64_t i = first; i <= last; ++i) need += !bm_.writable_locked(table_row(row)[i]);
  require_blocks_locked(need, "copy-on-write");
  for (int64_t i = first; i <= last; ++i) {
    if (!bm_.writable_locked(table_row(row)[i])) copy_on_write_locked(row, i, copies);
  }
  return block_mapping(copies);
}

void BlockTables::mark_written(int64_t row, int64_t start, int64_t n) {
  check_positions(row, start, n);
  Row& r = rows_[row];
  if (start > r.num_written) return;  // a gap: the written prefix does not grow
  r.num_written = std::max(r.num_written, start + n);
  std::lock_guard<std::mutex> lock(bm_.mutex_);
  register_written_locked(row);
}

void BlockTables::register_written_locked(int64_t row) {
  Row& r = rows_[row];
  const int64_t known = std::min<int64_t>(r.num_written, r.token_ids.size());
  for (; r.num_hashed < known / block_size_; ++r.num_hashed) {
    r.last_hash = hash_block(r.last_hash, r.token_ids.data() + r.num_hashed * block_size_,
                             block_size_);
    bm_.register_locked(table_row(row)[r.num_hashed], r.last_hash);
  }
}

at::Tensor BlockTables::slot_mapping(int64_t row, int64_t start, int64_t n) const {
  check_positions(row, start, n);
  at::Tensor slots = at::empty({n}, at::kLong);
  int64_t* out = slots.data_ptr<int64_t>();
  for (int64_t p = start; p < start + n; ++p) {
    out[p - start] = table_row(row)[p / block_size_] * block_size_ + p % block_size_;
  }
  return slots;
}

bool BlockTables::can_add(int64_t seq_len) const {
  check_non_negative("num_tokens", seq_len);
  // Capacity first: num_blocks_for of a huge length would overflow.
  return !free_rows_.empty() && seq_len <= max_blocks_per_seq_ * block_size_ &&
         num_blocks_for(seq_len) <= bm_.get_num_free_blocks();
}

bool BlockTables::can_append(int64_t row, int64_t n) const {
  const int64_t len = live_row(row).len;
  check_non_negative("num_tokens", n);
  if (n > max_blocks_per_seq_ * block_size_ - len) return false;
  std::lock_guard<std::mutex> lock(bm_.mutex_);
  return blocks_to_append_locked(row, n) <= bm_.num_available_locked();
}

std::vector<int64_t> BlockTables::blocks(int64_t row) const {
  const int64_t n = num_blocks_for(live_row(row).len);
  return std::vector<int64_t>(table_row(row), table_row(row) + n);
}

int64_t BlockTables::seq_len(int64_t row) const { return live_row(row).len; }

}  // namespace mini_paged_attn
