// y = x W^T (+ b) for bf16 x and W on CPUs with AVX512-BF16, for LeanDecoder's linear layers
// (decoder.py): the decode step's four matmuls per layer and the head, 16-32 rows each.
//
// Why by hand: at 16 rows oneDNN's bf16 matmul (pre-packed weights) streams the weights at
// 10-12 GB/s and reaches ~180 GFLOP/s, though this machine reads memory at ~30 GB/s and its
// bf16 peak is ~410 GFLOP/s: a decode step of SmolLM2-135M spent 22.7 ms in its matmuls. Here
// W is packed once per weight update into AVX512-BF16's pair layout ([N/16, K/2, 16, 2]: 16
// output columns times a pair of k in each 64-byte vector), every weight vector feeds 8 rows'
// `vdpbf16ps` from registers, and the 8 x 48 fp32 accumulators never leave the registers: the
// same step takes ~14 ms (16 rows) and ~24 ms instead of 30 ms (32 rows) (bench/decode_matmul.py).
// In a prefill (thousands of rows, 256 at a time) it is as fast as oneDNN, so one packed copy
// of the weights serves both.
//
// Arithmetic: each output is an fp32 sum of bf16 products (exact in fp32), rounded once to
// bf16 (nearest even) or returned as fp32, as oneDNN does; only the summation order differs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>

namespace {

constexpr int kRows = 8;          // rows of x per register tile
constexpr int kBlocks = 3;        // 16-column blocks of W per register tile (8 x 3 accumulators)
constexpr int64_t kAhead = 512;   // prefetch distance in bf16 elements (1 KB) along a W block
constexpr int64_t kRowChunk = 256;  // rows per pass over W (x's chunk stays in L2)

inline __mmask16 lanes(int64_t valid) {
  return valid >= 16 ? static_cast<__mmask16>(0xffff)
                     : static_cast<__mmask16>((1u << (valid > 0 ? valid : 0)) - 1u);
}

// MB rows x NB column blocks of y. x: rows of K bf16 (stride ldx); w: the first of NB packed
// column blocks, `wstride` elements apart, each [K/2, 16, 2]; ncols: valid columns of this tile.
// `next`: the following tile's weights, fetched into L2 along the way (one line per block and
// k pair) so that they arrive a whole tile ahead of use, far more than the memory latency.
template <int MB, int NB>
inline void tile(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t kp, int64_t wstride,
                 const float* bias, char* y, int64_t ldy, bool f32, int64_t ncols, const char* next) {
  __m512 acc[MB][NB];
  for (int j = 0; j < NB; ++j) {
    const __m512 b = bias ? _mm512_maskz_loadu_ps(lanes(ncols - 16 * j), bias + 16 * j) : _mm512_setzero_ps();
    for (int i = 0; i < MB; ++i) acc[i][j] = b;
  }
  for (int64_t p = 0; p < kp; ++p) {
    __m512bh wv[NB];
    for (int j = 0; j < NB; ++j) {
      const uint16_t* wp = w + j * wstride + p * 32;
      _mm_prefetch(reinterpret_cast<const char*>(wp + kAhead), _MM_HINT_T0);
      wv[j] = (__m512bh)_mm512_loadu_si512(wp);
    }
    if (next != nullptr) {
      for (int j = 0; j < NB; ++j) _mm_prefetch(next + (p * NB + j) * 64, _MM_HINT_T1);
    }
    for (int i = 0; i < MB; ++i) {
      int32_t pair;  // x[i][2p], x[i][2p + 1]
      std::memcpy(&pair, x + i * ldx + 2 * p, sizeof(pair));
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm512_dpbf16_ps(acc[i][j], wv[j], xb);
    }
  }
  for (int j = 0; j < NB; ++j) {
    const __mmask16 mk = lanes(ncols - 16 * j);
    for (int i = 0; i < MB; ++i) {
      if (f32) {
        _mm512_mask_storeu_ps(reinterpret_cast<float*>(y) + i * ldy + 16 * j, mk, acc[i][j]);
      } else {
        const __m256i v = (__m256i)_mm512_cvtneps_pbh(acc[i][j]);
        _mm256_mask_storeu_epi16(reinterpret_cast<uint16_t*>(y) + i * ldy + 16 * j, mk, v);
      }
    }
  }
}

// All m rows against NB column blocks, kRows at a time, then the remainder.
template <int NB>
void rows(int64_t m, const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t kp, int64_t wstride,
          const float* bias, char* y, int64_t ldy, int64_t esz, bool f32, int64_t ncols, const char* next) {
  int64_t i = 0;
  for (; i + kRows <= m; i += kRows) {  // the first pass over this tile's weights fetches the next's
    tile<kRows, NB>(x + i * ldx, ldx, w, kp, wstride, bias, y + i * ldy * esz, ldy, f32, ncols, i == 0 ? next : nullptr);
  }
  const uint16_t* xr = x + i * ldx;
  char* yr = y + i * ldy * esz;
  switch (m - i) {
#define OPENRFT_TILE(R) \
  case R:               \
    tile<R, NB>(xr, ldx, w, kp, wstride, bias, yr, ldy, f32, ncols, i == 0 ? next : nullptr); \
    break;
    OPENRFT_TILE(1)
    OPENRFT_TILE(2)
    OPENRFT_TILE(3)
    OPENRFT_TILE(4)
    OPENRFT_TILE(5)
    OPENRFT_TILE(6)
    OPENRFT_TILE(7)
#undef OPENRFT_TILE
    default:
      break;
  }
}

// x [M, K] bf16 contiguous, K even; wp [ceil(N / 16), K / 2, 16, 2] bf16 (pack_bf16_weight in
// decoder.py, zero columns past n); bias [n] fp32 or absent. Returns [M, n], bf16 or fp32.
at::Tensor bf16_linear(const at::Tensor& x, const at::Tensor& wp, int64_t n, const std::optional<at::Tensor>& bias,
                       bool f32) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == at::kBFloat16, "x: contiguous bf16 [M, K]");
  TORCH_CHECK(wp.dim() == 4 && wp.is_contiguous() && wp.scalar_type() == at::kBFloat16 && wp.size(2) == 16 &&
                  wp.size(3) == 2,
              "wp: contiguous bf16 [N / 16, K / 2, 16, 2]");
  const int64_t m = x.size(0), k = x.size(1), nblk = wp.size(0), kp = wp.size(1);
  TORCH_CHECK(k == 2 * kp, "x has ", k, " columns, the packed weight ", 2 * kp);
  TORCH_CHECK(n > 16 * (nblk - 1) && n <= 16 * nblk, "n = ", n, " does not match ", nblk, " column blocks");
  const float* b = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->is_contiguous() && bias->scalar_type() == at::kFloat && bias->numel() == n, "bias: fp32 [n]");
    b = bias->data_ptr<float>();
  }
  auto y = at::empty({m, n}, x.options().dtype(f32 ? at::kFloat : at::kBFloat16));
  if (m == 0) return y;
  const auto* xp = reinterpret_cast<const uint16_t*>(x.data_ptr());
  const auto* w = reinterpret_cast<const uint16_t*>(wp.data_ptr());
  char* yp = static_cast<char*>(y.data_ptr());
  const int64_t esz = f32 ? 4 : 2, wstride = kp * 32;
  const int64_t tiles = (nblk + kBlocks - 1) / kBlocks;
  for (int64_t r0 = 0; r0 < m; r0 += kRowChunk) {  // a chunk of x stays in cache across W
    const int64_t mr = std::min(kRowChunk, m - r0);
    const uint16_t* xc = xp + r0 * k;
    char* yc = yp + r0 * n * esz;
    at::parallel_for(0, tiles, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t j0 = t * kBlocks, c0 = j0 * 16;
        const int64_t ncols = std::min<int64_t>(n - c0, kBlocks * 16);
        const uint16_t* wt = w + j0 * wstride;
        const float* bt = b ? b + c0 : nullptr;
        // the next tile of this thread, when it is a full one (its weights are contiguous)
        const char* nx = t + 1 < t1 && (t + 2) * kBlocks <= nblk
                             ? reinterpret_cast<const char*>(w + (j0 + kBlocks) * wstride)
                             : nullptr;
        switch (std::min<int64_t>(kBlocks, nblk - j0)) {
          case 3:
            rows<3>(mr, xc, k, wt, kp, wstride, bt, yc + c0 * esz, n, esz, f32, ncols, nx);
            break;
          case 2:
            rows<2>(mr, xc, k, wt, kp, wstride, bt, yc + c0 * esz, n, esz, f32, ncols, nx);
            break;
          default:
            rows<1>(mr, xc, k, wt, kp, wstride, bt, yc + c0 * esz, n, esz, f32, ncols, nx);
        }
      }
    });
  }
  return y;
}

// Packs w [N, K] bf16 (N a multiple of 16, K even) into out[b0 : b0 + N / 16] of a packed
// weight [*, K / 2, 16, 2]: each 16 x (K / 2) block of k pairs transposed as 32-bit words, the
// blocks split between threads (a strided torch copy_ of the same took ~2.5x as long).
void pack_bf16_into(const at::Tensor& w, at::Tensor out, int64_t b0) {
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.scalar_type() == at::kBFloat16 && w.size(0) % 16 == 0 &&
                  w.size(1) % 2 == 0,
              "w: contiguous bf16 [N, K], N a multiple of 16, K even");
  TORCH_CHECK(out.dim() == 4 && out.is_contiguous() && out.scalar_type() == at::kBFloat16 &&
                  out.size(1) * 2 == w.size(1) && out.size(2) == 16 && out.size(3) == 2 && b0 >= 0 &&
                  b0 + w.size(0) / 16 <= out.size(0),
              "out: contiguous bf16 [blocks, K / 2, 16, 2] with room for w at block b0");
  const int64_t blocks = w.size(0) / 16, kp = w.size(1) / 2;
  const auto* src = reinterpret_cast<const uint32_t*>(w.data_ptr());
  auto* dst = reinterpret_cast<uint32_t*>(out.data_ptr()) + b0 * kp * 16;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const uint32_t* in = src + b * 16 * kp;  // 16 rows of kp words
      uint32_t* o = dst + b * kp * 16;
      for (int64_t p = 0; p < kp; ++p)
        for (int64_t i = 0; i < 16; ++i) o[p * 16 + i] = in[i * kp + p];
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(openrft_cpu, m) {
  m.def("bf16_linear(Tensor x, Tensor wp, int n, Tensor? bias, bool f32) -> Tensor");
  m.def("pack_bf16_into(Tensor w, Tensor(a!) out, int b0) -> ()");
}

TORCH_LIBRARY_IMPL(openrft_cpu, CPU, m) {
  m.impl("bf16_linear", &bf16_linear);
  m.impl("pack_bf16_into", &pack_bf16_into);
}

#endif  // AVX512-BF16: elsewhere the op is absent and decoder.py keeps oneDNN's matmul
