// Fused LSTM / GRU sequence kernels for the CPU, exposed to JAX as XLA FFI custom calls.
//
// Forward and backward of the whole sequence. The forward does the input projection step by step
// with the recurrent GEMM (LSTM: z_t = b + [x_t, h_{t-1}] [W_x; W_h]; GRU: b + x_t W_x, then the
// h W_h GEMMs), so no [T, B, nH] buffer of G = X W_x + b is made, then the gate nonlinearities.
// The per-step GEMMs: a packed AVX2 + FMA micro-kernel when small (below kMicroMacs), else
// OpenBLAS (scipy-openblas32, symbols prefixed `scipy_`). The gate math: 8-lane AVX2 + FMA where
// the CPU has it (checked at load), else the scalar code. The backward pass runs the per-step
// recurrent GEMMs (dz W_h^T) and also returns the weight and input gradients dW_x, dW_h, db (GRU:
// and db_hn) and dxs: the gate pre-activation gradients dz of a chunk of steps are kept in a
// scratch buffer, and one GEMM per chunk adds their part of the weight gradients (see
// chunk_steps), on a second thread overlapped with the recurrence where there is a core for it
// (Pipe), so no [T, B, nH] buffer of dz is made. Large outputs are advised huge pages
// (advise_huge). benchmarks/native_profile.py times each part.
//
// Layout: row-major, time-major. xs [T, B, D], W_x [D, nH], b [nH], W_h [H, nH], carries [B, H], mask / resets [T, B]
// as float 0/1. Gate orders: LSTM (i, f, g, o); GRU (r, z, n). `reverse` runs the steps from T-1
// down to 0. A masked step (mask 0) keeps the carry; a reset step (resets 1) starts from the reset
// carry (hr, cr) instead of the previous one (resets are only set at valid steps).
// Deterministic: a fixed OpenBLAS thread count, a fixed path per size, and a fixed order of
// every sum (the micro-kernel: one accumulator per output, k ascending; the weight gradients:
// chunks of steps fixed by B and T, added in a fixed order).
//
// Equations: Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 1997 (with the
// forget gate of Gers, Schmidhuber & Cummins 2000); Cho et al., "Learning Phrase Representations
// using RNN Encoder-Decoder for Statistical Machine Translation", EMNLP 2014.

#include <Python.h>
#include <sys/mman.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "cblas.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ----------------------------------------------------------------------- vectorisable math

// exp(x) by range reduction x = n ln2 + r and a degree-6 polynomial on |r| <= ln2/2 (Cephes
// coefficients); branch-free, so GCC vectorises the loops that inline it. Relative error ~1e-7.
static inline __attribute__((always_inline)) float fexp(float x) {
  x = x > 88.0f ? 88.0f : x;
  x = x < -87.0f ? -87.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: float + magic rounds to the nearest integer
  float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float s;
  std::memcpy(&s, &e, sizeof(s));
  return p * s;
}

static inline __attribute__((always_inline)) float fsigmoid(float x) { return 1.0f / (1.0f + fexp(-x)); }

// tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|): no cancellation for large |x|.
static inline __attribute__((always_inline)) float ftanh(float x) {
  float a = x < 0.0f ? -x : x;
  float e = fexp(-2.0f * a);
  float t = (1.0f - e) / (1.0f + e);
  return x < 0.0f ? -t : t;
}

#define RNN_CLONES __attribute__((target_clones("avx2", "default")))

// ----------------------------------------------------------------------- elementwise parts

// LSTM step, one row: z [4H] pre-activations (in place -> activated gates i, f, g, o). Two
// simple passes (the gates, then the cell) so that both vectorise.
RNN_CLONES void lstm_row_fwd_scalar(float* __restrict z, const float* __restrict c_in, float* __restrict c_out,
                             float* __restrict h_out, int H) {
  for (int j = 0; j < 2 * H; ++j) z[j] = fsigmoid(z[j]);
  for (int j = 2 * H; j < 3 * H; ++j) z[j] = ftanh(z[j]);
  for (int j = 3 * H; j < 4 * H; ++j) z[j] = fsigmoid(z[j]);
  const float* zi = z;
  const float* zf = z + H;
  const float* zg = z + 2 * H;
  const float* zo = z + 3 * H;
  for (int j = 0; j < H; ++j) {
    float c = zf[j] * c_in[j] + zi[j] * zg[j];
    c_out[j] = c;
    h_out[j] = zo[j] * ftanh(c);
  }
}

// LSTM backward, one row: gates (i, f, g, o), c_in, c (after), dh, dc -> dz [4H], dc_prev.
RNN_CLONES void lstm_row_bwd_scalar(const float* __restrict gate, const float* __restrict c_in,
                             const float* __restrict c, const float* __restrict dh,
                             const float* __restrict dc, float* __restrict dz,
                             float* __restrict dc_prev, int H) {
  const float* gi = gate;
  const float* gf = gate + H;
  const float* gg = gate + 2 * H;
  const float* go = gate + 3 * H;
  for (int j = 0; j < H; ++j) {
    float i = gi[j], f = gf[j], g = gg[j], o = go[j];
    float tc = ftanh(c[j]);
    float dct = dc[j] + dh[j] * o * (1.0f - tc * tc);
    dz[j] = dct * g * i * (1.0f - i);
    dz[H + j] = dct * c_in[j] * f * (1.0f - f);
    dz[2 * H + j] = dct * i * (1.0f - g * g);
    dz[3 * H + j] = dh[j] * tc * o * (1.0f - o);
    dc_prev[j] = dct * f;
  }
}

// GRU: r, z from pre-activations (in place) for one row of [2H].
RNN_CLONES void sigmoid_row_scalar(float* __restrict z, int n) {
  for (int j = 0; j < n; ++j) z[j] = fsigmoid(z[j]);
}

// GRU candidate and new carry, one row. reset after: npre = gn + r*hn (hn = a_n + b_hn);
// reset before: npre = gn + an (an = (r*h) W_hn). n stored into gn's slot.
RNN_CLONES void gru_row_out_scalar(const float* __restrict rz, float* __restrict gn, const float* __restrict q,
                            int after, const float* __restrict h_in, float* __restrict h_out, int H) {
  for (int j = 0; j < H; ++j) {
    float pre = after ? gn[j] + rz[j] * q[j] : gn[j] + q[j];
    float n = ftanh(pre);
    gn[j] = n;
    float z = rz[H + j];
    h_out[j] = h_in[j] + z * (n - h_in[j]);
  }
}

// GRU backward, one valid row: gates (r, z, n), h_in, hn (reset after), dh -> d (dG row: the z and
// n blocks; the r block too when reset after), dhp = dh (1 - z), dq = dn_pre r (reset after).
RNN_CLONES void gru_row_bwd_scalar(const float* __restrict gate, const float* __restrict hi,
                            const float* __restrict hn, const float* __restrict dh, float* __restrict d,
                            float* __restrict dhp, float* __restrict dq, int after, int H) {
  for (int j = 0; j < H; ++j) {
    float z = gate[H + j], n = gate[2 * H + j], dhj = dh[j];
    d[H + j] = dhj * (n - hi[j]) * z * (1.0f - z);
    d[2 * H + j] = dhj * z * (1.0f - n * n);
    dhp[j] = dhj * (1.0f - z);
  }
  if (after) {
    for (int j = 0; j < H; ++j) {
      float r = gate[j], dnp = d[2 * H + j];
      d[j] = dnp * hn[j] * r * (1.0f - r);
      dq[j] = dnp * r;
    }
  }
}

// GRU backward (reset before), one valid row: the r block of dG and dh += d(rh) r.
RNN_CLONES void gru_row_bwd_r_scalar(const float* __restrict gate, const float* __restrict hi,
                              const float* __restrict drh, float* __restrict d, float* __restrict dhp, int H) {
  for (int j = 0; j < H; ++j) {
    float r = gate[j];
    d[j] = drh[j] * hi[j] * r * (1.0f - r);
    dhp[j] += drh[j] * r;
  }
}

// ----------------------------------------------------------------------- AVX2 + FMA paths

// Chosen at run time (`g_isa`): the 8-lane AVX2 + FMA gate math and the packed small-GEMM
// micro-kernel where the CPU has both (`__builtin_cpu_supports`), else the scalar code above and
// OpenBLAS. Compiled for AVX2 + FMA by the pragma below whatever the build's -march, so a plain -O3
// build gets them. Every lane runs the same instructions, so results do not depend on where a row
// starts, and the tail of a row (H not a multiple of 8) is done by masked loads and stores with
// the same arithmetic.

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define RNN_HAVE_AVX2 1
}  // namespace
#include <immintrin.h>
namespace {
#pragma GCC push_options
#pragma GCC target("avx2,fma")

// exp of 8 lanes: the range reduction and Cephes polynomial of fexp, with fused multiply-adds.
static inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

// 1 / d: the 12-bit hardware estimate and one Newton step (relative error ~1e-7), a quarter of
// the time of a division; d in [1, 2e38] here.
static inline __m256 recip8(__m256 d) {
  const __m256 r = _mm256_rcp_ps(d);
  return _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(2.0f)));
}

static inline __m256 sig8(__m256 x) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return recip8(_mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

// tanh(x) = sign(x) (1 - e) / (1 + e), e = exp(-2|x|), as ftanh.
static inline __m256 tanh8(__m256 x) {
  const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
  __m256 a = _mm256_andnot_ps(sign, x);
  __m256 e = exp8(_mm256_mul_ps(a, _mm256_set1_ps(-2.0f)));
  __m256 t = _mm256_mul_ps(_mm256_sub_ps(one, e), recip8(_mm256_add_ps(one, e)));
  return _mm256_or_ps(t, _mm256_and_ps(x, sign));
}

static inline __m256 one_minus(__m256 x) { return _mm256_sub_ps(_mm256_set1_ps(1.0f), x); }

alignas(32) const int32_t kMaskTable[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

// The first n (1..8) lanes.
static inline __m256i lanes(int n) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + 8 - n));
}

struct Full {  // 8 whole lanes
  __m256 ld(const float* p) const { return _mm256_loadu_ps(p); }
  void st(float* p, __m256 v) const { _mm256_storeu_ps(p, v); }
};
struct Part {  // the tail of a row: the first lanes only (masked lanes read 0 and are not written)
  __m256i m;
  __m256 ld(const float* p) const { return _mm256_maskload_ps(p, m); }
  void st(float* p, __m256 v) const { _mm256_maskstore_ps(p, m, v); }
};

// f(j, io) for j = 0, 8, 16, ... < n; the last block through masked loads / stores.
template <class F>
static inline void loop8(int n, F&& f) {
  int j = 0;
  for (; j + 8 <= n; j += 8) f(j, Full{});
  if (j < n) f(j, Part{lanes(n - j)});
}

// Two passes (the four gates, then the cell): in one, tanh(c) would wait on the three gates'
// chains of dependent operations, and the loop would run at their latency, not the FPU's rate.
void lstm_row_fwd_avx2(float* __restrict z, const float* __restrict c_in, float* __restrict c_out,
                       float* __restrict h_out, int H) {
  loop8(H, [&](int j, auto io) {
    io.st(z + j, sig8(io.ld(z + j)));
    io.st(z + H + j, sig8(io.ld(z + H + j)));
    io.st(z + 2 * H + j, tanh8(io.ld(z + 2 * H + j)));
    io.st(z + 3 * H + j, sig8(io.ld(z + 3 * H + j)));
  });
  loop8(H, [&](int j, auto io) {
    __m256 c = _mm256_fmadd_ps(io.ld(z + H + j), io.ld(c_in + j), _mm256_mul_ps(io.ld(z + j), io.ld(z + 2 * H + j)));
    io.st(c_out + j, c);
    io.st(h_out + j, _mm256_mul_ps(io.ld(z + 3 * H + j), tanh8(c)));
  });
}

void lstm_row_bwd_avx2(const float* __restrict gate, const float* __restrict c_in, const float* __restrict c,
                       const float* __restrict dh, const float* __restrict dc, float* __restrict dz,
                       float* __restrict dc_prev, int H) {
  loop8(H, [&](int j, auto io) {
    __m256 i = io.ld(gate + j), f = io.ld(gate + H + j), g = io.ld(gate + 2 * H + j), o = io.ld(gate + 3 * H + j);
    __m256 tc = tanh8(io.ld(c + j)), dhj = io.ld(dh + j);
    __m256 dct = _mm256_fmadd_ps(_mm256_mul_ps(dhj, o), one_minus(_mm256_mul_ps(tc, tc)), io.ld(dc + j));
    io.st(dz + j, _mm256_mul_ps(_mm256_mul_ps(dct, g), _mm256_mul_ps(i, one_minus(i))));
    io.st(dz + H + j, _mm256_mul_ps(_mm256_mul_ps(dct, io.ld(c_in + j)), _mm256_mul_ps(f, one_minus(f))));
    io.st(dz + 2 * H + j, _mm256_mul_ps(_mm256_mul_ps(dct, i), one_minus(_mm256_mul_ps(g, g))));
    io.st(dz + 3 * H + j, _mm256_mul_ps(_mm256_mul_ps(dhj, tc), _mm256_mul_ps(o, one_minus(o))));
    io.st(dc_prev + j, _mm256_mul_ps(dct, f));
  });
}

void sigmoid_row_avx2(float* __restrict z, int n) {
  loop8(n, [&](int j, auto io) { io.st(z + j, sig8(io.ld(z + j))); });
}

void gru_row_out_avx2(const float* __restrict rz, float* __restrict gn, const float* __restrict q, int after,
                      const float* __restrict h_in, float* __restrict h_out, int H) {
  loop8(H, [&](int j, auto io) {
    __m256 pre = after ? _mm256_fmadd_ps(io.ld(rz + j), io.ld(q + j), io.ld(gn + j))
                       : _mm256_add_ps(io.ld(gn + j), io.ld(q + j));
    __m256 n = tanh8(pre), hi = io.ld(h_in + j);
    io.st(gn + j, n);
    io.st(h_out + j, _mm256_fmadd_ps(io.ld(rz + H + j), _mm256_sub_ps(n, hi), hi));
  });
}

void gru_row_bwd_avx2(const float* __restrict gate, const float* __restrict hi, const float* __restrict hn,
                      const float* __restrict dh, float* __restrict d, float* __restrict dhp, float* __restrict dq,
                      int after, int H) {
  loop8(H, [&](int j, auto io) {
    __m256 z = io.ld(gate + H + j), n = io.ld(gate + 2 * H + j), dhj = io.ld(dh + j);
    io.st(d + H + j, _mm256_mul_ps(_mm256_mul_ps(dhj, _mm256_sub_ps(n, io.ld(hi + j))), _mm256_mul_ps(z, one_minus(z))));
    __m256 dnp = _mm256_mul_ps(_mm256_mul_ps(dhj, z), one_minus(_mm256_mul_ps(n, n)));
    io.st(d + 2 * H + j, dnp);
    io.st(dhp + j, _mm256_mul_ps(dhj, one_minus(z)));
    if (after) {
      __m256 r = io.ld(gate + j);
      io.st(d + j, _mm256_mul_ps(_mm256_mul_ps(dnp, io.ld(hn + j)), _mm256_mul_ps(r, one_minus(r))));
      io.st(dq + j, _mm256_mul_ps(dnp, r));
    }
  });
}

void gru_row_bwd_r_avx2(const float* __restrict gate, const float* __restrict hi, const float* __restrict drh,
                        float* __restrict d, float* __restrict dhp, int H) {
  loop8(H, [&](int j, auto io) {
    __m256 r = io.ld(gate + j), x = io.ld(drh + j);
    io.st(d + j, _mm256_mul_ps(_mm256_mul_ps(x, io.ld(hi + j)), _mm256_mul_ps(r, one_minus(r))));
    io.st(dhp + j, _mm256_fmadd_ps(x, r, io.ld(dhp + j)));
  });
}

// C [MR rows, nc <= 16 columns] = (acc ? Cin : 0) + A [MR, K] P, P one packed panel [K, 16]. One
// accumulator per output, k ascending: a fixed order of every sum.
#ifndef RNN_MR
#define RNN_MR 4
#endif
template <int MR>
static inline void micro16(const float* __restrict A, int64_t lda, const float* __restrict P, int K,
                           const float* Cin, int64_t ldcin, float* C, int64_t ldc, int nc, bool acc) {
  __m256 c0[MR], c1[MR];
  const bool full = nc == 16;
  const __m256i m0 = lanes(nc >= 8 ? 8 : nc), m1 = lanes(nc > 8 ? nc - 8 : 1);
  for (int r = 0; r < MR; ++r) {
    if (!acc) {
      c0[r] = _mm256_setzero_ps();
      c1[r] = _mm256_setzero_ps();
    } else if (full) {
      c0[r] = _mm256_loadu_ps(Cin + r * ldcin);
      c1[r] = _mm256_loadu_ps(Cin + r * ldcin + 8);
    } else {
      c0[r] = _mm256_maskload_ps(Cin + r * ldcin, m0);
      c1[r] = nc > 8 ? _mm256_maskload_ps(Cin + r * ldcin + 8, m1) : _mm256_setzero_ps();
    }
  }
  for (int k = 0; k < K; ++k) {
    const __m256 w0 = _mm256_loadu_ps(P + 16 * k), w1 = _mm256_loadu_ps(P + 16 * k + 8);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
      c0[r] = _mm256_fmadd_ps(a, w0, c0[r]);
      c1[r] = _mm256_fmadd_ps(a, w1, c1[r]);
    }
  }
  for (int r = 0; r < MR; ++r) {
    if (full) {
      _mm256_storeu_ps(C + r * ldc, c0[r]);
      _mm256_storeu_ps(C + r * ldc + 8, c1[r]);
    } else {
      _mm256_maskstore_ps(C + r * ldc, m0, c0[r]);
      if (nc > 8) _mm256_maskstore_ps(C + r * ldc + 8, m1, c1[r]);
    }
  }
}

// C [M, N] = (acc ? Cin : 0) + A [M, K] Bop, Bop packed in panels of 16 columns (`pack`): each
// panel stays in L1 while the row blocks of 4 run over it (blocks of 6 rows, 12 accumulators,
// measured 2x slower with GCC 12: the accumulators spill).
void gemm_packed_avx2(int M, int N, int K, const float* A, int64_t lda, const float* P, const float* Cin,
                      int64_t ldcin, float* C, int64_t ldc, bool acc) {
  for (int p = 0; p * 16 < N; ++p) {
    const int nc = N - 16 * p < 16 ? N - 16 * p : 16;
    const float* Pp = P + int64_t(p) * K * 16;
    const float* ci = Cin + 16 * p;
    float* co = C + 16 * p;
    int r = 0;
    for (; r + RNN_MR <= M; r += RNN_MR) micro16<RNN_MR>(A + r * lda, lda, Pp, K, ci + r * ldcin, ldcin, co + r * ldc, ldc, nc, acc);
    switch (M - r) {
#if RNN_MR > 4
      case 5: micro16<5>(A + r * lda, lda, Pp, K, ci + r * ldcin, ldcin, co + r * ldc, ldc, nc, acc); break;
      case 4: micro16<4>(A + r * lda, lda, Pp, K, ci + r * ldcin, ldcin, co + r * ldc, ldc, nc, acc); break;
#endif
      case 3: micro16<3>(A + r * lda, lda, Pp, K, ci + r * ldcin, ldcin, co + r * ldc, ldc, nc, acc); break;
      case 2: micro16<2>(A + r * lda, lda, Pp, K, ci + r * ldcin, ldcin, co + r * ldc, ldc, nc, acc); break;
      case 1: micro16<1>(A + r * lda, lda, Pp, K, ci + r * ldcin, ldcin, co + r * ldc, ldc, nc, acc); break;
      default: break;
    }
  }
}

#pragma GCC pop_options
#endif  // x86-64

// 1: AVX2 + FMA (the CPU has both), 0: the scalar code and OpenBLAS. Set once at load.
int g_isa = 0;

void detect_isa() {
#ifdef RNN_HAVE_AVX2
  __builtin_cpu_init();
  g_isa = (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) ? 1 : 0;
#endif
}

#ifdef RNN_HAVE_AVX2
#define RNN_DISPATCH(name, ...) \
  (g_isa ? name##_avx2(__VA_ARGS__) : name##_scalar(__VA_ARGS__))
#else
#define RNN_DISPATCH(name, ...) name##_scalar(__VA_ARGS__)
#endif

inline void lstm_row_fwd(float* z, const float* c_in, float* c_out, float* h_out, int H) {
  RNN_DISPATCH(lstm_row_fwd, z, c_in, c_out, h_out, H);
}
inline void lstm_row_bwd(const float* gate, const float* c_in, const float* c, const float* dh, const float* dc,
                         float* dz, float* dc_prev, int H) {
  RNN_DISPATCH(lstm_row_bwd, gate, c_in, c, dh, dc, dz, dc_prev, H);
}
inline void sigmoid_row(float* z, int n) { RNN_DISPATCH(sigmoid_row, z, n); }
inline void gru_row_out(const float* rz, float* gn, const float* q, int after, const float* h_in, float* h_out,
                        int H) {
  RNN_DISPATCH(gru_row_out, rz, gn, q, after, h_in, h_out, H);
}
inline void gru_row_bwd(const float* gate, const float* hi, const float* hn, const float* dh, float* d,
                        float* dhp, float* dq, int after, int H) {
  RNN_DISPATCH(gru_row_bwd, gate, hi, hn, dh, d, dhp, dq, after, H);
}
inline void gru_row_bwd_r(const float* gate, const float* hi, const float* drh, float* d, float* dhp, int H) {
  RNN_DISPATCH(gru_row_bwd_r, gate, hi, drh, d, dhp, H);
}

// ----------------------------------------------------------------------- BLAS helpers

// Per-step GEMMs smaller than this many multiply-adds run on one thread: splitting them costs more
// in synchronisation than it gains (and, on a loaded machine, a scheduler slice per step).
constexpr int64_t kParallelMacs = int64_t(1) << 22;
int g_threads = 1;            // OpenBLAS threads for large per-step GEMMs (the machine's cores)
std::mutex g_blas_mutex;      // one kernel at a time sets OpenBLAS's (global) thread count

// Holds the BLAS lock for one kernel call and sets the thread count its per-step GEMMs use.
struct BlasScope {
  std::lock_guard<std::mutex> lock;
  explicit BlasScope(int64_t macs) : lock(g_blas_mutex) {
    scipy_openblas_set_num_threads(macs >= kParallelMacs ? g_threads : 1);
  }
};

// The per-step recurrent GEMMs: the packed AVX2 micro-kernel when the GEMM is small (one thread;
// packing W_h once per kernel call), else OpenBLAS. `g_gemm`: 0 auto (the micro-kernel below
// kMicroMacs multiply-adds per step on an AVX2 + FMA CPU), 1 always OpenBLAS, 2 always the
// micro-kernel (where the CPU has AVX2 + FMA); set by `_kernels.set_gemm` (tests, profiles).
// kMicroMacs: measured on a 2-core EPYC (benchmarks/native_profile.py): the micro-kernel beats
// OpenBLAS's one-thread sgemm at B=32, H=64 (and H=256), and the per-step GEMMs at and above
// kParallelMacs run on all cores through OpenBLAS.
constexpr int64_t kMicroMacs = kParallelMacs;
int g_gemm = 0;
int g_huge = 1;  // advise_huge on (set_huge_pages; the profile compares)

inline bool use_micro(int64_t macs) {
  if (!g_isa || g_gemm == 1) return false;
  return g_gemm == 2 || macs < kMicroMacs;
}

// Bop [K, N] with Bop(k, j) = base[k sk + j sj], packed in panels of 16 columns ([K, 16] each,
// zero-padded past N) for gemm_packed_avx2.
void pack(std::vector<float>& P, const float* base, int64_t sk, int64_t sj, int K, int N) {
  const int np = (N + 15) / 16;
  P.assign(size_t(np) * K * 16, 0.0f);
  for (int p = 0; p < np; ++p)
    for (int k = 0; k < K; ++k)
      for (int l = 0; l < 16 && 16 * p + l < N; ++l)
        P[(size_t(p) * K + k) * 16 + l] = base[k * sk + (16 * p + l) * sj];
}

// One recurrent GEMM of a kernel call: C [M, N] = beta C + A [M, K] Bop with Bop = W (trans 0,
// W [K, N] with leading dimension ldw) or W^T (trans 1, W [N, K]), beta 0 or 1.
struct RecGemm {
  bool micro;
  bool trans;
  const float* w;
  int ldw, K, N;
  std::vector<float> P;
  RecGemm(int64_t macs, bool trans_, const float* w_, int ldw_, int K_, int N_)
      : micro(use_micro(macs)), trans(trans_), w(w_), ldw(ldw_), K(K_), N(N_) {
    if (micro) {
      if (trans) pack(P, w, 1, ldw, K, N);
      else pack(P, w, ldw, 1, K, N);
    }
  }
  // C = A Bop + (beta ? Cin : 0) (Cin may be C itself).
  void run(int M, const float* A, int lda, float beta, const float* Cin, int ldcin, float* C, int ldc) {
#ifdef RNN_HAVE_AVX2
    if (micro) {
      gemm_packed_avx2(M, N, K, A, lda, P.data(), Cin, ldcin, C, ldc, beta != 0.0f);
      return;
    }
#endif
    if (beta != 0.0f && Cin != C)
      for (int r = 0; r < M; ++r) std::memcpy(C + int64_t(r) * ldc, Cin + int64_t(r) * ldcin, N * sizeof(float));
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, trans ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, A, lda,
                      w, ldw, beta, C, ldc);
  }
  void run(int M, const float* A, int lda, float beta, float* C, int ldc) { run(M, A, lda, beta, C, ldc, C, ldc); }
};

// Ask for transparent huge pages on a large output buffer before the kernel first writes it.
// XLA's buffers above glibc's mmap threshold (32 MB) are fresh pages on every call, and with THP in
// "madvise" mode (the common default) each 4 KB first touch is a page fault (~3 us measured on a
// KVM guest: 25 ms for one [1000, 32, 256] buffer); 2 MB pages take 512x fewer. Only the whole 2 MB
// pages inside the buffer are advised; errors (no THP) are ignored; values are not affected.
inline void advise_huge(void* p, int64_t bytes) {
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (bytes < int64_t(4 * kHuge)) return;
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + uintptr_t(bytes)) & ~(kHuge - 1);
#ifdef MADV_HUGEPAGE
  if (hi > lo && g_huge) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#endif
}

using F32 = ffi::Buffer<ffi::F32>;
using R32 = ffi::ResultBuffer<ffi::F32>;

inline int64_t dim(const F32& b, int i) { return b.dimensions()[i]; }

// Whether any of the n flags is set (nonzero).
inline bool any_set(const float* f, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (f[i] != 0.0f) return true;
  return false;
}

// The time index of the k-th step the scan runs.
inline int64_t tidx(int64_t k, int64_t T, bool rev) { return rev ? T - 1 - k : k; }

// The carry entering step k (scan order), before resets: initial for k = 0, else the carry after
// step k - 1 (seq [T, B, H]).
inline const float* prev_carry(const float* seq, const float* init, int64_t k, int64_t T, bool rev,
                               int64_t BH) {
  return k == 0 ? init : seq + tidx(k - 1, T, rev) * BH;
}

// ----------------------------------------------------------------------- weight gradients

// The backward kernels accumulate the weight gradients themselves, a chunk of steps at a time, so
// no [T, B, nH] buffer of the gate gradients dz leaves the kernel: dz of kChunkRows / B steps
// (at least one, at most T) is kept in a scratch buffer, next to the transposed layer inputs of
// those steps (e.g. [x; h_prev; 1] as rows, steps as columns), then dW += inputs^T dz is one GEMM
// per chunk and dxs of the chunk is dz W_x^T. Chunks are fixed runs of the scan's steps
// (k in [c Kc, (c + 1) Kc)), accumulated from the last chunk to the first, and their rows are in
// time order: the chunks depend on (B, T) only, never on the thread count. The
// scratch stays in the L2 cache (256 rows: 256 KB of dz at nH = 256). `g_chunk_rows`: set by
// `_kernels.set_chunk_rows` (tests: many chunks on small sizes).
constexpr int64_t kChunkRows = 256;
int64_t g_chunk_rows = kChunkRows;

inline int64_t chunk_steps(int64_t B, int64_t T) {
  int64_t k = (g_chunk_rows + B - 1) / B;
  return k < 1 ? 1 : (k > T ? T : k);
}

// The chunk of scan step k: its first scan step c0, its number of steps n and its first time
// index t_lo (its steps are the time indices t_lo .. t_lo + n - 1, forward or reverse).
struct Chunk {
  int64_t c0, n, t_lo;
  Chunk(int64_t k, int64_t Kc, int64_t T, bool rev) {
    c0 = (k / Kc) * Kc;
    const int64_t c1 = c0 + Kc < T ? c0 + Kc : T;
    n = c1 - c0;
    t_lo = rev ? T - c1 : c0;
  }
};

// C [M, N] = (acc ? C : 0) + A [M, K] Bm [K, N], all row-major: a weight-gradient GEMM of a chunk
// (A: the transposed layer inputs, Bm: the chunk's dz). Its route is fixed per kernel call by the
// size of a whole chunk (use_micro): the packed AVX2 micro-kernel (Bm packed per chunk; one
// accumulator per output, k ascending) or OpenBLAS.
struct AccGemm {
  bool micro;
  std::vector<float> P;
  explicit AccGemm(int64_t macs) : micro(use_micro(macs)) {}
  void run(int M, int N, int K, const float* A, int lda, const float* Bm, int ldb, bool acc, float* C, int ldc) {
#ifdef RNN_HAVE_AVX2
    if (micro) {
      pack(P, Bm, ldb, 1, K, N);
      gemm_packed_avx2(M, N, K, A, lda, P.data(), C, ldc, C, ldc, acc);
      return;
    }
#endif
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, Bm, ldb,
                      acc ? 1.0f : 0.0f, C, ldc);
  }
};

// Whether the optional per-step cotangent dX [T or 1, B, H] is given ([1, B, H] with T > 1: zero).
inline bool given(const F32& a, int64_t T) { return dim(a, 0) == T; }

// Runs a backward kernel's chunk jobs (the weight-gradient and dxs GEMMs of a finished chunk) in
// order on a second thread, overlapped with the recurrence of the next chunk (which runs on one
// core), or inline when off. Each job does the same arithmetic in the same order either way, so
// the results do not depend on it. `submit` waits for the previous job first, so with two scratch
// buffers (one filled by the recurrence, one read by the job) none is reused while in use.
class Pipe {
 public:
  explicit Pipe(bool on) {
    if (on) th_ = std::thread([this] { loop(); });
  }
  ~Pipe() { finish(); }
  bool on() const { return th_.joinable(); }
  void submit(std::function<void()> f) {
    if (!on()) {
      f();
      return;
    }
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return !job_; });
    job_ = std::move(f);
    cv_.notify_all();
  }
  // Waits for the last job and ends the thread.
  void finish() {
    if (!on()) return;
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    th_.join();
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      cv_.wait(l, [&] { return job_ || stop_; });
      if (job_) {
        std::function<void()> f = job_;
        l.unlock();
        f();
        l.lock();
        job_ = nullptr;
        cv_.notify_all();
      } else {
        return;
      }
    }
  }
  std::thread th_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::function<void()> job_;
  bool stop_ = false;
};

// Whether a backward kernel overlaps its chunk GEMMs with the recurrence: with more than one core
// for the kernels (set_num_threads), more than one chunk, and per-step GEMMs that run on one
// thread (else those use all the cores). `g_pipe` (set_pipe, tests): 0 off, 1 auto.
int g_pipe = 1;
inline bool use_pipe(int64_t T, int64_t Kc, int64_t step_macs) {
  return g_pipe != 0 && g_threads > 1 && T > Kc && step_macs < kParallelMacs;
}

// ----------------------------------------------------------------------- LSTM

// The input projection is done here too, step by step: z_t = b + [x_t, h] [W_x; W_h], one GEMM
// with K = D + H. Not materialising G [T, B, 4H] keeps XLA's buffers of the call small: above
// glibc's mmap threshold (32 MB) every call maps fresh pages, and each first touch costs a page
// fault (~3 us on the measured VM; 24 ms for G at B=32, T=1000, H=64).
ffi::Error LstmFwdImpl(F32 X, F32 Wx, F32 bias, F32 Wh, F32 h0, F32 c0, F32 mask, F32 resets, F32 hr, F32 cr,
                       int32_t reverse, R32 hs, R32 cs, R32 gates) {
  const int64_t T = dim(X, 0), B = dim(X, 1), D = dim(X, 2), N = dim(Wh, 1), H = N / 4, K = D + H;
  if (dim(Wh, 0) != H || N != 4 * H || dim(Wx, 0) != D || dim(Wx, 1) != N || bias.element_count() != N ||
      dim(h0, 0) != B || dim(h0, 1) != H)
    return ffi::Error::InvalidArgument("lstm_fwd: inconsistent shapes");
  const bool rev = reverse != 0, keep = gates->dimensions()[0] == T;
  BlasScope blas(B * N * H);
  const float* x = X.typed_data();
  const float* m = mask.typed_data();
  const float* rs = resets.typed_data();
  float* hs_ = hs->typed_data();
  float* cs_ = cs->typed_data();
  float* z_ = gates->typed_data();
  advise_huge(hs_, T * B * H * 4);
  advise_huge(cs_, T * B * H * 4);
  advise_huge(z_, int64_t(gates->element_count()) * 4);
  std::vector<float> hin(B * H), cin(B * H), xh(B * K), wc(K * N);  // [x_t, h], [W_x; W_h]
  std::memcpy(wc.data(), Wx.typed_data(), D * N * sizeof(float));
  std::memcpy(wc.data() + D * N, Wh.typed_data(), H * N * sizeof(float));
  const int64_t BH = B * H, BN = B * N;
  RecGemm gw(B * N * K, false, wc.data(), N, K, N);
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = tidx(k, T, rev);
    const float* hp = prev_carry(hs_, h0.typed_data(), k, T, rev, BH);
    const float* cp = prev_carry(cs_, c0.typed_data(), k, T, rev, BH);
    const float* hi = hp;  // the carry entering the step: the previous one, or hr / cr at resets
    const float* ci = cp;
    if (any_set(rs + t * B, B)) {
      std::memcpy(hin.data(), hp, BH * sizeof(float));
      std::memcpy(cin.data(), cp, BH * sizeof(float));
      for (int64_t b = 0; b < B; ++b) {
        if (rs[t * B + b] != 0.0f) {
          std::memcpy(hin.data() + b * H, hr.typed_data() + b * H, H * sizeof(float));
          std::memcpy(cin.data() + b * H, cr.typed_data() + b * H, H * sizeof(float));
        }
      }
      hi = hin.data();
      ci = cin.data();
    }
    float* z = z_ + (keep ? t * BN : 0);
    for (int64_t b = 0; b < B; ++b) {
      std::memcpy(xh.data() + b * K, x + (t * B + b) * D, D * sizeof(float));
      std::memcpy(xh.data() + b * K + D, hi + b * H, H * sizeof(float));
    }
    gw.run(B, xh.data(), K, 1.0f, bias.typed_data(), 0, z, N);  // z = b + [x_t, h] [W_x; W_h]
    float* ho = hs_ + t * BH;
    float* co = cs_ + t * BH;
    for (int64_t b = 0; b < B; ++b) {
      if (m[t * B + b] != 0.0f) {
        lstm_row_fwd(z + b * N, ci + b * H, co + b * H, ho + b * H, H);
      } else {  // padded: keep the carry (the one before any reset), gates unused
        std::memcpy(ho + b * H, hp + b * H, H * sizeof(float));
        std::memcpy(co + b * H, cp + b * H, H * sizeof(float));
        std::memset(z + b * N, 0, N * sizeof(float));
      }
    }
  }
  return ffi::Error::Success();
}

// dys [T, B, H]: the cotangents of the outputs (used at valid steps only); dHs, dCs [T, B, H] or
// [1, B, H] (zero): of the history (the carry after each step); dhT, dcT [B, H]: of the final
// carry. Returns the weight gradients dW_x [D, 4H], dW_h [H, 4H], db [4H] (dW += [x, h_prev, 1]^T
// dz, a chunk of steps per GEMM), dxs [T, B, D] (dz W_x^T) and the gradients of the initial and the
// reset carries; h_prev of a step is hs of the step before (h0 first), hr at resets.
ffi::Error LstmBwdImpl(F32 X, F32 Wx, F32 Wh, F32 h0, F32 c0, F32 mask, F32 resets, F32 hr, F32 cr, F32 gates,
                       F32 hs, F32 cs, F32 dys, F32 dHs, F32 dCs, F32 dhT, F32 dcT, int32_t reverse, R32 dWx,
                       R32 dWh, R32 db, R32 dxs, R32 dh0, R32 dc0, R32 dhr, R32 dcr) {
  const int64_t T = dim(gates, 0), B = dim(gates, 1), N = dim(gates, 2), H = N / 4, D = dim(X, 2);
  if (dim(X, 0) != T || dim(X, 1) != B || dim(Wx, 0) != D || dim(Wx, 1) != N || dim(Wh, 0) != H ||
      dim(Wh, 1) != N || N != 4 * H || dim(hs, 0) != T || dim(dys, 0) != T || dim(h0, 0) != B || dim(h0, 1) != H)
    return ffi::Error::InvalidArgument("lstm_bwd: inconsistent shapes");
  const bool rev = reverse != 0, has_dhs = given(dHs, T), has_dcs = given(dCs, T);
  BlasScope blas(B * N * H);
  const float* x = X.typed_data();
  const float* w = Wh.typed_data();
  const float* m = mask.typed_data();
  const float* rs = resets.typed_data();
  const float* gt = gates.typed_data();
  const float* hs_ = hs.typed_data();
  const float* cs_ = cs.typed_data();
  const int64_t BH = B * H, BN = B * N, KA = D + H + 1;
  const int64_t Kc = chunk_steps(B, T), R = Kc * B;  // steps and rows of a chunk
  std::vector<float> dh(dhT.typed_data(), dhT.typed_data() + BH), dc(dcT.typed_data(), dcT.typed_data() + BH);
  std::vector<float> dhp(BH), dcp(BH);
  // the chunk's dz [R, 4H], its layer inputs [x; h_prev; 1] transposed [D + H + 1, R], and dW
  // (two of each when the chunk GEMMs run on the second thread: one filled, one read)
  const bool piped = use_pipe(T, Kc, B * N * H);
  std::vector<float> zcs[2], ats[2], wacc(KA * N);
  for (int i = 0; i < (piped ? 2 : 1); ++i) {
    zcs[i].resize(R * N);
    ats[i].resize(KA * R);
    std::fill(ats[i].begin() + (D + H) * R, ats[i].end(), 1.0f);
  }
  RecGemm gwt(B * N * H, true, w, N, N, H);
  RecGemm gdx(R * N * D, true, Wx.typed_data(), N, N, D);  // dxs = dz W_x^T
  AccGemm gw(KA * N * R);
  int cur = 0;
  float* dx_ = dxs->typed_data();
  advise_huge(dx_, T * B * D * 4);
  float* ghr = dhr->typed_data();
  float* gcr = dcr->typed_data();
  std::memset(ghr, 0, BH * sizeof(float));
  std::memset(gcr, 0, BH * sizeof(float));
  bool first = true;
  Pipe pipe(piped);
  for (int64_t k = T - 1; k >= 0; --k) {
    const int64_t t = tidx(k, T, rev);
    const Chunk ch(k, Kc, T, rev);
    const int64_t row0 = (t - ch.t_lo) * B;
    float* at = ats[cur].data();
    const float* hp = prev_carry(hs_, h0.typed_data(), k, T, rev, BH);
    const float* cp = prev_carry(cs_, c0.typed_data(), k, T, rev, BH);
    const float* gy = dys.typed_data() + t * BH;
    const float* gh = has_dhs ? dHs.typed_data() + t * BH : nullptr;
    const float* gc = has_dcs ? dCs.typed_data() + t * BH : nullptr;
    for (int64_t b = 0; b < B; ++b) {  // dh += (masked dy) + dHs; dc += dCs
      const int64_t o = b * H;
      const bool valid = m[t * B + b] != 0.0f;
      for (int64_t j = 0; j < H; ++j) dh[o + j] += (valid ? gy[o + j] : 0.0f) + (gh ? gh[o + j] : 0.0f);
      if (gc)
        for (int64_t j = 0; j < H; ++j) dc[o + j] += gc[o + j];
    }
    float* z = zcs[cur].data() + row0 * N;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t o = b * H, row = row0 + b;
      const bool reset = rs[t * B + b] != 0.0f;
      const float* hi = reset ? hr.typed_data() + o : hp + o;  // h_prev of this step
      for (int64_t j = 0; j < D; ++j) at[j * R + row] = x[(t * B + b) * D + j];
      for (int64_t j = 0; j < H; ++j) at[(D + j) * R + row] = hi[j];
      if (m[t * B + b] != 0.0f) {
        const float* ci = reset ? cr.typed_data() + o : cp + o;
        lstm_row_bwd(gt + t * BN + b * N, ci, cs_ + t * BH + o, dh.data() + o, dc.data() + o, z + b * N,
                     dcp.data() + o, H);
        std::memset(dhp.data() + o, 0, H * sizeof(float));
      } else {  // padded: dh, dc pass through, dz = 0
        std::memset(z + b * N, 0, N * sizeof(float));
        std::memcpy(dhp.data() + o, dh.data() + o, H * sizeof(float));
        std::memcpy(dcp.data() + o, dc.data() + o, H * sizeof(float));
      }
    }
    gwt.run(B, z, N, 1.0f, dhp.data(), H);  // dh_prev += dz W_h^T
    for (int64_t b = 0; b < B; ++b) {
      if (rs[t * B + b] != 0.0f) {  // the carry entering this step was the reset carry
        const int64_t o = b * H;
        for (int64_t j = 0; j < H; ++j) {
          ghr[o + j] += dhp[o + j];
          gcr[o + j] += dcp[o + j];
          dhp[o + j] = 0.0f;
          dcp[o + j] = 0.0f;
        }
      }
    }
    dh.swap(dhp);
    dc.swap(dcp);
    if (k == ch.c0) {  // the chunk is complete: dW += [x, h_prev, 1]^T dz; dxs = dz W_x^T
      const int rows = static_cast<int>(ch.n * B);
      const float* zp = zcs[cur].data();
      float* dxp = dx_ + ch.t_lo * B * D;
      pipe.submit([&gw, &gdx, &wacc, at, zp, dxp, rows, R, KA, N, acc = !first] {
        gw.run(KA, N, rows, at, R, zp, N, acc, wacc.data(), N);
        gdx.run(rows, zp, N, 0.0f, dxp, static_cast<int>(gdx.N));
      });
      first = false;
      if (piped) cur ^= 1;
    }
  }
  pipe.finish();
  std::memcpy(dWx->typed_data(), wacc.data(), D * N * sizeof(float));
  std::memcpy(dWh->typed_data(), wacc.data() + D * N, H * N * sizeof(float));
  std::memcpy(db->typed_data(), wacc.data() + (D + H) * N, N * sizeof(float));
  std::memcpy(dh0->typed_data(), dh.data(), BH * sizeof(float));
  std::memcpy(dc0->typed_data(), dc.data(), BH * sizeof(float));
  return ffi::Error::Success();
}

// ----------------------------------------------------------------------- GRU

// aux: reset after, hn = h W_hn + b_hn per step ([T, B, H] when training, else [1, B, H]);
// reset before, scratch for (r h) W_hn ([1, B, H] is enough).
// As for the LSTM, the input projection b + x_t W_x is done here step by step (no G buffer).
ffi::Error GruFwdImpl(F32 X, F32 Wx, F32 bias, F32 Wh, F32 bhn, F32 h0, F32 mask, F32 resets, F32 hr,
                      int32_t reverse, int32_t after, R32 hs, R32 gates, R32 aux) {
  const int64_t T = dim(X, 0), B = dim(X, 1), D = dim(X, 2), N = dim(Wh, 1), H = N / 3;
  if (dim(Wh, 0) != H || N != 3 * H || dim(Wx, 0) != D || dim(Wx, 1) != N || bias.element_count() != N ||
      dim(h0, 0) != B || dim(h0, 1) != H)
    return ffi::Error::InvalidArgument("gru_fwd: inconsistent shapes");
  const bool rev = reverse != 0, keep = gates->dimensions()[0] == T, keep_aux = aux->dimensions()[0] == T;
  BlasScope blas(B * N * H);
  const float* x = X.typed_data();
  const float* w = Wh.typed_data();
  const float* bn = bhn.typed_data();
  const float* m = mask.typed_data();
  const float* rs = resets.typed_data();
  float* hs_ = hs->typed_data();
  float* z_ = gates->typed_data();
  float* a_ = aux->typed_data();
  advise_huge(hs_, T * B * H * 4);
  advise_huge(z_, int64_t(gates->element_count()) * 4);
  advise_huge(a_, int64_t(aux->element_count()) * 4);
  const int64_t BH = B * H, BN = B * N;
  std::vector<float> hin(BH), a(BN), rh(BH);
  const int64_t macs = B * N * H;
  RecGemm g_x(B * N * D, false, Wx.typed_data(), N, D, N);
  RecGemm g_all(macs, false, w, N, H, after ? N : 0), g_rz(macs, false, w, N, H, after ? 0 : 2 * H),
      g_n(macs, false, w + 2 * H, N, H, after ? 0 : H);  // (N = 0: not used, nothing packed)
  for (int64_t k = 0; k < T; ++k) {
    const int64_t t = tidx(k, T, rev);
    const float* hp = prev_carry(hs_, h0.typed_data(), k, T, rev, BH);
    const float* hi = hp;  // the carry entering the step: the previous one, or hr at resets
    if (any_set(rs + t * B, B)) {
      std::memcpy(hin.data(), hp, BH * sizeof(float));
      for (int64_t b = 0; b < B; ++b)
        if (rs[t * B + b] != 0.0f) std::memcpy(hin.data() + b * H, hr.typed_data() + b * H, H * sizeof(float));
      hi = hin.data();
    }
    float* z = z_ + (keep ? t * BN : 0);
    float* q = a_ + (keep_aux ? t * BH : 0);
    g_x.run(B, x + t * B * D, D, 1.0f, bias.typed_data(), 0, z, N);  // z = b + x_t W_x
    float* ho = hs_ + t * BH;
    if (after) {  // a = h W_h (all three blocks); r, z from G + a; hn = a_n + b_hn
      g_all.run(B, hi, H, 0.0f, a.data(), N);
      for (int64_t b = 0; b < B; ++b) {
        float* zr = z + b * N;
        const float* ar = a.data() + b * N;
        for (int64_t j = 0; j < 2 * H; ++j) zr[j] += ar[j];
        sigmoid_row(zr, 2 * H);
        for (int64_t j = 0; j < H; ++j) q[b * H + j] = ar[2 * H + j] + bn[j];
      }
    } else {  // r, z from G + h W_hrz; then (r h) W_hn
      g_rz.run(B, hi, H, 1.0f, z, N);
      for (int64_t b = 0; b < B; ++b) {
        sigmoid_row(z + b * N, 2 * H);
        for (int64_t j = 0; j < H; ++j) rh[b * H + j] = z[b * N + j] * hi[b * H + j];
      }
      g_n.run(B, rh.data(), H, 0.0f, q, H);
    }
    for (int64_t b = 0; b < B; ++b) {
      if (m[t * B + b] != 0.0f) {
        gru_row_out(z + b * N, z + b * N + 2 * H, q + b * H, after, hi + b * H, ho + b * H, H);
      } else {
        std::memcpy(ho + b * H, hp + b * H, H * sizeof(float));
        std::memset(z + b * N, 0, N * sizeof(float));
        std::memset(q + b * H, 0, H * sizeof(float));
      }
    }
  }
  return ffi::Error::Success();
}

// dys [T, B, H]: the cotangents of the outputs (used at valid steps only); dHs [T, B, H] or
// [1, B, H] (zero): of the history; dhT [B, H]: of the final carry. Returns the weight gradients
// dW_x [D, 3H], dW_h [H, 3H], db [3H], db_hn [H] (reset after; else 0), dxs [T, B, D] and the
// gradients of the initial and the reset carries. With dG the gradient of the pre-activations'
// input part (r, z, n) and dq that of hn = h W_hn + b_hn (reset after), per chunk of steps:
// [dW_x; db] += [x, 1]^T dG, dW_h[:, :2H] += h_prev^T dG_rz, and dW_h[:, 2H:] (with db_hn) +=
// [h_prev, 1]^T dq (reset after) or (r h_prev)^T dG_n (reset before); dxs = dG W_x^T.
ffi::Error GruBwdImpl(F32 X, F32 Wx, F32 Wh, F32 h0, F32 mask, F32 resets, F32 hr, F32 gates, F32 aux, F32 hs,
                      F32 dys, F32 dHs, F32 dhT, int32_t reverse, int32_t after, R32 dWx, R32 dWh, R32 db,
                      R32 dbhn, R32 dxs, R32 dh0, R32 dhr) {
  const int64_t T = dim(gates, 0), B = dim(gates, 1), N = dim(gates, 2), H = N / 3, D = dim(X, 2);
  if (dim(X, 0) != T || dim(X, 1) != B || dim(Wx, 0) != D || dim(Wx, 1) != N || dim(Wh, 0) != H ||
      dim(Wh, 1) != N || N != 3 * H || dim(hs, 0) != T || dim(dys, 0) != T || dim(h0, 0) != B ||
      dim(h0, 1) != H || (after && dim(aux, 0) != T))
    return ffi::Error::InvalidArgument("gru_bwd: inconsistent shapes");
  const bool rev = reverse != 0, has_dhs = given(dHs, T);
  BlasScope blas(B * N * H);
  const float* x = X.typed_data();
  const float* w = Wh.typed_data();
  const float* m = mask.typed_data();
  const float* rs = resets.typed_data();
  const float* gt = gates.typed_data();
  const float* ax = aux.typed_data();
  const float* hs_ = hs.typed_data();
  const int64_t BH = B * H, BN = B * N;
  const int64_t Kc = chunk_steps(B, T), R = Kc * B;  // steps and rows of a chunk
  std::vector<float> dh(dhT.typed_data(), dhT.typed_data() + BH), dhp(BH), drh(BH);
  // the chunk's dG [R, 3H] and dq [R, H] (reset after), the transposed layer inputs [x; 1]
  // [D + 1, R], [h_prev; 1] [H + 1, R] and (reset before) r h_prev [H, R]; dW_x with db, dW_h with
  // db_hn (its last row)
  // (two of each when the chunk GEMMs run on the second thread: one filled, one read)
  const int64_t macs = B * N * H;
  const bool piped = use_pipe(T, Kc, macs);
  std::vector<float> dgcs[2], dqcs[2], axts[2], ahts[2], arhs[2], wx((D + 1) * N), wh((H + 1) * N, 0.0f);
  for (int i = 0; i < (piped ? 2 : 1); ++i) {
    dgcs[i].resize(R * N);
    dqcs[i].resize(after ? R * H : BH);
    axts[i].resize((D + 1) * R);
    ahts[i].resize((H + 1) * R);
    arhs[i].resize(after ? 0 : H * R);
    std::fill(axts[i].begin() + D * R, axts[i].end(), 1.0f);
    std::fill(ahts[i].begin() + H * R, ahts[i].end(), 1.0f);
  }
  int cur = 0;
  RecGemm b_rz(macs, true, w, N, 2 * H, H), b_n(macs, true, w + 2 * H, N, H, H);
  RecGemm gdx(R * N * D, true, Wx.typed_data(), N, N, D);  // dxs = dG W_x^T
  AccGemm g_x((D + 1) * N * R), g_rz(H * 2 * H * R), g_n((H + 1) * H * R);
  float* dx_ = dxs->typed_data();
  advise_huge(dx_, T * B * D * 4);
  float* ghr = dhr->typed_data();
  std::memset(ghr, 0, BH * sizeof(float));
  bool first = true;
  Pipe pipe(piped);
  for (int64_t k = T - 1; k >= 0; --k) {
    const int64_t t = tidx(k, T, rev);
    const Chunk ch(k, Kc, T, rev);
    const int64_t row0 = (t - ch.t_lo) * B;
    float* axt = axts[cur].data();
    float* aht = ahts[cur].data();
    float* arh = arhs[cur].data();
    const float* hp = prev_carry(hs_, h0.typed_data(), k, T, rev, BH);
    const float* gy = dys.typed_data() + t * BH;
    const float* gh = has_dhs ? dHs.typed_data() + t * BH : nullptr;
    for (int64_t b = 0; b < B; ++b) {  // dh += (masked dy) + dHs
      const int64_t o = b * H;
      const bool valid = m[t * B + b] != 0.0f;
      for (int64_t j = 0; j < H; ++j) dh[o + j] += (valid ? gy[o + j] : 0.0f) + (gh ? gh[o + j] : 0.0f);
    }
    float* d = dgcs[cur].data() + row0 * N;
    float* dqt = dqcs[cur].data() + (after ? row0 * H : 0);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t o = b * H, row = row0 + b;
      const float* hi = rs[t * B + b] != 0.0f ? hr.typed_data() + o : hp + o;  // h_prev of this step
      const float* gr = gt + t * BN + b * N;
      for (int64_t j = 0; j < D; ++j) axt[j * R + row] = x[(t * B + b) * D + j];
      for (int64_t j = 0; j < H; ++j) aht[j * R + row] = hi[j];
      if (!after)  // W_hn's input is r h_prev (r = 0 at padded steps, as the gates there)
        for (int64_t j = 0; j < H; ++j) arh[j * R + row] = gr[j] * hi[j];
      float* dr = d + b * N;
      if (m[t * B + b] == 0.0f) {
        std::memset(dr, 0, N * sizeof(float));
        std::memset(dqt + o, 0, H * sizeof(float));
        std::memcpy(dhp.data() + o, dh.data() + o, H * sizeof(float));
        continue;
      }
      gru_row_bwd(gr, hi, after ? ax + t * BH + o : nullptr, dh.data() + o, dr, dhp.data() + o, dqt + o,
                  after, H);
    }
    if (after) {  // dh_prev += [dr, dz, dhn] W_h^T: the r, z blocks from dG, the n block from dq
      b_rz.run(B, d, N, 1.0f, dhp.data(), H);
      b_n.run(B, dqt, H, 1.0f, dhp.data(), H);
    } else {  // d(r h) = dn_pre W_hn^T; then dr and dh += d(rh) r; dh_prev += [dr, dz] W_hrz^T
      b_n.run(B, d + 2 * H, N, 0.0f, drh.data(), H);
      for (int64_t b = 0; b < B; ++b) {
        if (m[t * B + b] == 0.0f) continue;
        const int64_t o = b * H;
        const float* hi = rs[t * B + b] != 0.0f ? hr.typed_data() + o : hp + o;
        gru_row_bwd_r(gt + t * BN + b * N, hi, drh.data() + o, d + b * N, dhp.data() + o, H);
      }
      b_rz.run(B, d, N, 1.0f, dhp.data(), H);
    }
    for (int64_t b = 0; b < B; ++b) {
      if (rs[t * B + b] != 0.0f) {
        const int64_t o = b * H;
        for (int64_t j = 0; j < H; ++j) {
          ghr[o + j] += dhp[o + j];
          dhp[o + j] = 0.0f;
        }
      }
    }
    dh.swap(dhp);
    if (k == ch.c0) {  // the chunk is complete: the weight gradients and dxs of its steps
      const int rows = static_cast<int>(ch.n * B);
      const float* dg = dgcs[cur].data();
      const float* dqp = dqcs[cur].data();
      float* dxp = dx_ + ch.t_lo * B * D;
      pipe.submit([&, axt, aht, arh, dg, dqp, dxp, rows, acc = !first] {
        const int h = static_cast<int>(H), n = static_cast<int>(N), r = static_cast<int>(R);
        g_x.run(static_cast<int>(D) + 1, n, rows, axt, r, dg, n, acc, wx.data(), n);
        g_rz.run(h, 2 * h, rows, aht, r, dg, n, acc, wh.data(), n);
        if (after)
          g_n.run(h + 1, h, rows, aht, r, dqp, h, acc, wh.data() + 2 * h, n);
        else
          g_n.run(h, h, rows, arh, r, dg + 2 * h, n, acc, wh.data() + 2 * h, n);
        gdx.run(rows, dg, n, 0.0f, dxp, static_cast<int>(D));
      });
      first = false;
      if (piped) cur ^= 1;
    }
  }
  pipe.finish();
  std::memcpy(dWx->typed_data(), wx.data(), D * N * sizeof(float));
  std::memcpy(db->typed_data(), wx.data() + D * N, N * sizeof(float));
  std::memcpy(dWh->typed_data(), wh.data(), H * N * sizeof(float));
  float* gbn = dbhn->typed_data();
  for (int64_t j = 0; j < H; ++j) gbn[j] = after ? wh[H * N + 2 * H + j] : 0.0f;
  std::memcpy(dh0->typed_data(), dh.data(), BH * sizeof(float));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLstmFwd, LstmFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // xs
                                  .Arg<F32>()  // W_x
                                  .Arg<F32>()  // b
                                  .Arg<F32>()  // W_h
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // c0
                                  .Arg<F32>()  // mask
                                  .Arg<F32>()  // resets
                                  .Arg<F32>()  // hr
                                  .Arg<F32>()  // cr
                                  .Attr<int32_t>("reverse")
                                  .Ret<F32>()  // hs
                                  .Ret<F32>()  // cs
                                  .Ret<F32>());  // gates

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLstmBwd, LstmBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // xs
                                  .Arg<F32>()  // W_x
                                  .Arg<F32>()  // W_h
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // c0
                                  .Arg<F32>()  // mask
                                  .Arg<F32>()  // resets
                                  .Arg<F32>()  // hr
                                  .Arg<F32>()  // cr
                                  .Arg<F32>()  // gates
                                  .Arg<F32>()  // hs
                                  .Arg<F32>()  // cs
                                  .Arg<F32>()  // dys
                                  .Arg<F32>()  // dHs ([1, B, H]: zero)
                                  .Arg<F32>()  // dCs ([1, B, H]: zero)
                                  .Arg<F32>()  // dhT
                                  .Arg<F32>()  // dcT
                                  .Attr<int32_t>("reverse")
                                  .Ret<F32>()  // dW_x
                                  .Ret<F32>()  // dW_h
                                  .Ret<F32>()  // db
                                  .Ret<F32>()  // dxs
                                  .Ret<F32>()  // dh0
                                  .Ret<F32>()  // dc0
                                  .Ret<F32>()  // dhr
                                  .Ret<F32>());  // dcr

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxGruFwd, GruFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // xs
                                  .Arg<F32>()  // W_x
                                  .Arg<F32>()  // b
                                  .Arg<F32>()  // W_h
                                  .Arg<F32>()  // b_hn
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // mask
                                  .Arg<F32>()  // resets
                                  .Arg<F32>()  // hr
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("after")
                                  .Ret<F32>()  // hs
                                  .Ret<F32>()  // gates
                                  .Ret<F32>());  // aux

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxGruBwd, GruBwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // xs
                                  .Arg<F32>()  // W_x
                                  .Arg<F32>()  // W_h
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // mask
                                  .Arg<F32>()  // resets
                                  .Arg<F32>()  // hr
                                  .Arg<F32>()  // gates
                                  .Arg<F32>()  // aux
                                  .Arg<F32>()  // hs
                                  .Arg<F32>()  // dys
                                  .Arg<F32>()  // dHs ([1, B, H]: zero)
                                  .Arg<F32>()  // dhT
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("after")
                                  .Ret<F32>()  // dW_x
                                  .Ret<F32>()  // dW_h
                                  .Ret<F32>()  // db
                                  .Ret<F32>()  // db_hn
                                  .Ret<F32>()  // dxs
                                  .Ret<F32>()  // dh0
                                  .Ret<F32>());  // dhr

// ----------------------------------------------------------------------- the Python module

namespace {

PyObject* capsule(void* fn) { return PyCapsule_New(fn, nullptr, nullptr); }

PyObject* registrations(PyObject*, PyObject*) {
  PyObject* d = PyDict_New();
  if (d == nullptr) return nullptr;
  const struct {
    const char* name;
    void* fn;
  } targets[] = {{"rnnjax_lstm_fwd", reinterpret_cast<void*>(RnnjaxLstmFwd)},
                 {"rnnjax_lstm_bwd", reinterpret_cast<void*>(RnnjaxLstmBwd)},
                 {"rnnjax_gru_fwd", reinterpret_cast<void*>(RnnjaxGruFwd)},
                 {"rnnjax_gru_bwd", reinterpret_cast<void*>(RnnjaxGruBwd)}};
  for (const auto& t : targets) {
    PyObject* c = capsule(t.fn);
    if (c == nullptr || PyDict_SetItemString(d, t.name, c) != 0) {
      Py_XDECREF(c);
      Py_DECREF(d);
      return nullptr;
    }
    Py_DECREF(c);
  }
  return d;
}

PyObject* set_num_threads(PyObject*, PyObject* arg) {
  long n = PyLong_AsLong(arg);
  if (n == -1 && PyErr_Occurred()) return nullptr;
  if (n < 1) n = static_cast<long>(std::thread::hardware_concurrency());
  std::lock_guard<std::mutex> lock(g_blas_mutex);
  g_threads = static_cast<int>(n < 1 ? 1 : n);
  scipy_openblas_set_num_threads(g_threads);
  return PyLong_FromLong(g_threads);
}

PyObject* set_huge_pages(PyObject*, PyObject* arg) {
  int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  g_huge = on;
  return PyBool_FromLong(g_huge);
}

// set_chunk_rows(n): the rows (steps x B) of dz the backward kernels keep per weight-gradient GEMM
// (n < 1: the default); returns it.
PyObject* set_chunk_rows(PyObject*, PyObject* arg) {
  long n = PyLong_AsLong(arg);
  if (n == -1 && PyErr_Occurred()) return nullptr;
  std::lock_guard<std::mutex> lock(g_blas_mutex);
  g_chunk_rows = n < 1 ? kChunkRows : n;
  return PyLong_FromLong(static_cast<long>(g_chunk_rows));
}

// set_pipe(on): whether the backward kernels may run their chunk GEMMs on a second thread
// (use_pipe; the results are the same either way); returns it.
PyObject* set_pipe(PyObject*, PyObject* arg) {
  int on = PyObject_IsTrue(arg);
  if (on < 0) return nullptr;
  std::lock_guard<std::mutex> lock(g_blas_mutex);
  g_pipe = on;
  return PyBool_FromLong(g_pipe);
}

PyObject* isa(PyObject*, PyObject*) { return PyUnicode_FromString(g_isa ? "avx2+fma" : "scalar"); }

// set_isa("avx2+fma" | "scalar"): the code path of the gate math and GEMMs (tests compare both);
// "avx2+fma" only where the CPU has both. Returns the path now in use.
PyObject* set_isa(PyObject*, PyObject* arg) {
  const char* s = PyUnicode_AsUTF8(arg);
  if (s == nullptr) return nullptr;
  std::lock_guard<std::mutex> lock(g_blas_mutex);
  if (std::strcmp(s, "scalar") == 0) {
    g_isa = 0;
  } else if (std::strcmp(s, "avx2+fma") == 0) {
    detect_isa();
  } else {
    PyErr_Format(PyExc_ValueError, "isa must be 'avx2+fma' or 'scalar', got %R", arg);
    return nullptr;
  }
  return PyUnicode_FromString(g_isa ? "avx2+fma" : "scalar");
}

// set_gemm("auto" | "blas" | "micro"): which per-step GEMM the kernels use (see use_micro).
PyObject* set_gemm(PyObject*, PyObject* arg) {
  const char* s = PyUnicode_AsUTF8(arg);
  if (s == nullptr) return nullptr;
  int mode = std::strcmp(s, "auto") == 0 ? 0 : std::strcmp(s, "blas") == 0 ? 1 : std::strcmp(s, "micro") == 0 ? 2 : -1;
  if (mode < 0) {
    PyErr_Format(PyExc_ValueError, "gemm must be 'auto', 'blas' or 'micro', got %R", arg);
    return nullptr;
  }
  std::lock_guard<std::mutex> lock(g_blas_mutex);
  g_gemm = mode;
  return PyUnicode_FromString(s);
}

// profile_parts(cell, B, H, reps) -> {part: microseconds per step}: each part of one step repeated
// reps times on warm buffers, one thread (benchmarks/native_profile.py).
PyObject* profile_parts(PyObject*, PyObject* args) {
  const char* cell;
  int B, H, reps;
  if (!PyArg_ParseTuple(args, "siii", &cell, &B, &H, &reps)) return nullptr;
  const bool lstm = std::strcmp(cell, "lstm") == 0;
  if ((!lstm && std::strcmp(cell, "gru") != 0) || B < 1 || H < 1 || reps < 1) {
    PyErr_SetString(PyExc_ValueError, "profile_parts(cell in {'lstm', 'gru'}, B >= 1, H >= 1, reps >= 1)");
    return nullptr;
  }
  const int N = (lstm ? 4 : 3) * H;
  const int64_t BH = int64_t(B) * H, BN = int64_t(B) * N;
  uint32_t state = 12345u;
  auto rnd = [&]() {
    state = state * 1664525u + 1013904223u;
    return (static_cast<float>(state >> 8) / 16777216.0f - 0.5f);
  };
  std::vector<float> h(BH), w(int64_t(H) * N), G(BN), z(BN), c(BH), c2(BH), ho(BH), dz(BN), dh(BH), dc(BH),
      dhp(BH), dcp(BH), q(BH), rh(BH), gate(BN);
  for (auto* v : {&h, &w, &G, &z, &c, &dz, &dh, &dc, &gate})
    for (auto& x : *v) x = rnd();
  for (auto& x : w) x *= 0.2f;
  for (auto& x : gate) x = 0.5f + 0.4f * x;
  std::vector<std::pair<const char*, double>> out;
  Py_BEGIN_ALLOW_THREADS
  std::lock_guard<std::mutex> lock(g_blas_mutex);
  scipy_openblas_set_num_threads(1);
  auto timeit = [&](const char* name, auto f) {  // the median of 7 rounds of reps calls
    f();
    f();
    double us[7];
    for (double& u : us) {
      auto t0 = std::chrono::steady_clock::now();
      for (int r = 0; r < reps; ++r) f();
      u = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / reps;
    }
    std::sort(us, us + 7);
    out.emplace_back(name, us[3]);
  };
  timeit("gemm_blas", [&] {
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, N, H, 1.0f, h.data(), H, w.data(), N, 0.0f,
                      z.data(), N);
  });
  timeit("gemm_bwd_blas", [&] {
    scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, H, N, 1.0f, dz.data(), N, w.data(), N, 0.0f,
                      dhp.data(), H);
  });
#ifdef RNN_HAVE_AVX2
  if (g_isa) {
    std::vector<float> P, PT;
    pack(P, w.data(), N, 1, H, N);
    pack(PT, w.data(), 1, N, N, H);
    timeit("gemm_micro", [&] {
      gemm_packed_avx2(B, N, H, h.data(), H, P.data(), z.data(), N, z.data(), N, false);
    });
    timeit("gemm_bwd_micro", [&] {
      gemm_packed_avx2(B, H, N, dz.data(), N, PT.data(), dhp.data(), H, dhp.data(), H, false);
    });
  }
#endif
  if (lstm) {
    timeit("gates_fwd", [&] {
      std::memcpy(z.data(), G.data(), BN * sizeof(float));
      for (int b = 0; b < B; ++b) lstm_row_fwd(z.data() + b * N, c.data() + b * H, c2.data() + b * H, ho.data() + b * H, H);
    });
    timeit("gates_bwd", [&] {
      for (int b = 0; b < B; ++b)
        lstm_row_bwd(gate.data() + b * N, c.data() + b * H, c2.data() + b * H, dh.data() + b * H, dc.data() + b * H,
                     dz.data() + b * N, dcp.data() + b * H, H);
    });
    RecGemm gw(BN * H, false, w.data(), N, H, N), gwt(BN * H, true, w.data(), N, N, H);
    timeit("step_fwd", [&] {
      gw.run(B, h.data(), H, 1.0f, G.data(), N, z.data(), N);
      for (int b = 0; b < B; ++b) lstm_row_fwd(z.data() + b * N, c.data() + b * H, c2.data() + b * H, ho.data() + b * H, H);
    });
    timeit("step_bwd", [&] {
      for (int b = 0; b < B; ++b)
        lstm_row_bwd(gate.data() + b * N, c.data() + b * H, c2.data() + b * H, dh.data() + b * H, dc.data() + b * H,
                     dz.data() + b * N, dcp.data() + b * H, H);
      gwt.run(B, dz.data(), N, 0.0f, dhp.data(), H);
    });
  } else {  // reset before
    auto gates = [&] {
      for (int b = 0; b < B; ++b) {
        sigmoid_row(z.data() + b * N, 2 * H);
        for (int j = 0; j < H; ++j) rh[b * H + j] = z[b * N + j] * h[b * H + j];
      }
    };
    timeit("gates_fwd", [&] {
      std::memcpy(z.data(), G.data(), BN * sizeof(float));
      gates();
      for (int b = 0; b < B; ++b) gru_row_out(z.data() + b * N, z.data() + b * N + 2 * H, q.data() + b * H, 0,
                                              h.data() + b * H, ho.data() + b * H, H);
    });
    auto gbwd = [&] {
      for (int b = 0; b < B; ++b) {
        gru_row_bwd(gate.data() + b * N, h.data() + b * H, nullptr, dh.data() + b * H, dz.data() + b * N,
                    dhp.data() + b * H, nullptr, 0, H);
        gru_row_bwd_r(gate.data() + b * N, h.data() + b * H, rh.data() + b * H, dz.data() + b * N, dhp.data() + b * H, H);
      }
    };
    timeit("gates_bwd", gbwd);
    RecGemm g_rz(BN * H, false, w.data(), N, H, 2 * H), g_n(BN * H, false, w.data() + 2 * H, N, H, H),
        b_rz(BN * H, true, w.data(), N, 2 * H, H), b_n(BN * H, true, w.data() + 2 * H, N, H, H);
    timeit("step_fwd", [&] {
      std::memcpy(z.data(), G.data(), BN * sizeof(float));
      g_rz.run(B, h.data(), H, 1.0f, z.data(), N);
      gates();
      g_n.run(B, rh.data(), H, 0.0f, q.data(), H);
      for (int b = 0; b < B; ++b) gru_row_out(z.data() + b * N, z.data() + b * N + 2 * H, q.data() + b * H, 0,
                                              h.data() + b * H, ho.data() + b * H, H);
    });
    timeit("step_bwd", [&] {
      for (int b = 0; b < B; ++b)
        gru_row_bwd(gate.data() + b * N, h.data() + b * H, nullptr, dh.data() + b * H, dz.data() + b * N,
                    dhp.data() + b * H, nullptr, 0, H);
      b_n.run(B, dz.data() + 2 * H, N, 0.0f, rh.data(), H);
      for (int b = 0; b < B; ++b)
        gru_row_bwd_r(gate.data() + b * N, h.data() + b * H, rh.data() + b * H, dz.data() + b * N, dhp.data() + b * H, H);
      b_rz.run(B, dz.data(), N, 1.0f, dhp.data(), H);
    });
  }
  scipy_openblas_set_num_threads(g_threads);
  Py_END_ALLOW_THREADS
  PyObject* d = PyDict_New();
  if (d == nullptr) return nullptr;
  for (const auto& kv : out) {
    PyObject* v = PyFloat_FromDouble(kv.second);
    if (v == nullptr || PyDict_SetItemString(d, kv.first, v) != 0) {
      Py_XDECREF(v);
      Py_DECREF(d);
      return nullptr;
    }
    Py_DECREF(v);
  }
  return d;
}

PyMethodDef methods[] = {
    {"registrations", registrations, METH_NOARGS, "FFI target name -> PyCapsule of the handler."},
    {"set_num_threads", set_num_threads, METH_O,
     "Set the OpenBLAS threads of large per-step GEMMs (< 1: the machine's cores); returns it."},
    {"set_huge_pages", set_huge_pages, METH_O, "Advise huge pages on large outputs (default True)."},
    {"isa", isa, METH_NOARGS, "The code path of the gate math: 'avx2+fma' or 'scalar'."},
    {"set_isa", set_isa, METH_O, "Use 'avx2+fma' (where the CPU has it) or 'scalar'; returns the one in use."},
    {"set_gemm", set_gemm, METH_O, "Per-step GEMMs: 'auto', 'blas' (OpenBLAS) or 'micro' (packed AVX2)."},
    {"set_chunk_rows", set_chunk_rows, METH_O,
     "Rows of dz per weight-gradient GEMM in the backward kernels (< 1: the default 256); returns it."},
    {"set_pipe", set_pipe, METH_O,
     "Let the backward kernels overlap their chunk GEMMs with the recurrence on a second thread."},
    {"profile_parts", profile_parts, METH_VARARGS,
     "profile_parts(cell, B, H, reps) -> {part: microseconds per step}, one thread."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "rnnjax's fused LSTM/GRU CPU kernels (XLA FFI).",
                      -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__kernels(void) {
  detect_isa();
  return PyModule_Create(&module);
}
