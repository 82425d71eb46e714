// The POSIX backend of storage::Storage (internal to storage/; callers get it from StorageFor).
//
// Objects are regular files named by a bare path or a file:///abs/path URI; results (List, error
// messages) keep the caller's spelling. Directories exist only as a POSIX detail: Create needs the
// parent directory (MakeParents makes it), List skips directories, Remove refuses them, and Sync
// and Rename accept them (a directory's fsync makes its entries durable; a staged checkpoint
// directory may be renamed into place).
#pragma once

#include "storage/storage.h"

namespace cohort::storage {

// The process-wide POSIX storage. It holds no state (every call works on its arguments and the
// file system), so one instance serves all threads; it is never destroyed, so it stays valid for
// the process lifetime, also during static destruction.
Storage* PosixStorage();

}  // namespace cohort::storage
