#include "common/hdf5_lock.h"

namespace cohort {

std::mutex& Hdf5Mutex() {
  static std::mutex mutex;
  return mutex;
}

}  // namespace cohort
