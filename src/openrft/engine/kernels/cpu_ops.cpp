// Fused CPU kernels (loaded by cpu_kernels.py): LeanDecoder's one-token decode step, the
// chunked head's softmax statistics (logprobs.py) and the training attention's masked softmax
// (attention.py).
//
// Why by hand: at GRPO's decode shape (16 rows, one token) each of the ~25 small PyTorch ops
// around a layer's four matmuls costs 5-30 us of dispatch, allocation and thread fork/join
// for a few microseconds of arithmetic, and the two attention matmuls cost ~75 us each in bf16
// whatever their size. These four kernels do that work in four calls per layer and round to
// the model dtype exactly where the PyTorch path does (after the score matmul, the softmax,
// the value matmul, RoPE's two products, SiLU and the gate product), so a bf16 decode computes
// the same function; tests/integration/test_lean_decoder.py compares the two paths.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

inline float bf16_to_f(uint16_t v) {
  uint32_t u = static_cast<uint32_t>(v) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

inline uint16_t f_to_bf16(float f) {  // round to nearest even, as c10::BFloat16; branch-free
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  u = (f != f) ? 0x7fc00000u : u + 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// exp(x) in float, written so the compiler vectorizes it (a libm call per element would not
// be): x = k ln2 + r with |r| <= ln2 / 2 (Cody-Waite), exp(r) by Cephes' expf polynomial
// (< 2 ulp, as accurate as the SLEEF exp PyTorch uses after rounding to bf16), times 2^k built
// in the exponent bits. Below -87.3 (under FLT_MIN, and -inf) it returns 0.
// exp(r) for |r| <= ln2 / 2 after the reduction x = k ln2 + r, on a float or on 16 lanes: one
// source for the constants, so exp_f and exp_v compute the same thing.
template <typename T>
inline T exp_reduced(T xc, T k) {
  T r = xc - k * 0.693359375f;
  r = r - k * -2.12194440e-4f;
  T p = r * 1.9875691500e-4f + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.f;
}
template <typename T>
inline T round_k(T xc) {  // k = round(x / ln2), to nearest
  return (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;
}

inline float exp_f(float x) {
  const float xc = std::min(std::max(x, -87.3f), 88.7f);
  const float k = round_k(xc);
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.3f ? 0.f : exp_reduced(xc, k) * scale;
}

// Element access for the two supported storage types: float, and bf16 held as uint16_t.
template <typename S> struct Io;
template <> struct Io<float> {
  static inline float get(float v) { return v; }
  static inline float put(float v) { return v; }
  static inline float round(float v) { return v; }  // fp32 models: no intermediate rounding
};
template <> struct Io<uint16_t> {
  static inline float get(uint16_t v) { return bf16_to_f(v); }
  static inline uint16_t put(float v) { return f_to_bf16(v); }
  static inline float round(float v) { return bf16_to_f(f_to_bf16(v)); }
};

template <typename F>
void dispatch(at::ScalarType t, F&& f) {
  if (t == at::kFloat) {
    f(float{});
  } else if (t == at::kBFloat16) {
    f(uint16_t{});
  } else {
    TORCH_CHECK(false, "openrft decode kernels support float32 and bfloat16, got ", t);
  }
}

template <typename S>
S* ptr(const at::Tensor& t) {
  return reinterpret_cast<S*>(t.data_ptr());
}

// 16-float vectors through GCC's vector extensions: AVX-512 here, two AVX2 registers elsewhere.
typedef float vf __attribute__((vector_size(64)));
typedef uint32_t vu __attribute__((vector_size(64)));
typedef uint16_t vh __attribute__((vector_size(32)));
constexpr int64_t W = 16;

inline vf load16(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline vf load16(const uint16_t* p) {
  vh h;
  std::memcpy(&h, p, sizeof(h));
  vu u = __builtin_convertvector(h, vu) << 16;
  vf v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

typedef int32_t vi __attribute__((vector_size(64)));

inline void store16(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
inline void store16(uint16_t* p, vf v) {  // round to nearest even, as f_to_bf16
  vu u;
  std::memcpy(&u, &v, sizeof(u));
  u = (v != v) ? vu{} + 0x7fc00000u : u + 0x7fffu + ((u >> 16) & 1u);
  vh h = __builtin_convertvector(u >> 16, vh);
  std::memcpy(p, &h, sizeof(h));
}
inline vf splat(float x) { return vf{} + x; }

// Io<S>::round on 16 lanes: identity for float, round to nearest even bf16 for uint16_t.
inline vf round16(vf v, float) { return v; }
inline vf round16(vf v, uint16_t) {
  vu u;
  std::memcpy(&u, &v, sizeof(u));
  u = (v != v) ? vu{} + 0x7fc00000u : (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&v, &u, sizeof(v));
  return v;
}

// exp_f on 16 lanes (the same arithmetic, so lane and scalar results are identical).
inline vf exp_v(vf x) {
  vf xc = x < -87.3f ? splat(-87.3f) : x;
  xc = xc > 88.7f ? splat(88.7f) : xc;
  const vf k = round_k(xc);
  const vi bits = (__builtin_convertvector(k, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.3f ? vf{} : exp_reduced(xc, k) * scale;
}

inline float hsum(vf v) {
  float r = 0.f;
  for (int i = 0; i < W; ++i) r += v[i];
  return r;
}
inline float hmax(vf v) {
  float r = v[0];
  for (int i = 1; i < W; ++i) r = std::max(r, v[i]);
  return r;
}

// max_j x[j] * scale, sum_j x[j]^2 and sum_j exp(x[j] * scale - shift), 16 lanes at a time
// (plain loops would not vectorize: reordering a float reduction changes its rounding, so the
// compiler keeps it serial; here the lanes are the order).
template <typename S>
float max_scaled(const S* x, int64_t n, float scale) {
  vf m = splat(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const vf v = load16(x + j) * scale;
    m = v > m ? v : m;
  }
  float r = hmax(m);
  for (; j < n; ++j) r = std::max(r, Io<S>::get(x[j]) * scale);
  return r;
}
template <typename S>
float sum_squares(const S* x, int64_t n) {
  vf acc{};
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const vf v = load16(x + j);
    acc += v * v;
  }
  float r = hsum(acc);
  for (; j < n; ++j) r += Io<S>::get(x[j]) * Io<S>::get(x[j]);
  return r;
}
inline float sum_lanes(const float* x, int64_t n) {
  vf acc{};
  int64_t j = 0;
  for (; j + W <= n; j += W) acc += load16(x + j);
  float r = hsum(acc);
  for (; j < n; ++j) r += x[j];
  return r;
}
// y[t] = exp(y[t] - max y) in place; returns 1 / sum y (the softmax's normaliser).
inline float exp_shifted_inplace(float* y, int64_t n) {
  const float mx = max_scaled(y, n, 1.f);
  int64_t t = 0;
  for (; t + W <= n; t += W) store16(y + t, exp_v(load16(y + t) - mx));
  for (; t < n; ++t) y[t] = exp_f(y[t] - mx);
  return 1.f / sum_lanes(y, n);
}
template <typename S>
float sum_exp(const S* x, int64_t n, float scale, float shift) {
  vf acc{};
  int64_t j = 0;
  for (; j + W <= n; j += W) acc += exp_v(load16(x + j) * scale - shift);
  float r = hsum(acc);
  for (; j < n; ++j) r += exp_f(Io<S>::get(x[j]) * scale - shift);
  return r;
}

// x += y (when y is given); returns rms_norm(x) * w in `dtype`. x: fp32 [N, H] contiguous.
at::Tensor add_rms_norm(at::Tensor x, const std::optional<at::Tensor>& y, const at::Tensor& w,
                        double eps, at::ScalarType dtype) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous() && x.dim() == 2, "x: fp32 [N, H]");
  TORCH_CHECK(w.scalar_type() == at::kFloat && w.is_contiguous() && w.numel() == x.size(1), "w: fp32 [H]");
  const int64_t n = x.size(0), h = x.size(1);
  auto out = at::empty({n, h}, x.options().dtype(dtype));
  dispatch(dtype, [&](auto tag) {
    using S = decltype(tag);
    const S* yp = nullptr;
    if (y.has_value()) {
      TORCH_CHECK(y->scalar_type() == dtype && y->is_contiguous() && y->numel() == n * h, "y: [N, H]");
      yp = ptr<S>(*y);
    }
    float* xp = x.data_ptr<float>();
    const float* wp = w.data_ptr<float>();
    S* op = ptr<S>(out);
    at::parallel_for(0, n, 4, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        float* xr = xp + r * h;
        if (yp != nullptr) {
          const S* yr = yp + r * h;
          for (int64_t i = 0; i < h; ++i) xr[i] += Io<S>::get(yr[i]);
        }
        const float ss = sum_squares(xr, h);
        const float inv = 1.f / std::sqrt(ss / static_cast<float>(h) + static_cast<float>(eps));
        S* orow = op + r * h;
        for (int64_t i = 0; i < h; ++i) orow[i] = Io<S>::put((xr[i] * inv) * wp[i]);
      }
    });
  });
  return out;
}

// Training RMSNorm as transformers' Llama-family modules compute it: y = round(w * round(x r)),
// r = 1 / sqrt(mean(x^2) + eps) in float32, x and w in the model dtype S. x [N, H], w [H]
// contiguous. Returns (y [N, H] in S, r [N] fp32, kept for the backward).
std::vector<at::Tensor> rms_norm_fwd(const at::Tensor& x, const at::Tensor& w, double eps) {
  TORCH_CHECK(x.is_contiguous() && x.dim() == 2 && w.is_contiguous() && w.numel() == x.size(1) &&
                  w.scalar_type() == x.scalar_type(),
              "x [N, H] and w [H], contiguous, one dtype");
  const int64_t n = x.size(0), h = x.size(1);
  auto y = at::empty_like(x);
  auto rstd = at::empty({n}, x.options().dtype(at::kFloat));
  dispatch(x.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    const S* xp = ptr<S>(x);
    const S* wp = ptr<S>(w);
    S* yp = ptr<S>(y);
    float* rp = rstd.data_ptr<float>();
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const S* xr = xp + i * h;
        const float r = 1.f / std::sqrt(sum_squares(xr, h) / static_cast<float>(h) + static_cast<float>(eps));
        rp[i] = r;
        S* yr = yp + i * h;
        for (int64_t j = 0; j < h; ++j) yr[j] = Io<S>::put(Io<S>::get(wp[j]) * Io<S>::round(Io<S>::get(xr[j]) * r));
      }
    });
  });
  return {y, rstd};
}

// Its input gradient, with autograd's rounding of the upstream product: dh = round(g w), then
// in float32 dx = r dh - x r^3 mean(dh x), rounded to S once.
at::Tensor rms_norm_bwd(const at::Tensor& g, const at::Tensor& x, const at::Tensor& w, const at::Tensor& rstd) {
  TORCH_CHECK(g.is_contiguous() && x.is_contiguous() && g.sizes() == x.sizes() && x.dim() == 2 &&
                  g.scalar_type() == x.scalar_type() && w.scalar_type() == x.scalar_type() &&
                  rstd.scalar_type() == at::kFloat && rstd.numel() == x.size(0),
              "g, x [N, H] (one dtype), rstd fp32 [N]");
  const int64_t n = x.size(0), h = x.size(1);
  auto dx = at::empty_like(x);
  dispatch(x.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    const S* gp = ptr<S>(g);
    const S* xp = ptr<S>(x);
    const S* wp = ptr<S>(w);
    const float* rp = rstd.data_ptr<float>();
    S* op = ptr<S>(dx);
    at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
      std::vector<float> dh(h);
      for (int64_t i = begin; i < end; ++i) {
        const S* gr = gp + i * h;
        const S* xr = xp + i * h;
        vf acc{};
        int64_t j = 0;
        for (; j + W <= h; j += W) {
          const vf d = round16(load16(gr + j) * load16(wp + j), S{});
          store16(dh.data() + j, d);
          acc += d * load16(xr + j);
        }
        float dot = hsum(acc);
        for (; j < h; ++j) {
          dh[j] = Io<S>::round(Io<S>::get(gr[j]) * Io<S>::get(wp[j]));
          dot += dh[j] * Io<S>::get(xr[j]);
        }
        const float r = rp[i], c = r * r * r * dot / static_cast<float>(h);
        S* orow = op + i * h;
        for (int64_t j = 0; j < h; ++j) orow[j] = Io<S>::put(r * dh[j] - c * Io<S>::get(xr[j]));
      }
    });
  });
  return dx;
}

// RoPE on the query and key heads of one token per row, keys and values written into the
// cache at column `col`, queries returned rotated and scaled.
// qkv [R, (nq + 2 nkv) * D]; pos [R] int64; cos, sin [L, D] (sin with its first half negated,
// so rotate_half(x) * sin == roll(x, D/2) * sin); kc [>=R, nkv, L / 16, D, 16] (blocked keys, see
// decoder.py); vc [>=R, nkv, L, D].
// Returns q [R, nq, D] = round(round(rope(q)) * scale).
at::Tensor rope_write(const at::Tensor& qkv, const at::Tensor& pos, const at::Tensor& cos,
                      const at::Tensor& sin, at::Tensor kc, at::Tensor vc, int64_t col, int64_t nq,
                      int64_t nkv, double scale) {
  TORCH_CHECK(kc.dim() == 5 && kc.size(4) == W, "kc: blocked keys [R, nkv, L / 16, D, 16]");
  const int64_t r = qkv.size(0), d = kc.size(3), len = vc.size(2), kblocks = kc.size(2), half = d / 2;
  TORCH_CHECK(qkv.is_contiguous() && qkv.size(1) == (nq + 2 * nkv) * d, "qkv: [R, (nq + 2 nkv) D]");
  TORCH_CHECK(kc.is_contiguous() && vc.is_contiguous() && cos.is_contiguous() && sin.is_contiguous(),
              "contiguous cache and tables");
  TORCH_CHECK(col >= 0 && col < len && kblocks * W >= len, "cache column out of range");
  TORCH_CHECK(pos.scalar_type() == at::kLong && pos.is_contiguous() && pos.numel() == r, "pos: int64 [R]");
  TORCH_CHECK(d % 2 == 0 && d <= 1024, "head_dim: even, at most 1024");
  TORCH_CHECK(kc.size(0) >= r && kc.size(1) == nkv && vc.size(0) >= r && vc.size(1) == nkv && vc.size(3) == d,
              "cache shapes");
  TORCH_CHECK(kc.scalar_type() == qkv.scalar_type() && vc.scalar_type() == qkv.scalar_type() &&
                  cos.scalar_type() == qkv.scalar_type() && sin.scalar_type() == qkv.scalar_type(),
              "one dtype for qkv, the cache and the tables");
  TORCH_CHECK(cos.size(-1) == d && sin.sizes() == cos.sizes(), "tables: [L, D]");
  auto q = at::empty({r, nq, d}, qkv.options());
  const int64_t* pp = pos.data_ptr<int64_t>();
  for (int64_t i = 0; i < r; ++i) TORCH_CHECK(pp[i] >= 0 && pp[i] < cos.size(0), "position out of table");
  const float sc = static_cast<float>(scale);
  dispatch(qkv.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    const S* src = ptr<S>(qkv);
    const S* cp = ptr<S>(cos);
    const S* sp = ptr<S>(sin);
    S* kp = ptr<S>(kc);
    S* vp = ptr<S>(vc);
    S* qp = ptr<S>(q);
    at::parallel_for(0, r, 2, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const S* row = src + i * (nq + 2 * nkv) * d;
        const S* c = cp + pp[i] * d;
        const S* s = sp + pp[i] * d;
        float rot[1024];  // one head, rotated and rounded (head_dim <= 1024, checked above)
        for (int64_t h = 0; h < nq + nkv; ++h) {
          const S* x = row + h * d;
          for (int64_t j = 0; j < half; ++j)  // two straight loops (no index select) vectorize
            rot[j] = Io<S>::round(Io<S>::round(Io<S>::get(x[j]) * Io<S>::get(c[j])) +
                                  Io<S>::get(x[j + half]) * Io<S>::get(s[j]));
          for (int64_t j = half; j < d; ++j)
            rot[j] = Io<S>::round(Io<S>::round(Io<S>::get(x[j]) * Io<S>::get(c[j])) +
                                  Io<S>::get(x[j - half]) * Io<S>::get(s[j]));
          if (h < nq) {
            S* qo = qp + (i * nq + h) * d;
            for (int64_t j = 0; j < d; ++j) qo[j] = Io<S>::put(rot[j] * sc);
          } else {  // keys in 16-column blocks: [row, head, L / 16, D, 16]
            S* ko = kp + ((i * nkv + (h - nq)) * kblocks + col / W) * d * W + col % W;
            for (int64_t j = 0; j < d; ++j) ko[j * W] = Io<S>::put(rot[j]);
          }
        }
        for (int64_t h = 0; h < nkv; ++h) {
          const S* x = row + (nq + nkv + h) * d;
          std::memcpy(vp + ((i * nkv + h) * len + col) * d, x, d * sizeof(S));
        }
      }
    });
  });
  return q;
}

// out[a][c0 .. c0 + 16 NB) += sum_t p[a][t] v[t][...] over columns [t_begin, t_end), for NR
// heads: values are read once per column and the NR x NB accumulators stay in registers.
template <int NR, int NB, typename S>
inline void values(const float* p, int64_t s, const S* v, int64_t d, int64_t c0, float* acc_out,
                   int64_t t_begin, int64_t t_end) {
  vf acc[NR][NB];
  for (int a = 0; a < NR; ++a) std::memcpy(acc[a], acc_out + a * d + c0, NB * sizeof(vf));
  for (int64_t t = t_begin; t < t_end; ++t) {
    const S* vr = v + t * d + c0;
    vf vv[NB];
    for (int c = 0; c < NB; ++c) vv[c] = load16(vr + c * W);
    for (int a = 0; a < NR; ++a) {
      const float pa = p[a * s + t];
      for (int c = 0; c < NB; ++c) acc[a][c] += pa * vv[c];
    }
  }
  for (int a = 0; a < NR; ++a) std::memcpy(acc_out + a * d + c0, acc[a], NB * sizeof(vf));
}

template <int NB, typename S>
inline void values_heads(int nr, const float* p, int64_t s, const S* v, int64_t d, int64_t c0, float* out,
                         int64_t t0, int64_t t1) {
  switch (nr) {
    case 1: values<1, NB>(p, s, v, d, c0, out, t0, t1); break;
    case 2: values<2, NB>(p, s, v, d, c0, out, t0, t1); break;
    case 3: values<3, NB>(p, s, v, d, c0, out, t0, t1); break;
    default: values<4, NB>(p, s, v, d, c0, out, t0, t1); break;
  }
}

// out[a][:] += p[a][t_begin:t_end] V[t_begin:t_end] for nr heads (accumulation order: t).
template <typename S>
void value_heads(int nr, const float* p, int64_t s, const S* v, int64_t d, float* out, int64_t t0, int64_t t1) {
  int64_t c0 = 0;
  for (; c0 + 4 * W <= d; c0 += 4 * W) values_heads<4, S>(nr, p, s, v, d, c0, out, t0, t1);
  for (; c0 + W <= d; c0 += W) values_heads<1, S>(nr, p, s, v, d, c0, out, t0, t1);
  for (int a = 0; a < nr; ++a)  // the last d % 16 dimensions
    for (int64_t j = c0; j < d; ++j)
      for (int64_t t = t0; t < t1; ++t) out[a * d + j] += p[a * s + t] * Io<S>::get(v[t * d + j]);
}

// score[a][t] = sum_j q[a][j] k[j][t] for NR query heads over columns [t_begin, t_end), keys in
// the blocked layout [L / 16, D, 16]: each 16-column block's D x 16 keys are one contiguous
// 2 KB (bf16) read, the NR accumulators stay in registers, and only the lanes inside the range
// are stored (a block can straddle the shared-prompt boundary or the last column).
template <int NR, typename S>
void scores_blocked(const float* qf, int64_t d, const S* k, float* score, int64_t s, int64_t t_begin,
                    int64_t t_end) {
  for (int64_t blk = t_begin / W; blk * W < t_end; ++blk) {
    const S* kb = k + blk * d * W;
    vf acc[NR];
    for (int a = 0; a < NR; ++a) acc[a] = vf{};
    for (int64_t j = 0; j < d; ++j) {
      const vf kv = load16(kb + j * W);
      for (int a = 0; a < NR; ++a) acc[a] += qf[a * d + j] * kv;
    }
    const int64_t lo = std::max(t_begin, blk * W), hi = std::min(t_end, blk * W + W);
    for (int a = 0; a < NR; ++a) {
      float lanes[W];
      std::memcpy(lanes, &acc[a], sizeof(lanes));
      std::memcpy(score + a * s + lo, lanes + (lo - blk * W), (hi - lo) * sizeof(float));
    }
  }
}

template <typename S>
void score_heads(int nr, const float* qf, int64_t d, const S* k, float* score, int64_t s, int64_t t_begin,
                 int64_t t_end) {
  if (t_begin >= t_end) return;
  switch (nr) {
    case 1: scores_blocked<1>(qf, d, k, score, s, t_begin, t_end); break;
    case 2: scores_blocked<2>(qf, d, k, score, s, t_begin, t_end); break;
    case 3: scores_blocked<3>(qf, d, k, score, s, t_begin, t_end); break;
    default: scores_blocked<4>(qf, d, k, score, s, t_begin, t_end); break;
  }
}

// One query token per row against the first `s` cache columns, query heads grouped on their KV
// head. q [R, nq, D] (pre-scaled); kc [>=R, nkv, L / 16, D, 16]; vc [>=R, nkv, L, D]; mask [R, s]
// additive (0 or -inf). Returns [R, nq * D]. Rounds the scores, the probabilities and the
// output to the model dtype, as bf16 matmuls and a float32 softmax cast back do.
//
// Shared prompts: when `src` [R] is given, row i reads cache columns [0, shared) from row
// src[i] (rows whose prompt is the same hold the same prompt columns). Rows are split between
// threads in order, so the rows of one group run on one thread back to back and their prompt's
// keys and values come from L2 instead of DRAM after the first row: the decode step's cache
// reads drop by up to (G - 1) / G of the prompt's share. Results are identical either way.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc,
                            const at::Tensor& mask, int64_t s, const std::optional<at::Tensor>& src,
                            int64_t shared) {
  const int64_t r = q.size(0), nq = q.size(1), d = q.size(2);
  TORCH_CHECK(kc.dim() == 5 && kc.size(4) == W, "kc: blocked keys [R, nkv, L / 16, D, 16]");
  const int64_t nkv = kc.size(1), len = vc.size(2), kblocks = kc.size(2), rep = nq / nkv;
  TORCH_CHECK(q.is_contiguous() && kc.is_contiguous() && vc.is_contiguous() && mask.is_contiguous(),
              "contiguous inputs");
  TORCH_CHECK(nq % nkv == 0 && kc.size(3) == d && s <= len && mask.size(0) == r && mask.size(1) == s,
              "shapes");
  TORCH_CHECK(kc.size(0) >= r && vc.size(0) >= r && vc.size(1) == nkv && kblocks * W >= len && vc.size(3) == d,
              "cache shapes");
  TORCH_CHECK(kc.scalar_type() == q.scalar_type() && vc.scalar_type() == q.scalar_type() &&
                  mask.scalar_type() == q.scalar_type(),
              "one dtype for q, the cache and the mask");
  const int64_t* sp = nullptr;
  if (src.has_value()) {
    TORCH_CHECK(src->scalar_type() == at::kLong && src->is_contiguous() && src->numel() == r, "src: int64 [R]");
    sp = src->data_ptr<int64_t>();
    for (int64_t i = 0; i < r; ++i) TORCH_CHECK(sp[i] >= 0 && sp[i] < kc.size(0), "src row out of range");
  }
  const int64_t sh = sp != nullptr ? std::min(std::max<int64_t>(shared, 0), s) : 0;
  auto out = at::empty({r, nq * d}, q.options());
  dispatch(q.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    const S* qp = ptr<S>(q);
    const S* kp = ptr<S>(kc);
    const S* vp = ptr<S>(vc);
    const S* mp = ptr<S>(mask);
    S* op = ptr<S>(out);
    at::parallel_for(0, r * nkv, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> score(rep * s), acc(rep * d), qf(rep * d);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t i = task / nkv, g = task % nkv;
        const int64_t si = sp != nullptr ? sp[i] : i;
        const S* k = kp + (i * nkv + g) * kblocks * d * W;
        const S* v = vp + (i * nkv + g) * len * d;
        const S* ks = kp + (si * nkv + g) * kblocks * d * W;  // the shared prompt columns
        const S* vs = vp + (si * nkv + g) * len * d;
        const S* m = mp + i * s;
        for (int64_t a = 0; a < rep; ++a)
          for (int64_t j = 0; j < d; ++j) qf[a * d + j] = Io<S>::get(qp[(i * nq + g * rep + a) * d + j]);
        for (int64_t a0 = 0; a0 < rep; a0 += 4) {  // scores = q K^T, blocked keys
          const int nr = static_cast<int>(std::min<int64_t>(4, rep - a0));
          score_heads<S>(nr, qf.data() + a0 * d, d, ks, score.data() + a0 * s, s, 0, sh);
          score_heads<S>(nr, qf.data() + a0 * d, d, k, score.data() + a0 * s, s, sh, s);
        }
        for (int64_t a = 0; a < rep; ++a) {  // float32 softmax of the rounded, masked scores
          float* sa = score.data() + a * s;
          for (int64_t t = 0; t < s; ++t) sa[t] = Io<S>::round(Io<S>::round(sa[t]) + Io<S>::get(m[t]));
          const float inv = exp_shifted_inplace(sa, s);
          for (int64_t t = 0; t < s; ++t) sa[t] = Io<S>::round(sa[t] * inv);
        }
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t a0 = 0; a0 < rep; a0 += 4) {  // out = p V
          const int nr = static_cast<int>(std::min<int64_t>(4, rep - a0));
          value_heads<S>(nr, score.data() + a0 * s, s, vs, d, acc.data() + a0 * d, 0, sh);
          value_heads<S>(nr, score.data() + a0 * s, s, v, d, acc.data() + a0 * d, sh, s);
        }
        for (int64_t a = 0; a < rep; ++a)
          for (int64_t j = 0; j < d; ++j) op[(i * nq + g * rep + a) * d + j] = Io<S>::put(acc[a * d + j]);
      }
    });
  });
  return out;
}

// o[j] = round(round(silu(g[j])) * u[j]) for j < n, 16 lanes at a time then the rest: the
// rounding of PyTorch's silu then product, shared by the decode step and the training MLP.
template <typename S>
inline void silu_times(const S* g, const S* u, S* o, int64_t n) {
  int64_t j = 0;
  for (; j + W <= n; j += W) {
    const vf x = load16(g + j);
    store16(o + j, round16(x / (1.f + exp_v(-x)), S{}) * load16(u + j));
  }
  for (; j < n; ++j) {
    const float x = Io<S>::get(g[j]);
    o[j] = Io<S>::put(Io<S>::round(x / (1.f + exp_f(-x))) * Io<S>::get(u[j]));
  }
}

// gu [N, 2 I] (gate then up, as the fused projection writes them) -> round(round(silu(g)) * u).
at::Tensor silu_mul(const at::Tensor& gu) {
  TORCH_CHECK(gu.is_contiguous() && gu.dim() == 2 && gu.size(1) % 2 == 0, "gu: [N, 2 I]");
  const int64_t n = gu.size(0), inter = gu.size(1) / 2;
  auto out = at::empty({n, inter}, gu.options());
  dispatch(gu.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    const S* src = ptr<S>(gu);
    S* op = ptr<S>(out);
    at::parallel_for(0, n, 2, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const S* g = src + i * 2 * inter;
        silu_times(g, g + inter, op + i * inter, inter);
      }
    });
  });
  return out;
}

// One token per row from softmax(z * inv_temp) by inverse-CDF sampling with the uniform u[i],
// and its log-probability. z [R, V] fp32 (the decode step's logits), u [R] fp32 in [0, 1).
// Two levels, as rollout.sample_tokens: sums of exp over blocks of 256 tokens, the block that
// holds u's share of the total, then its tokens; a token of zero probability is never drawn.
// Replaces the decode loop's division, log-softmax, exp and the sampler's block sums, cumsums,
// searches and gathers (~10 PyTorch ops and passes over [R, V] per step) with two passes.
std::vector<at::Tensor> sample_logits(const at::Tensor& z, double inv_temp, const at::Tensor& u) {
  TORCH_CHECK(z.dim() == 2 && z.is_contiguous() && z.scalar_type() == at::kFloat, "z: contiguous fp32 [R, V]");
  TORCH_CHECK(u.scalar_type() == at::kFloat && u.is_contiguous() && u.numel() == z.size(0), "u: fp32 [R]");
  TORCH_CHECK(inv_temp > 0, "inv_temp > 0");
  const int64_t r = z.size(0), vocab = z.size(1);
  constexpr int64_t kBlock = 256;
  const int64_t nb = (vocab + kBlock - 1) / kBlock;
  auto tok = at::empty({r}, z.options().dtype(at::kLong));
  auto logp = at::empty({r}, z.options());
  const float inv = static_cast<float>(inv_temp);
  const float* zp = z.data_ptr<float>();
  const float* up = u.data_ptr<float>();
  int64_t* tp = tok.data_ptr<int64_t>();
  float* lp = logp.data_ptr<float>();
  at::parallel_for(0, r, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> block(nb);
    for (int64_t i = begin; i < end; ++i) {
      const float* zr = zp + i * vocab;
      const float mx = max_scaled(zr, vocab, inv);
      if (!(mx > -std::numeric_limits<float>::infinity()) || std::isnan(mx)) {  // no finite logit
        tp[i] = 0;
        lp[i] = std::numeric_limits<float>::quiet_NaN();
        continue;
      }
      float total = 0.f;
      for (int64_t b = 0; b < nb; ++b) {
        const int64_t b0 = b * kBlock;
        block[b] = sum_exp(zr + b0, std::min(kBlock, vocab - b0), inv, mx);
        total += block[b];
      }
      const float target = up[i] * total;
      int64_t b = 0, last = -1;
      float before = 0.f;
      for (; b < nb; ++b) {  // the block holding the target (a non-empty one)
        if (block[b] > 0.f) {
          last = b;
          if (before + block[b] > target) break;
        }
        before += block[b];
      }
      if (b == nb) {  // rounding pushed the target past the end: the last non-empty block
        b = last;
        before = total - block[b];
      }
      const int64_t b0 = b * kBlock, n = std::min(kBlock, vocab - b0);
      int64_t pick = -1;
      float acc = before;
      for (int64_t j = 0; j < n; ++j) {
        const float e = exp_f(zr[b0 + j] * inv - mx);
        if (e > 0.f) {
          pick = j;
          acc += e;
          if (acc > target) break;
        }
      }
      const int64_t t = b0 + pick;
      tp[i] = t;
      lp[i] = zr[t] * inv - mx - std::log(total);
    }
  });
  return {tok, logp};
}

// The MLP's act(gate) * up in training, as PyTorch rounds it: y = round(round(silu(g)) * u).
// g, u [N] contiguous, one dtype. One pass instead of silu and a product.
at::Tensor silu_mul_fwd(const at::Tensor& g, const at::Tensor& u) {
  TORCH_CHECK(g.is_contiguous() && u.is_contiguous() && g.sizes() == u.sizes() && g.scalar_type() == u.scalar_type(),
              "g, u: contiguous, one shape and dtype");
  auto y = at::empty_like(g);
  const int64_t n = g.numel();
  dispatch(g.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    const S* gp = ptr<S>(g);
    const S* up = ptr<S>(u);
    S* yp = ptr<S>(y);
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      silu_times(gp + begin, up + begin, yp + begin, end - begin);
    });
  });
  return y;
}

// Its backward with autograd's roundings: ds = round(dy u), du = round(dy round(silu(g))),
// dg = round(ds sig(g) (1 + g (1 - sig(g)))) (silu_backward in float32 on rounded inputs).
std::vector<at::Tensor> silu_mul_bwd(const at::Tensor& dy, const at::Tensor& g, const at::Tensor& u) {
  TORCH_CHECK(dy.is_contiguous() && g.is_contiguous() && u.is_contiguous() && dy.sizes() == g.sizes() &&
                  g.sizes() == u.sizes() && dy.scalar_type() == g.scalar_type() && g.scalar_type() == u.scalar_type(),
              "dy, g, u: contiguous, one shape and dtype");
  auto dg = at::empty_like(g);
  auto du = at::empty_like(u);
  const int64_t n = g.numel();
  dispatch(g.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    const S* dp = ptr<S>(dy);
    const S* gp = ptr<S>(g);
    const S* up = ptr<S>(u);
    S* dgp = ptr<S>(dg);
    S* dup = ptr<S>(du);
    at::parallel_for(0, n, 4096, [&](int64_t begin, int64_t end) {
      int64_t j = begin;
      for (; j + W <= end; j += W) {
        const vf x = load16(gp + j), d = load16(dp + j);
        const vf sig = 1.f / (1.f + exp_v(-x));
        store16(dup + j, d * round16(x / (1.f + exp_v(-x)), S{}));
        const vf ds = round16(d * load16(up + j), S{});
        store16(dgp + j, ds * sig * (1.f + x * (1.f - sig)));
      }
      for (; j < end; ++j) {
        const float x = Io<S>::get(gp[j]), d = Io<S>::get(dp[j]);
        const float sig = 1.f / (1.f + exp_f(-x));
        dup[j] = Io<S>::put(d * Io<S>::round(x / (1.f + exp_f(-x))));
        const float ds = Io<S>::round(d * Io<S>::get(up[j]));
        dgp[j] = Io<S>::put(ds * sig * (1.f + x * (1.f - sig)));
      }
    });
  });
  return {dg, du};
}

// Per-row statistics of softmax(z * inv_temp) for one chunk of head logits z [C, V] (the
// model dtype, as the head matmul returns them), in three passes over each row while it sits
// in L2: the max, then the exponentials (kept, fp32) and their sum, then the probabilities.
// Returns (logp[target] [C], entropy [C], lse [C]) in fp32 and, when `grad`, p - onehot(target) [C, V] in z's dtype (the
// operand of the hidden-state gradient's matmul). Replaces ~12 full passes of PyTorch ops
// (a float copy, logsumexp's five, a subtraction, exp, a product, a sum, a scatter, a cast).
std::vector<at::Tensor> head_stats(const at::Tensor& z, const at::Tensor& target, double inv_temp, bool grad) {
  TORCH_CHECK(z.dim() == 2 && z.is_contiguous(), "z: contiguous [C, V]");
  TORCH_CHECK(target.scalar_type() == at::kLong && target.is_contiguous() && target.numel() == z.size(0),
              "target: int64 [C]");
  const int64_t c = z.size(0), vocab = z.size(1);
  auto f32 = z.options().dtype(at::kFloat);
  auto logp = at::empty({c}, f32), ent = at::empty({c}, f32), lse = at::empty({c}, f32);
  auto pm = grad ? at::empty({c, vocab}, z.options()) : at::empty({0}, z.options());
  const float inv = static_cast<float>(inv_temp);
  const int64_t* tp = target.data_ptr<int64_t>();
  dispatch(z.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    const S* zp = ptr<S>(z);
    S* pp = grad ? ptr<S>(pm) : nullptr;
    float* lp = logp.data_ptr<float>();
    float* ep = ent.data_ptr<float>();
    float* sp = lse.data_ptr<float>();
    at::parallel_for(0, c, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> ex(vocab);  // exp(z * inv - max) of one row, kept in L2 for the last pass
      for (int64_t i = begin; i < end; ++i) {
        const S* row = zp + i * vocab;
        TORCH_CHECK(tp[i] >= 0 && tp[i] < vocab, "target id out of range");
        const float mx = max_scaled(row, vocab, inv);
        vf sv{};
        int64_t j = 0;
        for (; j + W <= vocab; j += W) {
          const vf e = exp_v(load16(row + j) * inv - mx);
          store16(ex.data() + j, e);
          sv += e;
        }
        float sum = hsum(sv);
        for (; j < vocab; ++j) {
          ex[j] = exp_f(Io<S>::get(row[j]) * inv - mx);
          sum += ex[j];
        }
        const float l = mx + std::log(sum), norm = 1.f / sum;
        const int64_t t = tp[i];
        vf hv{};  // entropy = -sum p log p, 16 lanes; p = exp(z * inv - max) / sum
        S* prow = pp != nullptr ? pp + i * vocab : nullptr;
        for (j = 0; j + W <= vocab; j += W) {
          const vf e = load16(ex.data() + j) * norm;
          hv -= e * (load16(row + j) * inv - l);
          if (prow != nullptr) store16(prow + j, e);
        }
        float h = hsum(hv);
        for (; j < vocab; ++j) {
          const float e = ex[j] * norm;
          h -= e * (Io<S>::get(row[j]) * inv - l);
          if (prow != nullptr) prow[j] = Io<S>::put(e);
        }
        if (prow != nullptr)  // p - onehot at the target, rounded once
          prow[t] = Io<S>::put(ex[t] * norm - 1.f);
        lp[i] = Io<S>::get(row[tp[i]]) * inv - l;
        ep[i] = h;
        sp[i] = l;
      }
    });
  });
  return {logp, ent, lse, pm};
}

// The middle of eager attention in training, forward: p = softmax(round(round(w * scaling) +
// mask)) in float32 over the last dim, returned as float32 (kept for the backward, as
// PyTorch's softmax keeps its output) and rounded to w's dtype (the value matmul's operand).
// w [B, KV, REP * T, S] contiguous (the grouped q k^T); mask [B, 1, T, S] additive or absent;
// query row r of a head reads mask row r % T. Replaces a product, a sum, the softmax and a
// cast, each a full pass over [B, H, T, S].
std::vector<at::Tensor> attn_softmax_fwd(const at::Tensor& w, const std::optional<at::Tensor>& mask,
                                         double scaling, int64_t t) {
  TORCH_CHECK(w.dim() == 4 && w.is_contiguous() && t > 0 && w.size(2) % t == 0,
              "w: contiguous [B, KV, REP*T, S]");
  const int64_t b = w.size(0), per_b = w.size(1) * w.size(2), s = w.size(3);
  if (mask.has_value()) {
    TORCH_CHECK(mask->dim() == 4 && mask->is_contiguous() && mask->size(0) == b && mask->size(2) == t &&
                    mask->size(3) == s && mask->scalar_type() == w.scalar_type(),
                "mask: contiguous [B, 1, T, S] in w's dtype");
  }
  auto p32 = at::empty(w.sizes(), w.options().dtype(at::kFloat));
  auto p = at::empty(w.sizes(), w.options());
  const float sc = static_cast<float>(scaling);
  dispatch(w.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    const S* wp = ptr<S>(w);
    const S* mp = mask.has_value() ? ptr<S>(*mask) : nullptr;
    float* qp = p32.data_ptr<float>();
    S* op = ptr<S>(p);
    at::parallel_for(0, b * per_b, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const S* x = wp + r * s;
        float* y = qp + r * s;
        const S* m = mp != nullptr ? mp + ((r / per_b) * t + (r % per_b) % t) * s : nullptr;
        int64_t j = 0;
        for (; j + W <= s; j += W) {
          const vf v = round16(load16(x + j) * sc, S{});
          store16(y + j, m != nullptr ? round16(v + load16(m + j), S{}) : v);
        }
        for (; j < s; ++j) {
          const float v = Io<S>::round(Io<S>::get(x[j]) * sc);
          y[j] = m != nullptr ? Io<S>::round(v + Io<S>::get(m[j])) : v;
        }
        const float inv = exp_shifted_inplace(y, s);
        S* o = op + r * s;
        j = 0;
        for (; j + W <= s; j += W) {
          const vf e = load16(y + j) * inv;
          store16(y + j, e);
          store16(o + j, e);
        }
        for (; j < s; ++j) {
          y[j] *= inv;
          o[j] = Io<S>::put(y[j]);
        }
      }
    });
  });
  return {p32, p};
}

// Its backward: dw = round(round(p * (g - sum(g * p))) * scaling), p the float32 softmax, g the
// gradient of the rounded probabilities; the rounding points are those of autograd through the
// PyTorch forward (the softmax input's cast, then the scaling product).
at::Tensor attn_softmax_bwd(const at::Tensor& g, const at::Tensor& p32, double scaling) {
  TORCH_CHECK(g.is_contiguous() && p32.is_contiguous() && g.sizes() == p32.sizes(), "g, p: same contiguous shape");
  TORCH_CHECK(p32.scalar_type() == at::kFloat, "p: float32");
  const int64_t s = g.size(-1), rows = g.numel() / s;
  auto dw = at::empty(g.sizes(), g.options());
  const float sc = static_cast<float>(scaling);
  dispatch(g.scalar_type(), [&](auto tag) {
    using S = decltype(tag);
    const S* gp = ptr<S>(g);
    const float* pp = p32.data_ptr<float>();
    S* op = ptr<S>(dw);
    at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const S* gr = gp + r * s;
        const float* pr = pp + r * s;
        S* o = op + r * s;
        vf acc{};
        int64_t j = 0;
        for (; j + W <= s; j += W) acc += load16(gr + j) * load16(pr + j);
        float dot = hsum(acc);
        for (; j < s; ++j) dot += Io<S>::get(gr[j]) * pr[j];
        j = 0;
        for (; j + W <= s; j += W)
          store16(o + j, round16(load16(pr + j) * (load16(gr + j) - dot), S{}) * sc);
        for (; j < s; ++j) o[j] = Io<S>::put(Io<S>::round(pr[j] * (Io<S>::get(gr[j]) - dot)) * sc);
      }
    });
  });
  return dw;
}

}  // namespace

TORCH_LIBRARY(openrft_cpu, m) {
  m.def("add_rms_norm(Tensor(a!) x, Tensor? y, Tensor w, float eps, ScalarType dtype) -> Tensor");
  m.def(
      "rope_write(Tensor qkv, Tensor pos, Tensor cos, Tensor sin, Tensor(a!) kc, Tensor(b!) vc, int col, "
      "int nq, int nkv, float scale) -> Tensor");
  m.def("decode_attention(Tensor q, Tensor kc, Tensor vc, Tensor mask, int s, Tensor? src, int shared) -> Tensor");
  m.def("silu_mul(Tensor gu) -> Tensor");
  m.def("head_stats(Tensor z, Tensor target, float inv_temp, bool grad) -> Tensor[]");
  m.def("attn_softmax_fwd(Tensor w, Tensor? mask, float scaling, int t) -> Tensor[]");
  m.def("attn_softmax_bwd(Tensor g, Tensor p32, float scaling) -> Tensor");
  m.def("rms_norm_fwd(Tensor x, Tensor w, float eps) -> Tensor[]");
  m.def("sample_logits(Tensor z, float inv_temp, Tensor u) -> Tensor[]");
  m.def("silu_mul_fwd(Tensor g, Tensor u) -> Tensor");
  m.def("silu_mul_bwd(Tensor dy, Tensor g, Tensor u) -> Tensor[]");
  m.def("rms_norm_bwd(Tensor g, Tensor x, Tensor w, Tensor rstd) -> Tensor");
}

TORCH_LIBRARY_IMPL(openrft_cpu, CPU, m) {
  m.impl("add_rms_norm", &add_rms_norm);
  m.impl("rope_write", &rope_write);
  m.impl("decode_attention", &decode_attention);
  m.impl("silu_mul", &silu_mul);
  m.impl("head_stats", &head_stats);
  m.impl("attn_softmax_fwd", &attn_softmax_fwd);
  m.impl("attn_softmax_bwd", &attn_softmax_bwd);
  m.impl("rms_norm_fwd", &rms_norm_fwd);
  m.impl("sample_logits", &sample_logits);
  m.impl("silu_mul_fwd", &silu_mul_fwd);
  m.impl("silu_mul_bwd", &silu_mul_bwd);
  m.impl("rms_norm_bwd", &rms_norm_bwd);
}
