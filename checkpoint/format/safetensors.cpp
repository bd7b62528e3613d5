#include "nnx/checkpoint/format/safetensors.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "nnx/checkpoint/io/fs.h"
#include "nnx/framework/error.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors stores little-endian bytes");

namespace nnx::checkpoint {

namespace {

struct DtypeName {
  const char* name;
  at::ScalarType type;
};
constexpr DtypeName kDtypes[] = {{"BOOL", at::kBool}, {"U8", at::kByte},       {"I8", at::kChar},   {"I16", at::kShort},
                                 {"I32", at::kInt},   {"I64", at::kLong},       {"F16", at::kHalf},  {"BF16", at::kBFloat16},
                                 {"F32", at::kFloat}, {"F64", at::kDouble}};

std::string known_dtypes() {
  std::string s;
  for (const auto& d : kDtypes) s += (s.empty() ? "" : ", ") + std::string(d.name);
  return s;
}

// One tensor as the header describes it, its byte range relative to the data after the header.
struct Entry {
  std::string name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
};

uint64_t u64_at(const nlohmann::json& v, const std::string& what, const std::string& source) {
  NNX_CHECK(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0), source, ": ", what,
            " must be a non-negative integer, found ", v.dump().substr(0, 40));
  return v.get<uint64_t>();
}

Entry parse_entry(const std::string& name, const nlohmann::json& info, const std::string& source) {
  const std::string where = source + ": tensor '" + name + "'";
  NNX_CHECK(info.is_object(), where, ": expected an object with dtype, shape and data_offsets");
  for (auto it = info.begin(); it != info.end(); ++it)
    NNX_CHECK(it.key() == "dtype" || it.key() == "shape" || it.key() == "data_offsets", where, ": unknown field '", it.key(), "'");
  NNX_CHECK(info.contains("dtype") && info["dtype"].is_string(), where, ": dtype must be a string");
  Entry e{name, at::kFloat, {}, 0, 0};
  const std::string dtype = info["dtype"].get<std::string>();
  const auto* d = std::find_if(std::begin(kDtypes), std::end(kDtypes), [&](const DtypeName& k) { return dtype == k.name; });
  NNX_CHECK(d != std::end(kDtypes), where, ": dtype '", dtype, "' is not supported (expected one of ", known_dtypes(), ")");
  e.dtype = d->type;
  NNX_CHECK(info.contains("shape") && info["shape"].is_array() && info["shape"].size() <= 64, where,
            ": shape must be a list of at most 64 sizes");
  uint64_t count = 1, strides = 1;  // strides: the product of the non-zero sizes, as libtorch's strides need
  bool overflow = false, strides_overflow = false;
  for (const auto& s : info["shape"]) {
    const uint64_t n = u64_at(s, "tensor '" + name + "': a shape entry", source);
    NNX_CHECK(n <= uint64_t(INT64_MAX), where, ": shape entry ", n, " is too large");
    overflow = overflow || (n != 0 && count > UINT64_MAX / n);
    count = overflow ? count : count * n;
    if (n != 0 && !strides_overflow) {
      strides_overflow = strides > uint64_t(INT64_MAX) / n;
      strides *= n;
    }
    e.shape.push_back(static_cast<int64_t>(n));
  }
  // With elements, the byte count below bounds the sizes; with none, only this does.
  NNX_CHECK(count != 0 || !strides_overflow, where, ": shape ", info["shape"].dump(),
            " is too large for a tensor (its strides overflow, even with no elements)");
  const auto& off = info.contains("data_offsets") ? info["data_offsets"] : nlohmann::json();
  NNX_CHECK(off.is_array() && off.size() == 2, where, ": data_offsets must be [begin, end]");
  e.begin = u64_at(off[0], "tensor '" + name + "': data_offsets[0]", source);
  e.end = u64_at(off[1], "tensor '" + name + "': data_offsets[1]", source);
  NNX_CHECK(e.begin <= e.end, where, ": data_offsets [", e.begin, ", ", e.end, "] end before they begin");
  const uint64_t item = at::elementSize(e.dtype);
  overflow = overflow || count > UINT64_MAX / item;
  NNX_CHECK(!overflow && count * item == e.end - e.begin, where, ": shape ", info["shape"].dump(), " of ", dtype, " needs ",
            overflow ? std::string("more than 2^64") : std::to_string(count * item), " bytes, but data_offsets give ",
            e.end - e.begin);
  return e;
}

// The header's JSON, checked while it is parsed, before the tree grows: no deeper than a
// header goes (root, tensor, shape list), lists of at most 64 entries, no name and no field of
// a tensor given twice (the parser would silently keep the last one), and no NUL byte (the
// parser would stop reading there).
nlohmann::json parse_header_json(const char* text, size_t size, const std::string& source) {
  NNX_CHECK(std::memchr(text, '\0', size) == nullptr, source, ": the header holds a NUL byte");
  using Event = nlohmann::json::parse_event_t;
  std::set<std::string> names, fields;
  size_t entries = 0;
  auto guard = [&](int depth, Event event, nlohmann::json& parsed) {
    NNX_CHECK(depth <= 3, source, ": the header nests deeper than a safetensors header does (depth ", depth, ")");
    if (event == Event::key && depth == 1)
      NNX_CHECK(names.insert(parsed.get<std::string>()).second, source, ": the header names '", parsed.get<std::string>(), "' twice");
    if (event == Event::object_start && depth == 1) fields.clear();
    if (event == Event::key && depth == 2)
      NNX_CHECK(fields.insert(parsed.get<std::string>()).second, source, ": a tensor's field '", parsed.get<std::string>(),
                "' is given twice");
    if (event == Event::array_start && depth == 2) entries = 0;
    if (event == Event::value && depth == 3)
      NNX_CHECK(++entries <= 64, source, ": a list of more than 64 entries (a shape has at most 64)");
    return true;
  };
  try {
    return nlohmann::json::parse(text, text + size, guard);
  } catch (const nlohmann::json::exception& e) {
    NNX_CHECK(false, source, ": the header is not valid JSON (", e.what(), ")");
  }
  return {};
}

// Validates the header against a data section of `data_size` bytes; the entries in file order.
std::vector<Entry> parse_header(const char* text, size_t size, uint64_t data_size, const std::string& source,
                                std::map<std::string, std::string>& metadata) {
  NNX_CHECK(size > 0 && text[0] == '{', source, ": the header must be a JSON object (it starts with '{')");
  const nlohmann::json header = parse_header_json(text, size, source);
  NNX_CHECK(header.is_object(), source, ": the header must be a JSON object");
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      NNX_CHECK(it->is_object(), source, ": __metadata__ must map strings to strings");
      for (auto m = it->begin(); m != it->end(); ++m) {
        NNX_CHECK(m->is_string(), source, ": __metadata__ '", m.key(), "' must be a string");
        metadata[m.key()] = m->get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(it.key(), *it, source));
  }
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  uint64_t expected = 0;  // each range starts where the previous ended: no hole, no overlap
  for (const auto& e : entries) {
    NNX_CHECK(e.begin == expected, source, ": tensor '", e.name, "' starts at data byte ", e.begin, ", expected ", expected,
              e.begin < expected ? " (it overlaps the previous tensor)" : " (a hole before it)");
    expected = e.end;
  }
  NNX_CHECK(expected == data_size, source, ": the tensors cover ", expected, " data bytes, but the file holds ", data_size,
            expected > data_size ? " (a tensor ends past the end of the file)" : " (bytes after the last tensor)");
  return entries;
}

at::Tensor empty_for(const Entry& e) { return at::empty(e.shape, at::TensorOptions().dtype(e.dtype)); }

uint64_t header_length(const unsigned char* first8, uint64_t file_size, const std::string& source) {
  NNX_CHECK(file_size >= 8, source, ": ", file_size, " bytes, too short for a safetensors file (8-byte header length first)");
  uint64_t n = 0;
  std::memcpy(&n, first8, 8);
  NNX_CHECK(n <= kSafetensorsMaxHeader, source, ": header length ", n, " is over the limit of ", kSafetensorsMaxHeader, " bytes");
  NNX_CHECK(n <= file_size - 8, source, ": header length ", n, " runs past the end of the file (", file_size, " bytes)");
  return n;
}

}  // namespace

Safetensors parse_safetensors(const void* data, size_t size, const std::string& source) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  const uint64_t n = header_length(bytes, size, source);
  Safetensors out;
  const auto* text = reinterpret_cast<const char*>(bytes + 8);
  const unsigned char* body = bytes + 8 + n;
  for (const Entry& e : parse_header(text, n, size - 8 - n, source, out.metadata)) {
    at::Tensor t = empty_for(e);
    if (e.end > e.begin) std::memcpy(t.data_ptr(), body + e.begin, e.end - e.begin);
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

namespace {

// An open file descriptor, closed when it goes.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads exactly `len` bytes at `offset` into `out`, in calls of at most 1 GiB.
void read_exactly(int fd, void* out, uint64_t len, uint64_t offset, const std::string& path) {
  auto* p = static_cast<char*>(out);
  for (uint64_t done = 0; done < len;) {
    const ssize_t r = ::pread(fd, p + done, std::min<uint64_t>(len - done, uint64_t(1) << 30), static_cast<off_t>(offset + done));
    NNX_CHECK_IO(r > 0, "cannot read '", path, "' at byte ", offset + done, ": ", r == 0 ? "unexpected end of file" : std::strerror(errno));
    done += static_cast<uint64_t>(r);
  }
}

}  // namespace

Safetensors read_safetensors(const std::string& path) {
  Fd f{::open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  NNX_CHECK_IO(f.fd >= 0, "cannot open '", path, "': ", std::strerror(errno));
  struct stat st {};
  NNX_CHECK_IO(::fstat(f.fd, &st) == 0, "cannot stat '", path, "': ", std::strerror(errno));
  NNX_CHECK(S_ISREG(st.st_mode), path, ": not a regular file");
  const auto file_size = static_cast<uint64_t>(st.st_size);
  unsigned char first8[8] = {};
  if (file_size >= 8) read_exactly(f.fd, first8, 8, 0, path);
  const uint64_t n = header_length(first8, file_size, path);
  std::string header(n, '\0');
  read_exactly(f.fd, header.data(), n, 8, path);
  Safetensors out;
  const std::vector<Entry> entries = parse_header(header.data(), n, file_size - 8 - n, path, out.metadata);
  ::posix_fadvise(f.fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  for (const Entry& e : entries) {  // straight into each tensor's memory: no staging copy
    at::Tensor t = empty_for(e);
    read_exactly(f.fd, t.data_ptr(), e.end - e.begin, 8 + n + e.begin, path);
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata, bool sync) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<at::Tensor> data;
  uint64_t offset = 0;
  for (const auto& entry : tensors) {
    const std::string& name = entry.first;  // not a structured binding: clang 14 cannot capture one
    const at::Tensor& tensor = entry.second;
    NNX_CHECK(name != "__metadata__" && !header.contains(name), path, ": tensor name '", name, "' is ",
              name == "__metadata__" ? "reserved" : "given twice");
    const auto* d = std::find_if(std::begin(kDtypes), std::end(kDtypes), [&](const DtypeName& k) { return k.type == tensor.scalar_type(); });
    NNX_CHECK(d != std::end(kDtypes), path, ": tensor '", name, "' has dtype ", tensor.scalar_type(),
              ", which safetensors cannot hold here (expected one of ", known_dtypes(), ")");
    at::Tensor t = tensor.to(at::kCPU).contiguous();
    const uint64_t bytes = static_cast<uint64_t>(t.nbytes());
    header[name] = {{"dtype", d->name}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    data.push_back(std::move(t));
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception&) {
    NNX_CHECK(false, path, ": a tensor name or metadata string is not valid UTF-8 (nothing written)");
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned, as the reference writer pads
  const uint64_t n = text.size();
  const std::string tmp = path + ".tmp-" + io::unique_suffix();
  {
    Fd f{::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644)};
    NNX_CHECK_IO(f.fd >= 0, "cannot create '", tmp, "': ", std::strerror(errno));
    auto write_all = [&](const void* p, uint64_t len) {
      for (uint64_t done = 0; done < len;) {
        const ssize_t w = ::write(f.fd, static_cast<const char*>(p) + done, std::min<uint64_t>(len - done, uint64_t(1) << 30));
        if (w <= 0) {
          const int err = errno;
          ::unlink(tmp.c_str());
          NNX_CHECK_IO(false, "cannot write '", tmp, "': ", std::strerror(err));
        }
        done += static_cast<uint64_t>(w);
      }
    };
    write_all(&n, 8);
    write_all(text.data(), n);
    for (const auto& t : data) write_all(t.data_ptr(), static_cast<uint64_t>(t.nbytes()));
    if (sync && ::fsync(f.fd) != 0) {
      const int err = errno;
      ::unlink(tmp.c_str());
      NNX_CHECK_IO(false, "cannot fsync '", tmp, "': ", std::strerror(err));
    }
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    NNX_CHECK_IO(false, "cannot rename '", tmp, "' to '", path, "': ", std::strerror(err));
  }
  if (sync) io::fsync_path(std::filesystem::path(path).parent_path().empty() ? "." : std::filesystem::path(path).parent_path());  // the new name too
}

}  // namespace nnx::checkpoint
