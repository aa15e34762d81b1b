// Host harness: runs the fused upfirdn2d kernel's per-sample code on the CPU (no GPU needed).
// Usage: upfirdn2d_host IN OUT DTYPE(0=f32,1=f64) PLANES IN_H IN_W OUT_H OUT_W FH FW UPX UPY DOWNX DOWNY PADX0 PADY0
// IN holds x[PLANES*IN_H*IN_W] then g[FH*FW]; OUT receives y[PLANES*OUT_H*OUT_W].
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "upfirdn2d_kernel.cu"

template <typename T>
int run(char** argv) {
    gmpi::Upfirdn2dParams p{};
    p.planes = std::atoll(argv[4]);
    int* fields[] = {&p.in_h, &p.in_w, &p.out_h, &p.out_w, &p.filter_h, &p.filter_w, &p.up_x,
                     &p.up_y, &p.down_x, &p.down_y, &p.pad_x0, &p.pad_y0};
    for (int k = 0; k < 12; ++k) *fields[k] = std::atoi(argv[5 + k]);
    std::vector<T> x(p.planes * p.in_h * p.in_w), g(p.filter_h * p.filter_w), y(p.planes * p.out_h * p.out_w);
    FILE* in = std::fopen(argv[1], "rb");
    if (in == nullptr) return 2;
    size_t n = std::fread(x.data(), sizeof(T), x.size(), in);
    n += std::fread(g.data(), sizeof(T), g.size(), in);
    std::fclose(in);
    if (n != x.size() + g.size()) return 3;
    p.x = x.data();
    p.g = g.data();
    p.y = y.data();
    for (int64_t i = 0; i < static_cast<int64_t>(y.size()); ++i) gmpi::upfirdn2d_element<T>(p, i);
    FILE* o = std::fopen(argv[2], "wb");
    if (o == nullptr) return 4;
    std::fwrite(y.data(), sizeof(T), y.size(), o);
    std::fclose(o);
    return 0;
}

int main(int argc, char** argv) {
    if (argc != 17) return 1;
    return std::atoi(argv[3]) == 1 ? run<double>(argv) : run<float>(argv);
}
