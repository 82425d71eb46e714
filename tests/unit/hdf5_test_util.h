// Test helper: writing HDF5 fixture files with the HDF5 C API (hdf5_source_test, trainer_test).
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace cohort::testing {

// Writes datasets into a new HDF5 file; closes it on destruction. Values are given as int64 and
// converted by HDF5 to each dataset's file type.
class H5Writer {
 public:
  explicit H5Writer(const std::string& path) {
    file_ = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    EXPECT_GE(file_, 0) << "H5Fcreate " << path;
  }
  ~H5Writer() {
    if (file_ >= 0) H5Fclose(file_);
  }
  H5Writer(const H5Writer&) = delete;
  H5Writer& operator=(const H5Writer&) = delete;

  // dims empty: a scalar dataset. values empty: nothing written (fill values). chunk > 0: chunked
  // along the first dimension and gzip-compressed.
  void Add(const std::string& name, hid_t type, const std::vector<hsize_t>& dims,
           const std::vector<int64_t>& values = {}, hsize_t chunk = 0) {
    const hid_t space = dims.empty() ? H5Screate(H5S_SCALAR)
                                     : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
    ASSERT_GE(space, 0);
    const hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (chunk > 0) {
      std::vector<hsize_t> chunk_dims = dims;
      chunk_dims[0] = chunk;
      ASSERT_GE(H5Pset_chunk(dcpl, static_cast<int>(chunk_dims.size()), chunk_dims.data()), 0);
      ASSERT_GE(H5Pset_deflate(dcpl, 6), 0);
    }
    const hid_t dset = H5Dcreate2(file_, name.c_str(), type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    ASSERT_GE(dset, 0) << "H5Dcreate2 " << name;
    if (!values.empty()) {
      EXPECT_GE(H5Dwrite(dset, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
    }
    H5Dclose(dset);
    H5Pclose(dcpl);
    H5Sclose(space);
  }

  void AddGroup(const std::string& name) {
    const hid_t g = H5Gcreate2(file_, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    ASSERT_GE(g, 0);
    H5Gclose(g);
  }

  hid_t id() const { return file_; }

 private:
  hid_t file_ = -1;
};

// A 1-D dataset "tokens" of `values` in a new file.
void Write1D(const std::string& path, hid_t type, const std::vector<int64_t>& values) {
  H5Writer w(path);
  w.Add("tokens", type, {values.size()}, values);
}

}  // namespace cohort::testing
