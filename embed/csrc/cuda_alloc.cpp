// A small C ABI over libtorch's CUDA caching allocator, which tch does not expose:
// releasing cached blocks after an out-of-memory split, and the allocator's own view of
// how much memory it holds (reserved) and hands out (allocated).
//
// It goes through c10's device-generic allocator interface (c10/core), so it needs no
// CUDA headers and builds against CPU-only libtorch too: there no CUDA allocator is
// registered and every call answers "not available".
#include <c10/core/Allocator.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>

namespace {

// The CUDA caching allocator once CUDA has been initialised in this process, else null.
c10::DeviceAllocator* cuda_allocator() {
  try {
    auto* any = c10::GetAllocator(c10::DeviceType::CUDA);
    auto* allocator = dynamic_cast<c10::DeviceAllocator*>(any);
    if (allocator == nullptr || !allocator->initialized()) {
      return nullptr;
    }
    return allocator;
  } catch (...) {
    return nullptr;
  }
}

}  // namespace

extern "C" {

// 1: cached blocks released to the driver; 0: no initialised CUDA allocator here (CPU-only
// libtorch, no GPU, or nothing allocated on a GPU yet); -1: libtorch refused.
int kb_cuda_empty_cache() {
  auto* allocator = cuda_allocator();
  if (allocator == nullptr) {
    return 0;
  }
  try {
    allocator->emptyCache();
    return 1;
  } catch (...) {
    return -1;
  }
}

// 1: `reserved` (bytes the allocator holds from the driver, cached blocks included) and
// `allocated` (bytes in live tensors) of GPU `device` are set; 0: no initialised CUDA
// allocator here; -1: libtorch refused (for instance, a device out of range).
int kb_cuda_allocator_stats(int device, int64_t* reserved, int64_t* allocated) {
  auto* allocator = cuda_allocator();
  if (allocator == nullptr) {
    return 0;
  }
  try {
    const auto aggregate =
        static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    auto stats = allocator->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    *reserved = stats.reserved_bytes[aggregate].current;
    *allocated = stats.allocated_bytes[aggregate].current;
    return 1;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
