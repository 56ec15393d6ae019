// launch.cuh: the launch shape the element-wise kernels share: a full warp's
// lane mask, 256 threads a block, and a grid of blocks for n elements,
// capped at 65535 (the kernels stride over the rest).
#pragma once

#include <stddef.h>

constexpr unsigned kFull = 0xffffffffu;
constexpr int kThreads = 256;

inline unsigned blocks_for(size_t n)
{
    size_t b = (n + kThreads - 1) / kThreads;
    return (unsigned)(b < 65535 ? (b ? b : 1) : 65535);
}
