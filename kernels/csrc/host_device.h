// One macro for functions that both the CUDA kernels and the host-compiled test harness call.
#pragma once

#if defined(__CUDACC__)
#define FSK_HOST_DEVICE __host__ __device__
#else
#define FSK_HOST_DEVICE
#endif
