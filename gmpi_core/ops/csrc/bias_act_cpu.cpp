// Fused bias + activation + gain + clamp and its first/second derivatives on the CPU (docs/method.md §4.1,
// §11.5): the CUDA kernel's semantics (bias_act_kernel.cu, same activation math from bias_act_math.h) in
// one pass over the elements instead of the 4-7 passes of the reference path, forward and backward.
//
// z = x + b; mode 0 writes clamp(act(z)·gain), mode 1 g·gain·act'(z)·mask, mode 2 g·gain·act''(z)·mask,
// where mask = 1 iff |gain·act(z)| <= clamp (torch.clamp's gradient convention) or clamping is off.
// x is seen as [outer, bias_size, inner] (bias along `dim`): threads take ranges of elements and walk
// them in runs of one bias value (rows of `inner` contiguous elements), which the compiler vectorises.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "bias_act_math.h"

namespace {

template <typename C>
inline C element(const gmpi::BiasActParams& p, C z, C g) {
    const C alpha = static_cast<C>(p.alpha);
    const C gain = static_cast<C>(p.gain);
    const C clamp = static_cast<C>(p.clamp);
    if (p.mode == 0) {
        C result = gmpi::act_value(p.act, z, alpha) * gain;
        if (p.clamp >= 0.0) result = result > clamp ? clamp : (result < -clamp ? -clamp : result);
        return result;
    }
    const C slope = p.mode == 1 ? gmpi::act_grad(p.act, z, alpha) : gmpi::act_grad2(p.act, z);
    C result = g * gain * slope;
    if (p.clamp >= 0.0) {
        const C pre = gmpi::act_value(p.act, z, alpha) * gain;
        if (!(pre >= -clamp && pre <= clamp)) result = C(0);
    }
    return result;
}

// The common case of every StyleGAN2 layer, written out so that the inner loop has no switch: leaky ReLU
// (or linear) with an optional clamp, modes 0 and 1.
template <typename C>
inline void lrelu_row(const C* x, const C* g, C* out, int64_t n, C bias, C alpha, C gain, C clamp, bool clamped,
                      int mode, bool leaky) {
    const C slope_neg = leaky ? alpha : C(1);
    if (mode == 0) {
        for (int64_t i = 0; i < n; ++i) {
            const C z = x[i] + bias;
            C y = (z > C(0) ? z : z * slope_neg) * gain;
            if (clamped) y = y > clamp ? clamp : (y < -clamp ? -clamp : y);
            out[i] = y;
        }
    } else {
        for (int64_t i = 0; i < n; ++i) {
            const C z = x[i] + bias;
            const C pre = (z > C(0) ? z : z * slope_neg) * gain;
            C d = g[i] * gain * (z > C(0) ? C(1) : slope_neg);
            if (clamped && !(pre >= -clamp && pre <= clamp)) d = C(0);
            out[i] = d;
        }
    }
}

template <typename C>
void run(const gmpi::BiasActParams& p, int64_t inner) {
    const C* x = static_cast<const C*>(p.x);
    const C* b = static_cast<const C*>(p.b);
    const C* g = static_cast<const C*>(p.g);
    C* out = static_cast<C*>(p.out);
    const bool fast = (p.act == gmpi::kLrelu || p.act == gmpi::kLinear) && p.mode != 2;
    at::parallel_for(0, p.numel, 16384, [&](int64_t begin, int64_t end) {
        // a range of elements, walked in runs that share one bias value (one row of `inner` elements)
        for (int64_t i = begin; i < end;) {
            const int64_t row = i / inner;
            const int64_t stop = std::min((row + 1) * inner, end);
            const C bias = b != nullptr ? b[row % p.bias_size] : C(0);
            if (fast) {
                lrelu_row<C>(x + i, g != nullptr ? g + i : nullptr, out + i, stop - i, bias, static_cast<C>(p.alpha),
                             static_cast<C>(p.gain), static_cast<C>(p.clamp), p.clamp >= 0.0, p.mode,
                             p.act == gmpi::kLrelu);
            } else {
                for (int64_t k = i; k < stop; ++k) out[k] = element<C>(p, x[k] + bias, g != nullptr ? g[k] : C(0));
            }
            i = stop;
        }
    });
}

// b and g may be empty tensors, meaning "no bias" and "no incoming gradient" (mode 0).
torch::Tensor bias_act(torch::Tensor x, torch::Tensor b, torch::Tensor g, int64_t dim, int64_t mode, int64_t act,
                       double alpha, double gain, double clamp) {
    TORCH_CHECK(x.device().is_cpu() && x.is_contiguous(), "bias_act (CPU): x must be a contiguous CPU tensor");
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                "bias_act (CPU): x must be float32 or float64, got ", x.scalar_type());
    TORCH_CHECK(mode >= 0 && mode <= 2, "bias_act: mode must be 0, 1 or 2, got ", mode);
    TORCH_CHECK(act >= gmpi::kLinear && act <= gmpi::kSwish, "bias_act: unknown activation code ", act);
    const bool has_bias = b.numel() > 0;
    if (has_bias) {
        TORCH_CHECK(dim >= 0 && dim < x.dim(), "bias_act: dim ", dim, " out of range for ", x.dim(), "-D x");
        TORCH_CHECK(b.dim() == 1 && b.size(0) == x.size(dim), "bias_act: b must have x.size(dim) entries");
        TORCH_CHECK(b.is_contiguous() && b.device() == x.device() && b.scalar_type() == x.scalar_type(),
                    "bias_act: b must be contiguous, on x's device and of x's dtype");
    }
    if (mode != 0) {
        TORCH_CHECK(g.sizes() == x.sizes(), "bias_act: gradient must have x's shape");
        TORCH_CHECK(g.is_contiguous() && g.device() == x.device() && g.scalar_type() == x.scalar_type(),
                    "bias_act: gradient must be contiguous, on x's device and of x's dtype");
    }
    torch::Tensor out = torch::empty(x.sizes(), x.options());
    if (x.numel() == 0) return out;

    gmpi::BiasActParams p{};
    p.x = x.data_ptr();
    p.b = has_bias ? b.data_ptr() : nullptr;
    p.g = mode != 0 ? g.data_ptr() : nullptr;
    p.out = out.data_ptr();
    p.numel = x.numel();
    p.bias_size = has_bias ? x.size(dim) : 1;
    p.bias_stride = 1;
    if (has_bias) {
        for (int64_t d = dim + 1; d < x.dim(); ++d) p.bias_stride *= x.size(d);
    } else {
        p.bias_stride = p.numel;
    }
    p.mode = static_cast<int>(mode);
    p.act = static_cast<int>(act);
    p.alpha = alpha;
    p.gain = gain;
    p.clamp = clamp;
    if (x.scalar_type() == at::kDouble) {
        run<double>(p, p.bias_stride);
    } else {
        run<float>(p, p.bias_stride);
    }
    return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act, "Fused bias + activation + gain + clamp and its derivatives (CPU)");
}
