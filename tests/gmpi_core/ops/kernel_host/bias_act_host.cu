// Host harness: runs the fused bias_act kernel's per-element math on the CPU (no GPU needed).
// Usage: bias_act_host IN OUT DTYPE(0=f32,1=f64) NUMEL HAS_BIAS BIAS_SIZE BIAS_STRIDE MODE ACT ALPHA GAIN CLAMP
// IN holds x[NUMEL], then b[BIAS_SIZE] if HAS_BIAS, then g[NUMEL] if MODE != 0; OUT receives out[NUMEL].
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bias_act_kernel.cu"

template <typename T>
int run(char** argv) {
    gmpi::BiasActParams p{};
    p.numel = std::atoll(argv[4]);
    const bool has_bias = std::atoi(argv[5]) != 0;
    p.bias_size = std::atoll(argv[6]);
    p.bias_stride = std::atoll(argv[7]);
    p.mode = std::atoi(argv[8]);
    p.act = std::atoi(argv[9]);
    p.alpha = std::atof(argv[10]);
    p.gain = std::atof(argv[11]);
    p.clamp = std::atof(argv[12]);
    std::vector<T> x(p.numel), b(has_bias ? p.bias_size : 0), g(p.mode != 0 ? p.numel : 0), out(p.numel);
    FILE* in = std::fopen(argv[1], "rb");
    if (in == nullptr) return 2;
    size_t n = std::fread(x.data(), sizeof(T), x.size(), in);
    n += std::fread(b.data(), sizeof(T), b.size(), in);
    n += std::fread(g.data(), sizeof(T), g.size(), in);
    std::fclose(in);
    if (n != x.size() + b.size() + g.size()) return 3;
    p.x = x.data();
    p.b = has_bias ? b.data() : nullptr;
    p.g = p.mode != 0 ? g.data() : nullptr;
    p.out = out.data();
    for (int64_t i = 0; i < p.numel; ++i) gmpi::bias_act_element<T>(p, i);
    FILE* o = std::fopen(argv[2], "wb");
    if (o == nullptr) return 4;
    std::fwrite(out.data(), sizeof(T), out.size(), o);
    std::fclose(o);
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 13) return 1;
    return std::atoi(argv[3]) == 1 ? run<double>(argv) : run<float>(argv);
}
