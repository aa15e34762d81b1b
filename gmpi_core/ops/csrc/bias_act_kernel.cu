// Fused bias + activation + gain + clamp and its first/second derivatives (spec §4.1, §11.5).
// z = x + b; mode 0 writes clamp(act(z)·gain), mode 1 g·gain·act'(z)·mask, mode 2 g·gain·act''(z)·mask,
// where mask = 1 iff |gain·act(z)| <= clamp (torch.clamp's gradient convention) or clamping is off.
#include "bias_act.h"
#include "common.cuh"

namespace gmpi {
namespace {

constexpr double kSeluScale = 1.0507009873554804934193349852946;
constexpr double kSeluAlpha = 1.6732632423543772848170429916717;
constexpr double kSoftplusThreshold = 20.0;  // torch.nn.functional.softplus: linear above it

__host__ __device__ inline float dev_exp(float v) { return expf(v); }
__host__ __device__ inline double dev_exp(double v) { return exp(v); }
__host__ __device__ inline float dev_expm1(float v) { return expm1f(v); }
__host__ __device__ inline double dev_expm1(double v) { return expm1(v); }
__host__ __device__ inline float dev_log1p(float v) { return log1pf(v); }
__host__ __device__ inline double dev_log1p(double v) { return log1p(v); }
__host__ __device__ inline float dev_tanh(float v) { return tanhf(v); }
__host__ __device__ inline double dev_tanh(double v) { return tanh(v); }

template <typename C>
__host__ __device__ inline C sigmoid(C z) {
    return C(1) / (C(1) + dev_exp(-z));
}

template <typename C>
__host__ __device__ C act_value(int act, C z, C alpha) {
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
__host__ __device__ C act_grad(int act, C z, C alpha) {
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
__host__ __device__ C act_grad2(int act, C z) {
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

// One output element; __host__ so that the math can be unit-tested on a machine without a GPU.
template <typename T>
__host__ __device__ inline void bias_act_element(const BiasActParams& p, int64_t i) {
    using C = typename ComputeType<T>::type;
    const T* b = static_cast<const T*>(p.b);
    const C alpha = static_cast<C>(p.alpha);
    const C gain = static_cast<C>(p.gain);
    const C clamp = static_cast<C>(p.clamp);
    C z = to_compute(static_cast<const T*>(p.x)[i]);
    if (b != nullptr) z += to_compute(b[(i / p.bias_stride) % p.bias_size]);
    C result;
    if (p.mode == 0) {
        result = act_value(p.act, z, alpha) * gain;
        if (p.clamp >= 0.0) result = result > clamp ? clamp : (result < -clamp ? -clamp : result);
    } else {
        const C slope = p.mode == 1 ? act_grad(p.act, z, alpha) : act_grad2(p.act, z);
        result = to_compute(static_cast<const T*>(p.g)[i]) * gain * slope;
        if (p.clamp >= 0.0) {
            const C pre = act_value(p.act, z, alpha) * gain;
            if (!(pre >= -clamp && pre <= clamp)) result = C(0);
        }
    }
    static_cast<T*>(p.out)[i] = from_compute<T>(result);
}

template <typename T>
__global__ void bias_act_kernel(BiasActParams p) {
    const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < p.numel; i += step) {
        bias_act_element<T>(p, i);
    }
}

template <typename T>
int launch_typed(const BiasActParams& p, cudaStream_t stream) {
    constexpr int kBlock = 256;
    bias_act_kernel<T><<<grid_size(p.numel, kBlock), kBlock, 0, stream>>>(p);
    return static_cast<int>(cudaGetLastError());
}

}  // namespace

int launch_bias_act(const BiasActParams& p, void* stream) {
    if (p.numel == 0) return 0;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (p.dtype) {
        case kFloat32: return launch_typed<float>(p, s);
        case kFloat64: return launch_typed<double>(p, s);
        case kFloat16: return launch_typed<__half>(p, s);
        case kBFloat16: return launch_typed<__nv_bfloat16>(p, s);
        default: return static_cast<int>(cudaErrorInvalidValue);
    }
}

const char* bias_act_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace gmpi
