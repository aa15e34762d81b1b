// Shared device helpers for the gmpi fused kernels: element loads/stores in a wider compute type.
// Works with torch's -D__CUDA_NO_HALF_CONVERSIONS__ (explicit intrinsics only).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace gmpi {

// Compute type: float for float/half/bfloat16 storage, double for double.
template <typename T>
struct ComputeType {
    using type = float;
};
template <>
struct ComputeType<double> {
    using type = double;
};

__host__ __device__ inline float to_compute(float v) { return v; }
__host__ __device__ inline double to_compute(double v) { return v; }
__host__ __device__ inline float to_compute(__half v) { return __half2float(v); }
__host__ __device__ inline float to_compute(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__host__ __device__ inline T from_compute(typename ComputeType<T>::type v);
template <>
__host__ __device__ inline float from_compute<float>(float v) { return v; }
template <>
__host__ __device__ inline double from_compute<double>(double v) { return v; }
template <>
__host__ __device__ inline __half from_compute<__half>(float v) { return __float2half_rn(v); }
template <>
__host__ __device__ inline __nv_bfloat16 from_compute<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Grid size for a grid-stride loop over n elements.
inline unsigned int grid_size(int64_t n, int block) {
    int64_t blocks = (n + block - 1) / block;
    const int64_t max_blocks = 65535LL * 16;
    return static_cast<unsigned int>(blocks < max_blocks ? (blocks > 0 ? blocks : 1) : max_blocks);
}

}  // namespace gmpi
