// Fused attention over short sequences on the CPU (ranker/interactions/short_attention.py loads and documents it).
//
// Hiformer's attention has S = T + K <= 16 keys and head widths of 8-16, so PyTorch's batched GEMMs run 1,024 tiny
// products per call and its softmax runs a scalar kernel; here one (batch, head) pair is done at a time with every
// inner loop over 16 lanes -- query rows in the forward, query rows or key positions in the backward -- so that each
// is one AVX-512 instruction (two AVX2 ones) and accumulators are independent. fp32 only; deterministic (each
// output element is computed by one thread in a fixed order, whatever the thread count).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace {

constexpr int64_t L = 16;  // query rows per (batch, head), padded: one AVX-512 vector of fp32
constexpr int64_t MAXS = 16;
constexpr int64_t MAXD = 64;

// exp(x) lane-wise for x <= 0 (softmax arguments), written so that it vectorises: 2^n times the Cephes expf
// polynomial of the remainder; 0 below -87 (where expf is subnormal). Accuracy: tests/ranker/test_short_attention.py.
inline void exp16(float* x) {
#pragma omp simd
  for (int64_t i = 0; i < L; ++i) {
    const float v = x[i] < -87.0f ? -87.0f : x[i];
    const float n = std::nearbyint(v * 1.44269504088896341f);
    const float r = (v - n * 0.693359375f) + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float pow2;
    std::memcpy(&pow2, &bits, sizeof(float));
    x[i] = x[i] < -87.0f ? 0.0f : p * pow2;
  }
}

// out[i] = sum_d row[d] * cols[d][i] over the 16 lanes i: one vector FMA per d.
inline void combine_lanes(float* out, const float* row, const float (*cols)[L], int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < L; ++i) out[i] = 0.0f;
  for (int64_t d = 0; d < n; ++d) {
    const float c = row[d];
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) out[i] += c * cols[d][i];
  }
}

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.scalar_type() == at::kFloat && t.device().is_cpu() && t.stride(3) == 1, name,
              ": expected a 4-d float32 CPU tensor with a contiguous last dim");
}

struct View {  // B x rows x H x width, last dim contiguous
  const float* p; int64_t sb, sr, sh;
  View(const at::Tensor& t) : p(t.data_ptr<float>()), sb(t.stride(0)), sr(t.stride(1)), sh(t.stride(2)) {}
  const float* row(int64_t b, int64_t r, int64_t h) const { return p + b * sb + r * sr + h * sh; }
};

// Forward: out B x Q x H x dv (contiguous) and the weights wT: B x H x S x 16 (column i < Q is row i's weight).
std::tuple<at::Tensor, at::Tensor> forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale) {
  check(q, "q"); check(k, "k"); check(v, "v");
  const int64_t B = q.size(0), Q = q.size(1), H = q.size(2), dk = q.size(3), S = k.size(1), dv = v.size(3);
  TORCH_CHECK(k.size(0) == B && v.size(0) == B && k.size(2) == H && v.size(2) == H && v.size(1) == S &&
                  k.size(3) == dk, "short attention: q B x Q x H x dk, k B x S x H x dk, v B x S x H x dv");
  TORCH_CHECK(Q <= L && S <= MAXS && dk <= MAXD && dv <= MAXD, "short attention: at most 16 rows and keys, head widths <= 64");
  auto out = at::empty({B, Q, H, dv}, q.options());
  auto w = at::empty({B, H, S, L}, q.options());
  const View qv(q), kv(k), vv(v);
  float* op = out.data_ptr<float>(); float* wp = w.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
    alignas(64) float qt[MAXD][L] = {};
    alignas(64) float st[MAXS][L];
    alignas(64) float ot[MAXD][L];
    alignas(64) float m[L], sum[L];
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      for (int64_t i = 0; i < Q; ++i) {
        const float* qi = qv.row(b, i, h);
        for (int64_t d = 0; d < dk; ++d) qt[d][i] = qi[d] * sc;
      }
      for (int64_t i = 0; i < L; ++i) m[i] = -std::numeric_limits<float>::infinity();
      for (int64_t j = 0; j < S; ++j) {
        float* s = st[j];
        combine_lanes(s, kv.row(b, j, h), qt, dk);  // scaled scores of key j against every query row
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) m[i] = s[i] > m[i] ? s[i] : m[i];
      }
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) sum[i] = 0.0f;
      for (int64_t j = 0; j < S; ++j) {
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) st[j][i] -= m[i];
        exp16(st[j]);
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) sum[i] += st[j][i];
      }
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) sum[i] = 1.0f / sum[i];
      for (int64_t e = 0; e < dv; ++e)
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) ot[e][i] = 0.0f;
      float* wb = wp + bh * S * L;
      for (int64_t j = 0; j < S; ++j) {
        float* wj = wb + j * L;
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) wj[i] = st[j][i] * sum[i];
        const float* vj = vv.row(b, j, h);
        for (int64_t e = 0; e < dv; ++e) {
          const float ve = vj[e];
#pragma omp simd
          for (int64_t i = 0; i < L; ++i) ot[e][i] += ve * wj[i];
        }
      }
      for (int64_t i = 0; i < Q; ++i) {
        float* oi = op + ((b * Q + i) * H + h) * dv;
        for (int64_t e = 0; e < dv; ++e) oi[e] = ot[e][i];
      }
    }
  });
  return {out, w};
}

// Backward: gq B x Q x H x dk, gk B x S x H x dk, gv B x S x H x dv (contiguous). Every inner loop runs over 16
// lanes (query rows i, or key positions j), so it is one AVX-512 instruction and the accumulators are independent.
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const at::Tensor& go, const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& v, const at::Tensor& w, double scale) {
  check(go, "grad");
  const int64_t B = q.size(0), Q = q.size(1), H = q.size(2), dk = q.size(3), S = k.size(1), dv = v.size(3);
  TORCH_CHECK(go.sizes() == at::IntArrayRef({B, Q, H, dv}) && w.is_contiguous() && w.sizes() == at::IntArrayRef({B, H, S, L}),
              "short attention backward: grad B x Q x H x dv and the forward's weights expected");
  auto gq = at::empty({B, Q, H, dk}, q.options());
  auto gk = at::empty({B, S, H, dk}, q.options());
  auto gv = at::empty({B, S, H, dv}, q.options());
  const View qv(q), kv(k), vv(v), gov(go);
  const float* wp = w.data_ptr<float>();
  float* gqp = gq.data_ptr<float>(); float* gkp = gk.data_ptr<float>(); float* gvp = gv.data_ptr<float>();
  const float sc = static_cast<float>(scale);
  at::parallel_for(0, B * H, 16, [&](int64_t begin, int64_t end) {
    alignas(64) float got[MAXD][L] = {};   // [e][i] = dL/dout[i][e]
    alignas(64) float gst[MAXS][L];        // [j][i] = dL/dw[i][j], then dL/dscore[i][j]
    alignas(64) float gsr[L][MAXS] = {};   // [i][j] = dL/dscore[i][j]
    alignas(64) float wr[L][MAXS] = {};    // [i][j] = w[i][j]
    alignas(64) float gqt[MAXD][L];        // [d][i]
    alignas(64) float gkt[MAXD][MAXS];     // [d][j]
    alignas(64) float gvt[MAXD][MAXS];     // [e][j]
    alignas(64) float dot[L];
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const float* wb = wp + bh * S * L;
      for (int64_t i = 0; i < Q; ++i) {
        const float* gi = gov.row(b, i, h);
        for (int64_t e = 0; e < dv; ++e) got[e][i] = gi[e];
      }
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) dot[i] = 0.0f;
      for (int64_t j = 0; j < S; ++j) {
        const float* wj = wb + j * L;
        float* g = gst[j];
        combine_lanes(g, vv.row(b, j, h), got, dv);  // dL/dw[., j] = go[i] . v[j]
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) dot[i] += g[i] * wj[i];
      }
      for (int64_t d = 0; d < dk; ++d)
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) gqt[d][i] = 0.0f;
      for (int64_t j = 0; j < S; ++j) {
        const float* wj = wb + j * L;
        float* g = gst[j];
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) g[i] = wj[i] * (g[i] - dot[i]) * sc;
        const float* kj = kv.row(b, j, h);
        for (int64_t d = 0; d < dk; ++d) {
          const float kd = kj[d];
#pragma omp simd
          for (int64_t i = 0; i < L; ++i) gqt[d][i] += kd * g[i];
        }
        for (int64_t i = 0; i < Q; ++i) { gsr[i][j] = g[i]; wr[i][j] = wj[i]; }
      }
      for (int64_t d = 0; d < dk; ++d)
#pragma omp simd
        for (int64_t j = 0; j < MAXS; ++j) gkt[d][j] = 0.0f;
      for (int64_t e = 0; e < dv; ++e)
#pragma omp simd
        for (int64_t j = 0; j < MAXS; ++j) gvt[e][j] = 0.0f;
      for (int64_t i = 0; i < Q; ++i) {
        const float* qi = qv.row(b, i, h);
        const float* gi = gov.row(b, i, h);
        for (int64_t d = 0; d < dk; ++d) {
          const float qd = qi[d];
#pragma omp simd
          for (int64_t j = 0; j < MAXS; ++j) gkt[d][j] += qd * gsr[i][j];
        }
        for (int64_t e = 0; e < dv; ++e) {
          const float ge = gi[e];
#pragma omp simd
          for (int64_t j = 0; j < MAXS; ++j) gvt[e][j] += ge * wr[i][j];
        }
      }
      for (int64_t i = 0; i < Q; ++i) {
        float* gqi = gqp + ((b * Q + i) * H + h) * dk;
        for (int64_t d = 0; d < dk; ++d) gqi[d] = gqt[d][i];
      }
      for (int64_t j = 0; j < S; ++j) {
        float* gkj = gkp + ((b * S + j) * H + h) * dk;
        float* gvj = gvp + ((b * S + j) * H + h) * dv;
        for (int64_t d = 0; d < dk; ++d) gkj[d] = gkt[d][j];
        for (int64_t e = 0; e < dv; ++e) gvj[e] = gvt[e][j];
      }
    }
  });
  return {gq, gk, gv};
}

}  // namespace

TORCH_LIBRARY(ranker_short_attention, m) {
  m.def("forward(Tensor q, Tensor k, Tensor v, float scale) -> (Tensor, Tensor)");
  m.def("backward(Tensor grad, Tensor q, Tensor k, Tensor v, Tensor w, float scale) -> (Tensor, Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(ranker_short_attention, CPU, m) {
  m.impl("forward", &forward);
  m.impl("backward", &backward);
}
