// The serial HDF5 library (Debian's libhdf5-dev) is not thread-safe: every HDF5 call in the
// process, from any module (dataloader/ reading HDF5 datasets, checkpoint/ writing shards from its
// writer thread), is made with this one mutex held. No HDF5 header here, so users of this lock
// need not see HDF5.
#pragma once

#include <mutex>

namespace cohort {

std::mutex& Hdf5Mutex();

}  // namespace cohort
