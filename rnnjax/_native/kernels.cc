// Fused LSTM / GRU sequence kernels for the CPU, exposed to JAX as XLA FFI custom calls.
//
// Forward and backward of the whole sequence. The input projection G = x W_x + b of all steps is
// one GEMM done by XLA outside; here each step does the recurrent GEMM h_{t-1} W_h through
// OpenBLAS (scipy-openblas32, symbols prefixed `scipy_`) and the gate nonlinearities fused in one
// pass. The backward pass runs the per-step recurrent GEMMs (dz W_h^T) and emits the gate
// pre-activation gradients dz of all steps; dW_h, dW_x, db and dx are single large GEMMs / sums
// done by XLA afterwards.
//
// Layout: row-major, time-major. G [T, B, nH], W_h [H, nH], carries [B, H], mask / resets [T, B]
// as float 0/1. Gate orders: LSTM (i, f, g, o); GRU (r, z, n). `reverse` runs the steps from T-1
// down to 0. A masked step (mask 0) keeps the carry; a reset step (resets 1) starts from the reset
// carry (hr, cr) instead of the previous one (resets are only set at valid steps).
// Deterministic: a fixed OpenBLAS thread count and a fixed order of every sum.
//
// Equations: Hochreiter & Schmidhuber, "Long Short-Term Memory", Neural Computation 1997 (with the
// forget gate of Gers, Schmidhuber & Cummins 2000); Cho et al., "Learning Phrase Representations
// using RNN Encoder-Decoder for Statistical Machine Translation", EMNLP 2014.

#include <Python.h>

#include <cmath>
#include <cstdint>
#include <cstring>
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
RNN_CLONES void lstm_row_fwd(float* __restrict z, const float* __restrict c_in, float* __restrict c_out,
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
RNN_CLONES void lstm_row_bwd(const float* __restrict gate, const float* __restrict c_in,
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
RNN_CLONES void sigmoid_row(float* __restrict z, int n) {
  for (int j = 0; j < n; ++j) z[j] = fsigmoid(z[j]);
}

// GRU candidate and new carry, one row. reset after: npre = gn + r*hn (hn = a_n + b_hn);
// reset before: npre = gn + an (an = (r*h) W_hn). n stored into gn's slot.
RNN_CLONES void gru_row_out(const float* __restrict rz, float* __restrict gn, const float* __restrict q,
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
RNN_CLONES void gru_row_bwd(const float* __restrict gate, const float* __restrict hi,
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
RNN_CLONES void gru_row_bwd_r(const float* __restrict gate, const float* __restrict hi,
                              const float* __restrict drh, float* __restrict d, float* __restrict dhp, int H) {
  for (int j = 0; j < H; ++j) {
    float r = gate[j];
    d[j] = drh[j] * hi[j] * r * (1.0f - r);
    dhp[j] += drh[j] * r;
  }
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

// C [M, N] = beta C + A [M, K] B [K, N] (B with leading dimension ldb).
inline void gemm_nn(int M, int N, int K, const float* A, int lda, const float* Bm, int ldb, float beta,
                    float* C, int ldc) {
  scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, A, lda, Bm, ldb, beta, C, ldc);
}

// C [M, N] = beta C + A [M, K] B^T, B [N, K] with leading dimension ldb.
inline void gemm_nt(int M, int N, int K, const float* A, int lda, const float* Bm, int ldb, float beta,
                    float* C, int ldc) {
  scipy_cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, A, lda, Bm, ldb, beta, C, ldc);
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

// ----------------------------------------------------------------------- LSTM

ffi::Error LstmFwdImpl(F32 G, F32 Wh, F32 h0, F32 c0, F32 mask, F32 resets, F32 hr, F32 cr,
                       int32_t reverse, R32 hs, R32 cs, R32 gates) {
  const int64_t T = dim(G, 0), B = dim(G, 1), N = dim(G, 2), H = N / 4;
  if (dim(Wh, 0) != H || dim(Wh, 1) != N || dim(h0, 0) != B || dim(h0, 1) != H)
    return ffi::Error::InvalidArgument("lstm_fwd: inconsistent shapes");
  const bool rev = reverse != 0, keep = gates->dimensions()[0] == T;
  BlasScope blas(B * N * H);
  const float* g = G.typed_data();
  const float* w = Wh.typed_data();
  const float* m = mask.typed_data();
  const float* rs = resets.typed_data();
  float* hs_ = hs->typed_data();
  float* cs_ = cs->typed_data();
  float* z_ = gates->typed_data();
  std::vector<float> hin(B * H), cin(B * H);
  const int64_t BH = B * H, BN = B * N;
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
    std::memcpy(z, g + t * BN, BN * sizeof(float));
    gemm_nn(B, N, H, hi, H, w, N, 1.0f, z, N);
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

// dH, dC [T, B, H]: the cotangents arriving at each step's carry (dy + history), dhT, dcT [B, H].
// Returns dz [T, B, 4H] and the gradients of the initial and the reset carries.
ffi::Error LstmBwdImpl(F32 Wh, F32 h0, F32 c0, F32 mask, F32 resets, F32 hr, F32 cr, F32 gates, F32 cs,
                       F32 dH, F32 dC, F32 dhT, F32 dcT, int32_t reverse, R32 dz, R32 dh0, R32 dc0,
                       R32 dhr, R32 dcr) {
  const int64_t T = dim(gates, 0), B = dim(gates, 1), N = dim(gates, 2), H = N / 4;
  const bool rev = reverse != 0;
  BlasScope blas(B * N * H);
  const float* w = Wh.typed_data();
  const float* m = mask.typed_data();
  const float* rs = resets.typed_data();
  const float* gt = gates.typed_data();
  const float* cs_ = cs.typed_data();
  const int64_t BH = B * H, BN = B * N;
  std::vector<float> dh(dhT.typed_data(), dhT.typed_data() + BH), dc(dcT.typed_data(), dcT.typed_data() + BH);
  std::vector<float> dhp(BH), dcp(BH), cin(H);
  float* dz_ = dz->typed_data();
  float* ghr = dhr->typed_data();
  float* gcr = dcr->typed_data();
  std::memset(ghr, 0, BH * sizeof(float));
  std::memset(gcr, 0, BH * sizeof(float));
  for (int64_t k = T - 1; k >= 0; --k) {
    const int64_t t = tidx(k, T, rev);
    const float* cp = prev_carry(cs_, c0.typed_data(), k, T, rev, BH);
    const float* gh = dH.typed_data() + t * BH;
    const float* gc = dC.typed_data() + t * BH;
    for (int64_t j = 0; j < BH; ++j) {
      dh[j] += gh[j];
      dc[j] += gc[j];
    }
    float* z = dz_ + t * BN;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t o = b * H;
      if (m[t * B + b] != 0.0f) {
        const float* ci = rs[t * B + b] != 0.0f ? cr.typed_data() + o : cp + o;
        lstm_row_bwd(gt + t * BN + b * N, ci, cs_ + t * BH + o, dh.data() + o, dc.data() + o, z + b * N,
                     dcp.data() + o, H);
        std::memset(dhp.data() + o, 0, H * sizeof(float));
      } else {  // padded: dh, dc pass through, dz = 0
        std::memset(z + b * N, 0, N * sizeof(float));
        std::memcpy(dhp.data() + o, dh.data() + o, H * sizeof(float));
        std::memcpy(dcp.data() + o, dc.data() + o, H * sizeof(float));
      }
    }
    gemm_nt(B, H, N, z, N, w, N, 1.0f, dhp.data(), H);
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
  }
  (void)h0;
  (void)hr;
  std::memcpy(dh0->typed_data(), dh.data(), BH * sizeof(float));
  std::memcpy(dc0->typed_data(), dc.data(), BH * sizeof(float));
  return ffi::Error::Success();
}

// ----------------------------------------------------------------------- GRU

// aux: reset after, hn = h W_hn + b_hn per step ([T, B, H] when training, else [1, B, H]);
// reset before, scratch for (r h) W_hn ([1, B, H] is enough).
ffi::Error GruFwdImpl(F32 G, F32 Wh, F32 bhn, F32 h0, F32 mask, F32 resets, F32 hr, int32_t reverse,
                      int32_t after, R32 hs, R32 gates, R32 aux) {
  const int64_t T = dim(G, 0), B = dim(G, 1), N = dim(G, 2), H = N / 3;
  if (dim(Wh, 0) != H || dim(Wh, 1) != N || dim(h0, 0) != B || dim(h0, 1) != H)
    return ffi::Error::InvalidArgument("gru_fwd: inconsistent shapes");
  const bool rev = reverse != 0, keep = gates->dimensions()[0] == T, keep_aux = aux->dimensions()[0] == T;
  BlasScope blas(B * N * H);
  const float* g = G.typed_data();
  const float* w = Wh.typed_data();
  const float* bn = bhn.typed_data();
  const float* m = mask.typed_data();
  const float* rs = resets.typed_data();
  float* hs_ = hs->typed_data();
  float* z_ = gates->typed_data();
  float* a_ = aux->typed_data();
  const int64_t BH = B * H, BN = B * N;
  std::vector<float> hin(BH), a(BN), rh(BH);
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
    std::memcpy(z, g + t * BN, BN * sizeof(float));
    float* ho = hs_ + t * BH;
    if (after) {  // a = h W_h (all three blocks); r, z from G + a; hn = a_n + b_hn
      gemm_nn(B, N, H, hi, H, w, N, 0.0f, a.data(), N);
      for (int64_t b = 0; b < B; ++b) {
        float* zr = z + b * N;
        const float* ar = a.data() + b * N;
        for (int64_t j = 0; j < 2 * H; ++j) zr[j] += ar[j];
        sigmoid_row(zr, 2 * H);
        for (int64_t j = 0; j < H; ++j) q[b * H + j] = ar[2 * H + j] + bn[j];
      }
    } else {  // r, z from G + h W_hrz; then (r h) W_hn
      gemm_nn(B, 2 * H, H, hi, H, w, N, 1.0f, z, N);
      for (int64_t b = 0; b < B; ++b) {
        sigmoid_row(z + b * N, 2 * H);
        for (int64_t j = 0; j < H; ++j) rh[b * H + j] = z[b * N + j] * hi[b * H + j];
      }
      gemm_nn(B, H, H, rh.data(), H, w + 2 * H, N, 0.0f, q, H);
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

// Returns dG [T, B, 3H] (gradient of the pre-activations' input part: r, z, n), dq [T, B, H]
// (reset after: gradient of hn = h W_hn + b_hn; reset before: scratch, [1, B, H]), dh0, dhr.
ffi::Error GruBwdImpl(F32 Wh, F32 h0, F32 mask, F32 resets, F32 hr, F32 gates, F32 aux, F32 hs, F32 dH,
                      F32 dhT, int32_t reverse, int32_t after, R32 dG, R32 dq, R32 dh0, R32 dhr) {
  const int64_t T = dim(gates, 0), B = dim(gates, 1), N = dim(gates, 2), H = N / 3;
  const bool rev = reverse != 0;
  BlasScope blas(B * N * H);
  const float* w = Wh.typed_data();
  const float* m = mask.typed_data();
  const float* rs = resets.typed_data();
  const float* gt = gates.typed_data();
  const float* ax = aux.typed_data();
  const float* hs_ = hs.typed_data();
  const int64_t BH = B * H, BN = B * N;
  const bool keep_dq = dq->dimensions()[0] == T;
  std::vector<float> dh(dhT.typed_data(), dhT.typed_data() + BH), dhp(BH), drh(BH);
  float* dG_ = dG->typed_data();
  float* dq_ = dq->typed_data();
  float* ghr = dhr->typed_data();
  std::memset(ghr, 0, BH * sizeof(float));
  for (int64_t k = T - 1; k >= 0; --k) {
    const int64_t t = tidx(k, T, rev);
    const float* hp = prev_carry(hs_, h0.typed_data(), k, T, rev, BH);
    const float* gh = dH.typed_data() + t * BH;
    for (int64_t j = 0; j < BH; ++j) dh[j] += gh[j];
    float* d = dG_ + t * BN;
    float* dqt = dq_ + (keep_dq ? t * BH : 0);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t o = b * H;
      const float* hi = rs[t * B + b] != 0.0f ? hr.typed_data() + o : hp + o;
      const float* gr = gt + t * BN + b * N;
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
      gemm_nt(B, H, 2 * H, d, N, w, N, 1.0f, dhp.data(), H);
      gemm_nt(B, H, H, dqt, H, w + 2 * H, N, 1.0f, dhp.data(), H);
    } else {  // d(r h) = dn_pre W_hn^T; then dr and dh += d(rh) r; dh_prev += [dr, dz] W_hrz^T
      gemm_nt(B, H, H, d + 2 * H, N, w + 2 * H, N, 0.0f, drh.data(), H);
      for (int64_t b = 0; b < B; ++b) {
        if (m[t * B + b] == 0.0f) continue;
        const int64_t o = b * H;
        const float* hi = rs[t * B + b] != 0.0f ? hr.typed_data() + o : hp + o;
        gru_row_bwd_r(gt + t * BN + b * N, hi, drh.data() + o, d + b * N, dhp.data() + o, H);
      }
      gemm_nt(B, H, 2 * H, d, N, w, N, 1.0f, dhp.data(), H);
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
  }
  std::memcpy(dh0->typed_data(), dh.data(), BH * sizeof(float));
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxLstmFwd, LstmFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // G
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
                                  .Arg<F32>()  // W_h
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // c0
                                  .Arg<F32>()  // mask
                                  .Arg<F32>()  // resets
                                  .Arg<F32>()  // hr
                                  .Arg<F32>()  // cr
                                  .Arg<F32>()  // gates
                                  .Arg<F32>()  // cs
                                  .Arg<F32>()  // dH
                                  .Arg<F32>()  // dC
                                  .Arg<F32>()  // dhT
                                  .Arg<F32>()  // dcT
                                  .Attr<int32_t>("reverse")
                                  .Ret<F32>()  // dz
                                  .Ret<F32>()  // dh0
                                  .Ret<F32>()  // dc0
                                  .Ret<F32>()  // dhr
                                  .Ret<F32>());  // dcr

XLA_FFI_DEFINE_HANDLER_SYMBOL(RnnjaxGruFwd, GruFwdImpl,
                              ffi::Ffi::Bind()
                                  .Arg<F32>()  // G
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
                                  .Arg<F32>()  // W_h
                                  .Arg<F32>()  // h0
                                  .Arg<F32>()  // mask
                                  .Arg<F32>()  // resets
                                  .Arg<F32>()  // hr
                                  .Arg<F32>()  // gates
                                  .Arg<F32>()  // aux
                                  .Arg<F32>()  // hs
                                  .Arg<F32>()  // dH
                                  .Arg<F32>()  // dhT
                                  .Attr<int32_t>("reverse")
                                  .Attr<int32_t>("after")
                                  .Ret<F32>()  // dG
                                  .Ret<F32>()  // dq
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

PyMethodDef methods[] = {
    {"registrations", registrations, METH_NOARGS, "FFI target name -> PyCapsule of the handler."},
    {"set_num_threads", set_num_threads, METH_O,
     "Set the OpenBLAS threads of large per-step GEMMs (< 1: the machine's cores); returns it."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "rnnjax's fused LSTM/GRU CPU kernels (XLA FFI).",
                      -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
