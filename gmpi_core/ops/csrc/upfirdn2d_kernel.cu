// Fused upsample (zero insertion) + pad/crop + FIR correlation + decimation (docs/method.md §11.5).
// One thread per output sample; only the taps that land on non-inserted input samples are visited.
#include "common.cuh"
#include "upfirdn2d.h"

namespace gmpi {
namespace {

// Taps j in [first, end) with stride `up` for which (base + j) is a multiple of `up` inside [0, n·up).
__host__ __device__ inline void tap_range(int base, int up, int n, int filter, int& first, int& end) {
    first = base < 0 ? -base : 0;
    const int rem = (base + first) % up;  // base + first >= 0
    if (rem != 0) first += up - rem;
    const int limit = n * up - base;  // base + j < n·up
    end = limit < filter ? limit : filter;
}

// One output sample; __host__ so that the indexing can be unit-tested on a machine without a GPU.
template <typename T>
__host__ __device__ inline void upfirdn2d_element(const Upfirdn2dParams& p, int64_t i) {
    using C = typename ComputeType<T>::type;
    const C* g = static_cast<const C*>(p.g);
    const int64_t plane_out = static_cast<int64_t>(p.out_h) * p.out_w;
    const int ox = static_cast<int>(i % p.out_w);
    const int oy = static_cast<int>((i / p.out_w) % p.out_h);
    const int64_t plane = i / plane_out;
    const int base_y = oy * p.down_y - p.pad_y0;
    const int base_x = ox * p.down_x - p.pad_x0;
    int j0, j1, k0, k1;
    tap_range(base_y, p.up_y, p.in_h, p.filter_h, j0, j1);
    tap_range(base_x, p.up_x, p.in_w, p.filter_w, k0, k1);
    const T* x_plane = static_cast<const T*>(p.x) + plane * p.in_h * p.in_w;
    C acc = C(0);
    for (int j = j0; j < j1; j += p.up_y) {
        const T* x_row = x_plane + static_cast<int64_t>((base_y + j) / p.up_y) * p.in_w;
        const C* g_row = g + static_cast<int64_t>(j) * p.filter_w;
        for (int k = k0; k < k1; k += p.up_x) {
            acc += to_compute(x_row[(base_x + k) / p.up_x]) * g_row[k];
        }
    }
    static_cast<T*>(p.y)[i] = from_compute<T>(acc);
}

template <typename T>
__global__ void upfirdn2d_kernel(Upfirdn2dParams p) {
    const int64_t total = p.planes * p.out_h * p.out_w;
    const int64_t step = static_cast<int64_t>(blockDim.x) * gridDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += step) {
        upfirdn2d_element<T>(p, i);
    }
}

template <typename T>
int launch_typed(const Upfirdn2dParams& p, cudaStream_t stream) {
    constexpr int kBlock = 256;
    const int64_t total = p.planes * p.out_h * p.out_w;
    upfirdn2d_kernel<T><<<grid_size(total, kBlock), kBlock, 0, stream>>>(p);
    return static_cast<int>(cudaGetLastError());
}

}  // namespace

int launch_upfirdn2d(const Upfirdn2dParams& p, void* stream) {
    if (p.planes == 0 || p.out_h == 0 || p.out_w == 0) return 0;
    cudaStream_t s = static_cast<cudaStream_t>(stream);
    switch (p.dtype) {
        case kUpfirdnFloat32: return launch_typed<float>(p, s);
        case kUpfirdnFloat64: return launch_typed<double>(p, s);
        case kUpfirdnFloat16: return launch_typed<__half>(p, s);
        case kUpfirdnBFloat16: return launch_typed<__nv_bfloat16>(p, s);
        default: return static_cast<int>(cudaErrorInvalidValue);
    }
}

const char* upfirdn2d_error_string(int code) { return cudaGetErrorString(static_cast<cudaError_t>(code)); }

}  // namespace gmpi
