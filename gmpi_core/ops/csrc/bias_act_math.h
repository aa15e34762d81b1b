// Activation math of the fused bias_act kernels, shared by the CUDA kernel (bias_act_kernel.cu) and the
// CPU kernel (bias_act_cpu.cpp): act(z), act'(z), act''(z) with torch's conventions at the kinks.
// Plain C++ for the host compiler; __host__ __device__ under nvcc. Semantics: gmpi_core/ops/bias_act.py.
#pragma once

#include <cmath>

#include "bias_act.h"

#ifdef __CUDACC__
#define GMPI_HD __host__ __device__
#else
#define GMPI_HD
#endif

namespace gmpi {

constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSoftplusThreshold = 20.0;  // torch.nn.functional.softplus: linear above it

GMPI_HD inline float dev_exp(float v) { return expf(v); }
GMPI_HD inline double dev_exp(double v) { return exp(v); }
GMPI_HD inline float dev_expm1(float v) { return expm1f(v); }
GMPI_HD inline double dev_expm1(double v) { return expm1(v); }
GMPI_HD inline float dev_log1p(float v) { return log1pf(v); }
GMPI_HD inline double dev_log1p(double v) { return log1p(v); }
GMPI_HD inline float dev_tanh(float v) { return tanhf(v); }
GMPI_HD inline double dev_tanh(double v) { return tanh(v); }

template <typename C>
GMPI_HD inline C sigmoid(C z) {
    return C(1) / (C(1) + dev_exp(-z));
}

template <typename C>
GMPI_HD C act_value(int act, C z, C alpha) {
    switch (act) {
        case kRelu: return z > C(0) ? z : C(0);
        case kLrelu: return z > C(0) ? z : z * alpha;
        case kTanh: return dev_tanh(z);
        case kSigmoid: return sigmoid(z);
        case kElu: return z > C(0) ? z : dev_expm1(z);
        case kSelu: return z > C(0) ? C(kSeluScale) * z : C(kSeluScale * kSeluAlpha) * dev_expm1(z);
        case kSoftplus: return z > C(kSoftplusThreshold) ? z : dev_log1p(dev_exp(z));
        case kSwish: return z * sigmoid(z);
        default: return z;  // kLinear
    }
}

// d act / dz, with torch's choices at the kinks (relu'(0) = 0, lrelu'(0) = alpha, selu'(0) from the left).
template <typename C>
GMPI_HD C act_grad(int act, C z, C alpha) {
    switch (act) {
        case kRelu: return z > C(0) ? C(1) : C(0);
        case kLrelu: return z > C(0) ? C(1) : alpha;
        case kTanh: {
            const C t = dev_tanh(z);
            return C(1) - t * t;
        }
        case kSigmoid: {
            const C s = sigmoid(z);
            return s * (C(1) - s);
        }
        case kElu: return z > C(0) ? C(1) : dev_exp(z);
        case kSelu: return z > C(0) ? C(kSeluScale) : C(kSeluScale * kSeluAlpha) * dev_exp(z);
        case kSoftplus: return z > C(kSoftplusThreshold) ? C(1) : sigmoid(z);
        case kSwish: {
            const C s = sigmoid(z);
            return s * (C(1) + z * (C(1) - s));
        }
        default: return C(1);  // kLinear
    }
}

// d² act / dz² (zero for the piecewise-linear activations).
template <typename C>
GMPI_HD C act_grad2(int act, C z) {
    switch (act) {
        case kTanh: {
            const C t = dev_tanh(z);
            return C(-2) * t * (C(1) - t * t);
        }
        case kSigmoid: {
            const C s = sigmoid(z);
            return s * (C(1) - s) * (C(1) - C(2) * s);
        }
        case kElu: return z > C(0) ? C(0) : dev_exp(z);
        case kSelu: return z > C(0) ? C(0) : C(kSeluScale * kSeluAlpha) * dev_exp(z);
        case kSoftplus: {
            if (z > C(kSoftplusThreshold)) return C(0);
            const C s = sigmoid(z);
            return s * (C(1) - s);
        }
        case kSwish: {
            const C s = sigmoid(z);
            return s * (C(1) - s) * (C(2) + z * (C(1) - C(2) * s));
        }
        default: return C(0);  // kLinear, kRelu, kLrelu
    }
}

}  // namespace gmpi
